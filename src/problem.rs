//! The HTTP edge's only error → status table: every error the API answers is an [`ApiError`],
//! rendered as `application/problem+json` (RFC 9457: `type`, `title`, `status`, `detail`), with
//! `Retry-After` on every 503. Nothing here panics; a handler never answers an HTML page.

use actix_web::http::header::{self, HeaderValue};
use actix_web::http::StatusCode;
use actix_web::{HttpResponse, ResponseError};
use mailroom_actors::source::{cut_quoted, ECHO_MAX};
use mailroom_actors::{CancelError, ClusterError, Rejected, ReplayError, StorageError};
use serde::Serialize;

/// A problem+json body.
#[derive(Debug, Serialize, utoipa::ToSchema)]
pub struct Problem {
    /// A URI naming the kind of problem.
    #[serde(rename = "type")]
    pub kind: String,
    /// A short summary of the kind of problem.
    pub title: String,
    /// The HTTP status code.
    pub status: u16,
    /// What happened in this case.
    pub detail: String,
}

/// Every error the API answers with.
#[derive(Debug, thiserror::Error)]
pub enum ApiError {
    /// 400: malformed JSON, invalid UTF-8, a missing or mistyped field, nesting too deep.
    #[error("{0}")]
    BadRequest(String),
    /// 401: a missing or wrong bearer token.
    #[error("a valid bearer token is required (Authorization: Bearer <token>)")]
    Unauthorized,
    /// 404: an unknown id or path.
    #[error("{0}")]
    NotFound(String),
    /// 405: the path exists, the method does not; the methods it has (the `Allow` header).
    #[error("method not allowed on this path (allowed: {0})")]
    MethodNotAllowed(&'static str),
    /// 408: the request body did not arrive in time.
    #[error("{0}")]
    RequestTimeout(String),
    /// 409: a cancel that came too late.
    #[error("{0}")]
    Conflict(String),
    /// 413: a body or a batch over its limit.
    #[error("{0}")]
    TooLarge(String),
    /// 415: the body is not JSON.
    #[error("{0}")]
    UnsupportedMediaType(String),
    /// 422: an unknown kind, or a payload its processor rejects.
    #[error("{0}")]
    Unprocessable(String),
    /// 429: the client holds its share of the route (`routes.KIND.max_per_client`).
    #[error("{0}")]
    TooManyRequests(String),
    /// 429, and the connection is closed: the client holds its share of the connections
    /// (`server.max_connections_per_client`; written by [`crate::connections::refuse`]).
    #[error("{0}")]
    TooManyConnections(String),
    /// 503: a full or degraded route, or the server is draining.
    #[error("{detail}")]
    Unavailable {
        /// What is unavailable.
        detail: String,
        /// Seconds after which a retry may succeed.
        retry_after: u64,
    },
    /// 503 (type `urn:mailroom:problem:storage`): the message's record could not be written
    /// (a full disk, an I/O error); nothing of it was kept.
    #[error("{0}")]
    Storage(String),
}

impl ApiError {
    /// Whether the client sent something that is not a submission (400, 413, 415): counted as
    /// `mailroom_messages_rejected_total{kind="",reason="invalid"}`.
    pub fn is_malformed_input(&self) -> bool {
        matches!(
            self,
            ApiError::BadRequest(_) | ApiError::TooLarge(_) | ApiError::UnsupportedMediaType(_)
        )
    }

    fn slug(&self) -> (&'static str, &'static str) {
        match self {
            ApiError::BadRequest(_) => ("bad-request", "Bad request"),
            ApiError::Unauthorized => ("unauthorized", "Unauthorized"),
            ApiError::NotFound(_) => ("not-found", "Not found"),
            ApiError::MethodNotAllowed(_) => ("method-not-allowed", "Method not allowed"),
            ApiError::RequestTimeout(_) => ("request-timeout", "Request timeout"),
            ApiError::Conflict(_) => ("conflict", "Conflict"),
            ApiError::TooLarge(_) => ("too-large", "Payload too large"),
            ApiError::UnsupportedMediaType(_) => {
                ("unsupported-media-type", "Unsupported media type")
            }
            ApiError::Unprocessable(_) => ("unprocessable", "Unprocessable message"),
            ApiError::TooManyRequests(_) => ("too-many-requests", "Too many requests"),
            ApiError::TooManyConnections(_) => ("too-many-connections", "Too many connections"),
            ApiError::Unavailable { .. } => ("unavailable", "Service unavailable"),
            ApiError::Storage(_) => ("storage", "Storage unavailable"),
        }
    }

    /// The problem body for this error.
    pub fn problem(&self) -> Problem {
        let (slug, title) = self.slug();
        Problem {
            kind: format!("urn:mailroom:problem:{slug}"),
            title: title.to_owned(),
            status: self.status_code().as_u16(),
            // What it echoes of the client's input (serde quotes it) is cut, as documented.
            detail: cut_quoted(&self.to_string(), ECHO_MAX).into_owned(),
        }
    }
}

impl ResponseError for ApiError {
    fn status_code(&self) -> StatusCode {
        match self {
            ApiError::BadRequest(_) => StatusCode::BAD_REQUEST,
            ApiError::Unauthorized => StatusCode::UNAUTHORIZED,
            ApiError::NotFound(_) => StatusCode::NOT_FOUND,
            ApiError::MethodNotAllowed(_) => StatusCode::METHOD_NOT_ALLOWED,
            ApiError::RequestTimeout(_) => StatusCode::REQUEST_TIMEOUT,
            ApiError::Conflict(_) => StatusCode::CONFLICT,
            ApiError::TooLarge(_) => StatusCode::PAYLOAD_TOO_LARGE,
            ApiError::UnsupportedMediaType(_) => StatusCode::UNSUPPORTED_MEDIA_TYPE,
            ApiError::Unprocessable(_) => StatusCode::UNPROCESSABLE_ENTITY,
            ApiError::TooManyRequests(_) | ApiError::TooManyConnections(_) => {
                StatusCode::TOO_MANY_REQUESTS
            }
            ApiError::Unavailable { .. } | ApiError::Storage(_) => StatusCode::SERVICE_UNAVAILABLE,
        }
    }

    fn error_response(&self) -> HttpResponse {
        let mut res = HttpResponse::build(self.status_code());
        res.content_type("application/problem+json");
        match self {
            ApiError::Unavailable { retry_after, .. } => {
                res.insert_header((header::RETRY_AFTER, retry_after.to_string()));
            }
            ApiError::TooManyRequests(_) | ApiError::Storage(_) => {
                res.insert_header((header::RETRY_AFTER, "1"));
            }
            ApiError::TooManyConnections(_) => {
                res.insert_header((header::RETRY_AFTER, "1"));
                res.force_close();
            }
            ApiError::MethodNotAllowed(allow) => {
                res.insert_header((header::ALLOW, *allow));
            }
            ApiError::Unauthorized => {
                res.insert_header((
                    header::WWW_AUTHENTICATE,
                    HeaderValue::from_static("Bearer realm=\"mailroom\""),
                ));
            }
            _ => {}
        }
        res.json(self.problem())
    }
}

/// The HTTP status of a rejection (a batch item carries it as `code`): 422 for a message that
/// can never be accepted as it is, 429 for a client over its share, 503 for one that may be
/// accepted later. [`ApiError::from`] answers the same.
pub fn rejection_status(r: &Rejected) -> u16 {
    match r {
        Rejected::NoRoute(_) | Rejected::Invalid { .. } => 422,
        Rejected::ClientShareFull { .. } => 429,
        Rejected::QueueFull { .. }
        | Rejected::Degraded { .. }
        | Rejected::ShuttingDown(_)
        | Rejected::Storage { .. } => 503,
    }
}

impl From<Rejected> for ApiError {
    fn from(r: Rejected) -> ApiError {
        let detail = r.to_string();
        match r {
            Rejected::NoRoute(_) | Rejected::Invalid { .. } => ApiError::Unprocessable(detail),
            Rejected::ClientShareFull { .. } => ApiError::TooManyRequests(detail),
            Rejected::QueueFull { .. } => ApiError::Unavailable {
                detail,
                retry_after: 1,
            },
            Rejected::Degraded { retry_after_ms, .. } => ApiError::Unavailable {
                detail,
                retry_after: retry_after_ms.div_ceil(1000).max(1),
            },
            Rejected::ShuttingDown(_) => ApiError::Unavailable {
                detail: "the server is shutting down and accepts no new messages".into(),
                retry_after: 5,
            },
            // A cluster node that cannot reach NATS: the client should come back shortly.
            Rejected::Storage {
                error: StorageError::Unavailable(_),
                ..
            } => ApiError::Unavailable {
                detail,
                retry_after: 1,
            },
            Rejected::Storage { .. } => ApiError::Storage(detail),
        }
    }
}

impl From<ClusterError> for ApiError {
    fn from(e: ClusterError) -> ApiError {
        ApiError::Unavailable {
            detail: e.to_string(),
            retry_after: 1,
        }
    }
}

impl From<CancelError> for ApiError {
    fn from(e: CancelError) -> ApiError {
        match e {
            CancelError::Unknown(_) => ApiError::NotFound(e.to_string()),
            CancelError::TooLate { .. } => ApiError::Conflict(e.to_string()),
        }
    }
}

impl From<ReplayError> for ApiError {
    fn from(e: ReplayError) -> ApiError {
        match e {
            ReplayError::Unknown(_) => ApiError::NotFound(e.to_string()),
            ReplayError::Rejected(r) => r.into(),
            // `InProgress`, and any later kind: the letter is there but cannot be replayed now.
            _ => ApiError::Conflict(e.to_string()),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use mailroom_actors::Message;
    use serde_json::json;

    #[test]
    fn a_rejection_answers_the_same_status_alone_and_in_a_batch() {
        let m = || Box::new(Message::new("k", json!(null)));
        for r in [
            Rejected::NoRoute(m()),
            Rejected::QueueFull {
                message: m(),
                capacity: 1,
            },
            Rejected::Degraded {
                message: m(),
                retry_after_ms: 1500,
            },
            Rejected::ShuttingDown(m()),
            Rejected::ClientShareFull {
                message: m(),
                limit: 3,
            },
            Rejected::Invalid {
                message: m(),
                reason: "x".into(),
            },
            Rejected::Storage {
                message: m(),
                error: mailroom_actors::StorageError::Closed,
            },
        ] {
            let code = rejection_status(&r);
            let e = ApiError::from(r);
            assert_eq!(e.status_code().as_u16(), code, "{e:?}");
            if code == 503 {
                assert!(
                    matches!(e, ApiError::Unavailable { retry_after, .. } if retry_after >= 1)
                        || matches!(e, ApiError::Storage(_))
                );
            }
        }
    }
}
