//! The HTTP API (v1): handlers, their OpenAPI description, and the route table.
//!
//! Handlers run on the actix-web workers and only parse, admit and wait: every message is
//! processed by the library's actors on their own arbiters. Bodies are read by hand (not with
//! `web::Json`) so every failure — wrong content type, body over the limit, malformed JSON,
//! invalid UTF-8, nesting too deep, a missing or mistyped field — is an [`ApiError`] with its
//! documented status and a problem+json body.

use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering::Relaxed};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use actix_web::body::MessageBody;
use actix_web::dev::{ServiceRequest, ServiceResponse};
use actix_web::http::header;
use actix_web::middleware::Next;
use actix_web::web::{self, BytesMut};
use actix_web::{HttpRequest, HttpResponse};
use futures_util::StreamExt;
use mailroom_actors::source::{
    client_id, cut_quoted, parse_json, token_accepted, truncated, JsonError, Submission, ECHO_MAX,
};
use mailroom_actors::{
    ClientId, Cluster, ClusterStats, DeadLetter, Dispatcher, ErrorClass, ErrorInfo, MessageId,
    Outcome, Pool, Rejected, RouteInfo, Source, Status, Timings,
};
use serde::{Deserialize, Serialize};
use serde_json::{json, Value};
use utoipa::{IntoParams, OpenApi, ToSchema};

use crate::metrics;
use crate::problem::{ApiError, Problem};

/// What the handlers share.
pub struct AppState {
    /// The library handle (on a cluster node: this node's own dispatcher, which runs what the
    /// node pulls).
    pub dispatcher: Dispatcher,
    /// With `[cluster]`: the node, through which every message is admitted and read.
    pub cluster: Option<Cluster>,
    /// `server.max_body_bytes`
    pub max_body: usize,
    /// `server.max_batch`
    pub max_batch: usize,
    /// `server.max_json_depth`
    pub max_depth: usize,
    /// `server.max_wait_ms`
    pub max_wait: Duration,
    /// `server.tokens`
    pub tokens: Vec<String>,
    /// `server.body_timeout_ms`
    pub body_timeout: Duration,
    /// `server.max_buffered_body_bytes` and its share per client: bytes of bodies being read
    /// now, over all workers.
    pub buffered: BodyBudget,
    /// `server.max_connections_per_client`: the connections each client holds (counted as
    /// actix-web hands them over, see [`crate::connections`]).
    pub connections: Arc<crate::connections::Shares>,
    /// `/openapi.json`, made once at start-up by [`openapi`].
    pub openapi: web::Bytes,
}

/// A bound on the bytes of request bodies held at once by all connections together, and on
/// each client's share of it: each chunk read takes its size from both, given back when the
/// body is dropped.
#[derive(Debug)]
pub struct BodyBudget {
    used: AtomicUsize,
    max: usize,
    per_client: usize,
    /// Bytes held per client, for those holding any.
    clients: Mutex<HashMap<ClientId, usize>>,
    /// Bodies refused, indexed by [`Short`]: over the server's bound, over a client's share.
    refused: [AtomicU64; 2],
}

/// Which bound a chunk did not fit in.
#[derive(Clone, Copy)]
enum Short {
    /// `server.max_buffered_body_bytes`: the server's.
    Server = 0,
    /// `server.max_buffered_body_bytes_per_client`: this client's share.
    Client = 1,
}

impl BodyBudget {
    /// A budget of `max` bytes, of which one client may hold `per_client`.
    pub fn new(max: usize, per_client: usize) -> BodyBudget {
        BodyBudget {
            used: Default::default(),
            max,
            per_client,
            clients: Default::default(),
            refused: Default::default(),
        }
    }

    /// Bodies refused so far: over `server.max_buffered_body_bytes`, and over a client's
    /// share of it.
    pub fn refused(&self) -> (u64, u64) {
        (self.refused[0].load(Relaxed), self.refused[1].load(Relaxed))
    }

    fn count(&self, short: Short) -> Short {
        self.refused[short as usize].fetch_add(1, Relaxed);
        short
    }

    /// Takes `n` more bytes for `held`, if the budget and the client's share have them.
    fn take(&self, n: usize, held: &mut Held<'_>) -> Result<(), Short> {
        if n == 0 {
            return Ok(());
        }
        let Some(client) = &held.client else {
            self.take_from_server(n)?;
            held.bytes += n;
            return Ok(());
        };
        let mut clients = self.clients();
        let mine = clients.get(client).copied().unwrap_or(0);
        if mine + n > self.per_client {
            return Err(Short::Client);
        }
        self.take_from_server(n)?;
        clients.insert(client.clone(), mine + n);
        held.bytes += n;
        Ok(())
    }

    fn take_from_server(&self, n: usize) -> Result<(), Short> {
        self.used
            .fetch_update(Relaxed, Relaxed, |u| (u + n <= self.max).then_some(u + n))
            .map(drop)
            .map_err(|_| Short::Server)
    }

    /// The bytes each client holds (a panic cannot leave the map half changed).
    fn clients(&self) -> std::sync::MutexGuard<'_, HashMap<ClientId, usize>> {
        self.clients.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// A holding of no bytes yet, for `client` (`None`: only the server's bound applies).
    fn hold(&self, client: Option<ClientId>) -> Held<'_> {
        Held {
            budget: self,
            bytes: 0,
            client,
        }
    }
}

/// Bytes taken from a [`BodyBudget`], given back on drop.
struct Held<'a> {
    budget: &'a BodyBudget,
    bytes: usize,
    client: Option<ClientId>,
}

impl Drop for Held<'_> {
    fn drop(&mut self) {
        if self.bytes == 0 {
            return;
        }
        self.budget.used.fetch_sub(self.bytes, Relaxed);
        if let Some(client) = &self.client {
            let mut clients = self.budget.clients();
            if let Some(held) = clients.get_mut(client) {
                *held -= self.bytes;
                if *held == 0 {
                    clients.remove(client);
                }
            }
        }
    }
}

impl AppState {
    /// How long a `?wait_ms=` asks to wait (capped by `server.max_wait_ms`); more than an
    /// hour is refused.
    fn wait_for(&self, wait_ms: Option<u32>) -> Result<Duration, ApiError> {
        match wait_ms {
            None => Ok(self.max_wait),
            Some(ms) if ms > 3_600_000 => Err(ApiError::BadRequest(format!(
                "wait_ms must be 0 to 3600000, got {ms}"
            ))),
            Some(ms) => Ok(Duration::from_millis(ms.into()).min(self.max_wait)),
        }
    }
}

/// `202` answer: the message was accepted.
#[derive(Debug, Serialize, ToSchema)]
pub struct Accepted {
    /// The message's id.
    #[schema(value_type = String)]
    pub id: MessageId,
    /// Its status at the moment of the answer: usually `queued` or `delayed`; `running` (or
    /// already terminal) when a worker took it at once, or after a `?wait=true` that ran out.
    pub status: Status,
}

/// `?wait=true&wait_ms=N` on submission.
#[derive(Debug, Deserialize, IntoParams)]
#[into_params(parameter_in = Query)]
#[serde(deny_unknown_fields)]
pub struct SubmitQuery {
    /// Wait for the outcome (answer `200` with it), up to `wait_ms`.
    #[serde(default)]
    pub wait: bool,
    /// How long to wait, capped by `server.max_wait_ms` (default: that cap); at most an hour.
    #[param(minimum = 0, maximum = 3600000)]
    pub wait_ms: Option<u32>,
}

/// `?wait_ms=N` on status reads: long-poll until the message finishes or the time is up.
#[derive(Debug, Deserialize, IntoParams)]
#[into_params(parameter_in = Query)]
#[serde(deny_unknown_fields)]
pub struct StatusQuery {
    /// How long to wait for the message to finish, capped by `server.max_wait_ms`; at most an
    /// hour.
    #[param(minimum = 0, maximum = 3600000)]
    pub wait_ms: Option<u32>,
}

/// `POST /v1/batch` body.
#[derive(Debug, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct BatchRequest {
    /// Submissions, each the body of `POST /v1/messages`. Any JSON is taken here: an item that
    /// is not a valid submission gets its own `rejected` result and does not sink the others.
    #[schema(value_type = Vec<serde_json::Value>)]
    pub messages: Vec<Value>,
    /// Wait for every outcome (asyncio's `gather`), up to `server.max_wait_ms`.
    #[serde(default)]
    pub wait: bool,
}

/// `POST /v1/batch` answer: one item per message, in order.
#[derive(Debug, Serialize, ToSchema)]
pub struct BatchResponse {
    /// An outcome, an `{id, status}`, or `{"status": "rejected", "code", "error"}`.
    #[schema(value_type = Vec<Object>)]
    pub results: Vec<Value>,
}

/// `GET /v1/routes` answer.
#[derive(Debug, Serialize, ToSchema)]
pub struct RoutesResponse {
    /// Every route (on a cluster node: this node's figures).
    pub routes: Vec<RouteInfo>,
    /// On a cluster node: the cluster's figures per route, from JetStream.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub cluster: Option<ClusterStats>,
}

/// `GET /v1/dead-letters` answer.
#[derive(Debug, Serialize, ToSchema)]
pub struct DeadLettersResponse {
    /// Messages that failed every attempt, oldest first: each a dead letter, its payload inline
    /// only when it is at most 64 KiB (else `"payload_truncated": true`), and `payload_bytes`.
    #[schema(value_type = Vec<Object>)]
    pub dead_letters: Vec<Value>,
    /// The id to pass as `after` for the next page; `null` on the last page.
    #[schema(value_type = Option<String>)]
    pub next: Option<MessageId>,
}

/// `POST /v1/dead-letters/{id}/retry` answer.
#[derive(Debug, Serialize, ToSchema)]
pub struct Replayed {
    /// The replay's new id.
    #[schema(value_type = String)]
    pub id: MessageId,
    /// The dead letter it replays.
    #[schema(value_type = String)]
    pub replay_of: MessageId,
    /// Its status now.
    pub status: Status,
}

/// Reads a JSON body: checks the content type and size, reads it within `server.body_timeout_ms`,
/// parses it strictly (no duplicate keys) and limits nesting. The buffer grows with what arrives,
/// never to the declared `Content-Length` up front, so a client that declares a large body and
/// sends a byte holds a byte; what it holds counts against `client`'s share.
async fn json_body(
    req: &HttpRequest,
    mut payload: web::Payload,
    state: &AppState,
    client: Option<ClientId>,
) -> Result<Value, ApiError> {
    if let Some(ct) = req.headers().get(header::CONTENT_TYPE) {
        let ct = ct.to_str().unwrap_or("");
        let mime = ct
            .split(';')
            .next()
            .unwrap_or("")
            .trim()
            .to_ascii_lowercase();
        if mime != "application/json" && !mime.ends_with("+json") {
            return Err(ApiError::UnsupportedMediaType(format!(
                "expected Content-Type: application/json, got {:?}",
                truncated(ct, ECHO_MAX)
            )));
        }
    }
    let too_large = || {
        ApiError::TooLarge(format!(
            "the body is larger than server.max_body_bytes ({} bytes)",
            state.max_body
        ))
    };
    let declared = req
        .headers()
        .get(header::CONTENT_LENGTH)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.parse::<usize>().ok());
    if declared.is_some_and(|n| n > state.max_body) {
        return Err(too_large());
    }
    let mut held = state.buffered.hold(client);
    let read = async {
        let mut body = BytesMut::new();
        while let Some(chunk) = payload.next().await {
            let chunk =
                chunk.map_err(|e| ApiError::BadRequest(format!("could not read the body: {e}")))?;
            if body.len() + chunk.len() > state.max_body {
                return Err(too_large());
            }
            match state
                .buffered
                .take(chunk.len(), &mut held)
                .map_err(|s| state.buffered.count(s))
            {
                Ok(()) => {}
                Err(Short::Server) => {
                    return Err(ApiError::Unavailable {
                        detail: format!(
                            "the server is reading server.max_buffered_body_bytes ({} bytes) of \
                             bodies already; try again shortly",
                            state.buffered.max
                        ),
                        retry_after: 1,
                    })
                }
                Err(Short::Client) => {
                    return Err(ApiError::TooManyRequests(format!(
                        "the server is reading this client's share of the bodies \
                         (server.max_buffered_body_bytes_per_client, {} bytes) already; send \
                         fewer bodies at once",
                        state.buffered.per_client
                    )))
                }
            }
            body.extend_from_slice(&chunk);
        }
        Ok(body)
    };
    let body = actix_rt::time::timeout(state.body_timeout, read)
        .await
        .map_err(|_| {
            ApiError::RequestTimeout(format!(
                "the body did not arrive within server.body_timeout_ms ({} ms)",
                state.body_timeout.as_millis()
            ))
        })??;
    if body.is_empty() {
        return Err(ApiError::BadRequest(
            "the body is empty; expected a JSON object".into(),
        ));
    }
    parse_json(&body, state.max_depth).map_err(|e| {
        ApiError::BadRequest(match e {
            JsonError::TooDeep(max) => {
                format!("JSON nested deeper than server.max_json_depth ({max})")
            }
            other => other.to_string(),
        })
    })
}

/// Whether `raw` is written as a message id is: 26 characters of Crockford's base 32 (any
/// case, without the letters I, L, O and U that decoders would read as others), the first 0-7.
/// The OpenAPI document's pattern for ids says the same.
fn is_id_text(raw: &str) -> bool {
    let b = raw.as_bytes();
    b.len() == 26
        && (b'0'..=b'7').contains(&b[0])
        && b.iter().all(|c| {
            c.is_ascii_digit()
                || (c.is_ascii_alphabetic()
                    && !matches!(c.to_ascii_uppercase(), b'I' | b'L' | b'O' | b'U'))
        })
}

fn parse_id(raw: &str) -> Result<MessageId, ApiError> {
    let bad = || {
        ApiError::NotFound(format!(
            "no message with id {:?} (not a message id)",
            truncated(raw, 64)
        ))
    };
    if !is_id_text(raw) {
        return Err(bad());
    }
    raw.parse().map_err(|_| bad())
}

fn accepted(id: MessageId, status: Status) -> HttpResponse {
    HttpResponse::Accepted()
        .insert_header((header::LOCATION, format!("/v1/messages/{id}")))
        .json(Accepted { id, status })
}

fn answer(outcome: &Outcome) -> HttpResponse {
    if outcome.status.is_terminal() {
        outcome_ok(outcome)
    } else {
        accepted(outcome.id, outcome.status)
    }
}

/// 200 with the outcome, written by [`Outcome::to_json`] (serde's bytes, in fewer steps).
fn outcome_ok(outcome: &Outcome) -> HttpResponse {
    match outcome.to_json() {
        Ok(body) => HttpResponse::Ok()
            .insert_header(header::ContentType::json())
            .body(body),
        Err(e) => HttpResponse::from_error(actix_web::error::JsonPayloadError::Serialize(e)),
    }
}

/// [`answer`] for a cluster: `body` (the outcome with its node) when the outcome is terminal.
fn answer_with(outcome: &Outcome, body: &impl Serialize) -> HttpResponse {
    if outcome.status.is_terminal() {
        HttpResponse::Ok().json(body)
    } else {
        accepted(outcome.id, outcome.status)
    }
}

fn submission(v: Value) -> Result<Submission, String> {
    if !v.is_object() {
        return Err("a message must be a JSON object with at least \"kind\"".into());
    }
    Submission::from_value(v).map_err(|e| format!("invalid message: {e}"))
}

/// Submit a message.
#[utoipa::path(post, path = "/v1/messages", request_body = Submission, params(SubmitQuery),
    responses(
        (status = 202, description = "Accepted (or the wait ran out first)", body = Accepted),
        (status = 200, description = "With ?wait=true: the outcome, whatever its terminal status", body = Outcome),
        (status = 400, description = "Malformed JSON or envelope", body = Problem, content_type = "application/problem+json"),
        (status = 413, description = "Body over server.max_body_bytes", body = Problem, content_type = "application/problem+json"),
        (status = 415, description = "Not JSON", body = Problem, content_type = "application/problem+json"),
        (status = 422, description = "Unknown kind or invalid payload", body = Problem, content_type = "application/problem+json"),
        (status = 408, description = "The body did not arrive within server.body_timeout_ms", body = Problem, content_type = "application/problem+json"),
        (status = 429, description = "The client holds its share of the route (routes.KIND.max_per_client) or of the bodies being read (server.max_buffered_body_bytes_per_client); Retry-After", body = Problem, content_type = "application/problem+json"),
        (status = 503, description = "Route full, degraded, server draining, the server busy reading server.max_buffered_body_bytes of bodies, or the message's record could not be written (Retry-After)", body = Problem, content_type = "application/problem+json"),
    ))]
pub async fn submit(
    req: HttpRequest,
    state: web::Data<AppState>,
    query: web::Query<SubmitQuery>,
    payload: web::Payload,
) -> Result<HttpResponse, ApiError> {
    let max_wait = state.wait_for(query.wait_ms)?;
    let client = client_of(&req, &state);
    let msg = json_body(&req, payload, &state, client.clone())
        .await
        .and_then(|v| submission(v).map_err(ApiError::BadRequest))
        .inspect_err(|e| {
            if e.is_malformed_input() {
                state.dispatcher.refused_malformed();
            }
        })?
        .into_message(Source::Http);
    let msg = with_client(msg, &client);
    if let Some(c) = &state.cluster {
        if query.wait {
            let o = c.send_timeout(msg, max_wait).await?;
            return Ok(answer_with(&o.outcome, &o));
        }
        let status = msg.delayed_status();
        return Ok(accepted(c.accept(msg).await?, status));
    }
    if query.wait {
        let outcome = state.dispatcher.send_timeout(msg, max_wait).await?;
        return Ok(answer(&outcome));
    }
    let id = state.dispatcher.accept(msg).await?;
    let status = state
        .dispatcher
        .status(id)
        .map_or(Status::Queued, |o| o.status);
    Ok(accepted(id, status))
}

/// Names the message's client (its token, or its address: [`client_of`]), for
/// `routes.KIND.max_per_client`.
fn with_client(
    msg: mailroom_actors::Message,
    client: &Option<ClientId>,
) -> mailroom_actors::Message {
    match client {
        Some(c) => msg.client(c.clone()),
        None => msg,
    }
}

/// A request's client: its token, or its address.
fn client_of(req: &HttpRequest, state: &AppState) -> Option<ClientId> {
    client_id(&state.tokens, bearer(req), req.peer_addr().map(|a| a.ip()))
}

/// The bearer token of a request, if it has one (the scheme's name in any case, as RFC 7235
/// allows).
fn bearer(req: &HttpRequest) -> Option<&str> {
    let value = req.headers().get(header::AUTHORIZATION)?.to_str().ok()?;
    let (scheme, token) = value.split_once(' ')?;
    scheme.eq_ignore_ascii_case("bearer").then(|| token.trim())
}

fn rejected_item(code: u16, class: &str, message: String) -> Value {
    let message = cut_quoted(&message, ECHO_MAX);
    json!({"status": "rejected", "code": code, "error": {"class": class, "message": message}})
}

fn rejection(r: &Rejected) -> Value {
    rejected_item(
        crate::problem::rejection_status(r),
        r.reason(),
        r.to_string(),
    )
}

/// Submit many messages; one item per message in the same order (asyncio `gather`).
#[utoipa::path(post, path = "/v1/batch", request_body = BatchRequest, params(SubmitQuery),
    responses(
        (status = 200, description = "One result per message", body = BatchResponse),
        (status = 400, body = Problem, content_type = "application/problem+json"), (status = 413, description = "Over server.max_batch", body = Problem, content_type = "application/problem+json"),
        (status = 408, description = "The body did not arrive within server.body_timeout_ms", body = Problem, content_type = "application/problem+json"),
        (status = 415, body = Problem, content_type = "application/problem+json"),
        (status = 429, description = "The client holds its share of the bodies being read (server.max_buffered_body_bytes_per_client); Retry-After", body = Problem, content_type = "application/problem+json"),
        (status = 503, description = "The server is reading server.max_buffered_body_bytes of bodies (Retry-After)", body = Problem, content_type = "application/problem+json"),
    ))]
pub async fn batch(
    req: HttpRequest,
    state: web::Data<AppState>,
    query: web::Query<SubmitQuery>,
    payload: web::Payload,
) -> Result<HttpResponse, ApiError> {
    let client = client_of(&req, &state);
    let body: BatchRequest = json_body(&req, payload, &state, client.clone())
        .await
        .and_then(|v| {
            serde_json::from_value(v)
                .map_err(|e| ApiError::BadRequest(format!("invalid batch: {e}")))
        })
        .inspect_err(|e| {
            if e.is_malformed_input() {
                state.dispatcher.refused_malformed();
            }
        })?;
    if body.messages.len() > state.max_batch {
        return Err(ApiError::TooLarge(format!(
            "{} messages is more than server.max_batch ({})",
            body.messages.len(),
            state.max_batch
        )));
    }
    let wait = body.wait || query.wait;
    let client = &client;
    let max = state.wait_for(query.wait_ms)?;
    let d = &state.dispatcher;
    let cluster = state.cluster.as_ref();
    let items = body.messages.into_iter().map(|v| async move {
        let msg = match submission(v) {
            Ok(s) => with_client(s.into_message(Source::Http), client),
            Err(e) => {
                d.refused_malformed();
                return rejected_item(400, "invalid", e);
            }
        };
        if let Some(c) = cluster {
            if wait {
                return match c.send_timeout(msg, max).await {
                    Ok(o) if o.outcome.status.is_terminal() => {
                        serde_json::to_value(&o).unwrap_or(Value::Null)
                    }
                    Ok(o) => json!({"id": o.outcome.id, "status": o.outcome.status}),
                    Err(r) => rejection(&r),
                };
            }
            let status = msg.delayed_status();
            return match c.accept(msg).await {
                Ok(id) => json!({"id": id, "status": status}),
                Err(r) => rejection(&r),
            };
        }
        if wait {
            match d.send_timeout(msg, max).await {
                Ok(o) if o.status.is_terminal() => serde_json::to_value(&*o).unwrap_or(Value::Null),
                Ok(o) => json!({"id": o.id, "status": o.status}),
                Err(r) => rejection(&r),
            }
        } else {
            match d.accept(msg).await {
                Ok(id) => {
                    json!({"id": id, "status": d.status(id).map_or(Status::Queued, |o| o.status)})
                }
                Err(r) => rejection(&r),
            }
        }
    });
    let results = futures_util::future::join_all(items).await;
    Ok(HttpResponse::Ok().json(BatchResponse { results }))
}

/// A message's status, result or error, and timings; `?wait_ms=` long-polls.
#[utoipa::path(get, path = "/v1/messages/{id}", params(("id" = String, Path, description = "Message id"), StatusQuery),
    responses((status = 200, body = Outcome), (status = 404, body = Problem, content_type = "application/problem+json")))]
pub async fn get_message(
    state: web::Data<AppState>,
    id: web::Path<String>,
    query: web::Query<StatusQuery>,
) -> Result<HttpResponse, ApiError> {
    let id = parse_id(&id)?;
    let not_found = || ApiError::NotFound(format!("no message with id {id}"));
    if let Some(c) = &state.cluster {
        let found = match query.wait_ms {
            Some(ms) => c.wait(id, state.wait_for(Some(ms))?).await?,
            None => c.status(id).await?,
        };
        return Ok(HttpResponse::Ok().json(found.ok_or_else(not_found)?));
    }
    let found = match query.wait_ms {
        Some(ms) => state.dispatcher.wait(id, state.wait_for(Some(ms))?).await,
        None => state.dispatcher.status(id),
    };
    let outcome = found.ok_or_else(not_found)?;
    Ok(outcome_ok(&outcome))
}

/// Cancel a queued or delayed message.
#[utoipa::path(delete, path = "/v1/messages/{id}", params(("id" = String, Path, description = "Message id")),
    responses((status = 200, description = "Cancelled", body = Outcome), (status = 404, body = Problem, content_type = "application/problem+json"),
              (status = 409, description = "Running or already finished", body = Problem, content_type = "application/problem+json")))]
pub async fn cancel_message(
    state: web::Data<AppState>,
    id: web::Path<String>,
) -> Result<HttpResponse, ApiError> {
    let id = parse_id(&id)?;
    if let Some(c) = &state.cluster {
        return Ok(HttpResponse::Ok().json(c.cancel(id).await??));
    }
    let outcome = state.dispatcher.cancel(id)?;
    Ok(outcome_ok(&outcome))
}

/// Routes, their processors and pools, queue depths and restart counts.
#[utoipa::path(get, path = "/v1/routes", responses((status = 200, body = RoutesResponse)))]
pub async fn list_routes(state: web::Data<AppState>) -> HttpResponse {
    HttpResponse::Ok().json(match &state.cluster {
        Some(c) => RoutesResponse {
            routes: c.routes(),
            cluster: Some(c.stats().await),
        },
        None => RoutesResponse {
            routes: state.dispatcher.routes(),
            cluster: None,
        },
    })
}

/// `?limit=&after=` on the dead-letter list.
#[derive(Debug, Deserialize, IntoParams)]
#[into_params(parameter_in = Query)]
#[serde(deny_unknown_fields)]
pub struct DeadLettersQuery {
    /// Most dead letters in one page, 1 to 1000 (default 100).
    #[param(minimum = 1, maximum = 1000)]
    pub limit: Option<usize>,
    /// Start after this id (the `next` of the previous page).
    #[param(pattern = "^[0-7][0-9A-HJKMNP-TV-Za-hjkmnp-tv-z]{25}$")]
    pub after: Option<String>,
}

/// Payloads larger than this (about, in bytes) are left out of the dead-letter list; read them
/// whole at `GET /v1/dead-letters/{id}`.
pub const MAX_INLINE_PAYLOAD_BYTES: usize = 64 * 1024;

/// Payloads and errors in one page of the dead-letter list stop at about this many bytes: the
/// page ends early (with `next`) rather than grow to a thousand 64 KiB payloads.
pub const MAX_PAGE_BYTES: usize = 1024 * 1024;

/// A dead letter as listed (`bytes`: its [`DeadLetter::payload_bytes`]): its payload inline when
/// it is small, else left out
/// (`payload_truncated`), with its size.
fn dead_letter_item(dl: &DeadLetter, bytes: usize) -> Value {
    let mut v = json!({
        "id": dl.id, "kind": dl.kind, "attempts": dl.attempts, "errors": dl.errors,
        "died_at_ms": dl.died_at_ms, "source": dl.source, "payload_bytes": bytes,
    });
    if let Some(r) = dl.replay_of {
        v["replay_of"] = json!(r);
    }
    if bytes <= MAX_INLINE_PAYLOAD_BYTES {
        v["payload"] = dl.payload.clone();
    } else {
        v["payload_truncated"] = json!(true);
    }
    v
}

/// Messages that failed every attempt, oldest first, a page at a time. A payload over 64 KiB is
/// left out of the list (`payload_truncated`); `GET /v1/dead-letters/{id}` has it whole. A page
/// ends early (with `next`) once its payloads and errors reach about 1 MiB.
#[utoipa::path(get, path = "/v1/dead-letters", params(DeadLettersQuery),
    responses((status = 200, body = DeadLettersResponse), (status = 400, body = Problem, content_type = "application/problem+json")))]
pub async fn list_dead_letters(
    state: web::Data<AppState>,
    query: web::Query<DeadLettersQuery>,
) -> Result<HttpResponse, ApiError> {
    let limit = query.limit.unwrap_or(100);
    if !(1..=1000).contains(&limit) {
        return Err(ApiError::BadRequest(format!(
            "limit must be 1 to 1000, got {limit}"
        )));
    }
    let after = match &query.after {
        Some(a) => Some(parse_id(a).map_err(|_| {
            ApiError::BadRequest(format!("after: not a message id: {:?}", truncated(a, 64)))
        })?),
        None => None,
    };
    let (page, more): (Vec<Arc<DeadLetter>>, bool) = match &state.cluster {
        Some(c) => {
            let listed = c.dead_letters(after, limit).await?;
            (
                listed.letters.into_iter().map(Arc::new).collect(),
                listed.more,
            )
        }
        None => {
            let page = state.dispatcher.dead_letters(after, limit);
            let more = page.len() == limit;
            (page, more)
        }
    };
    // At least one letter, then as many as fit in MAX_PAGE_BYTES.
    let (mut items, mut bytes) = (Vec::new(), 0);
    for d in &page {
        let payload = d.payload_bytes();
        let inline = if payload <= MAX_INLINE_PAYLOAD_BYTES {
            payload
        } else {
            0
        };
        let size = inline + d.errors.iter().map(|e| e.message.len() + 32).sum::<usize>() + 128;
        if !items.is_empty() && bytes + size > MAX_PAGE_BYTES {
            break;
        }
        bytes += size;
        items.push(dead_letter_item(d, payload));
    }
    let fit = items.len();
    let next = (fit > 0 && (fit < page.len() || more)).then(|| page[fit - 1].id);
    Ok(HttpResponse::Ok().json(DeadLettersResponse {
        dead_letters: items,
        next,
    }))
}

/// One dead letter, with its whole payload.
#[utoipa::path(get, path = "/v1/dead-letters/{id}", params(("id" = String, Path, description = "Dead letter id")),
    responses((status = 200, body = DeadLetter), (status = 404, body = Problem, content_type = "application/problem+json")))]
pub async fn get_dead_letter(
    state: web::Data<AppState>,
    id: web::Path<String>,
) -> Result<HttpResponse, ApiError> {
    let id = parse_id(&id)?;
    let dl = match &state.cluster {
        Some(c) => c.dead_letter(id).await?.map(Arc::new),
        None => state.dispatcher.dead_letter(id),
    }
    .ok_or_else(|| ApiError::NotFound(format!("no dead letter with id {id}")))?;
    Ok(HttpResponse::Ok().json(&*dl))
}

/// Replay a dead letter as a new message.
#[utoipa::path(post, path = "/v1/dead-letters/{id}/retry", params(("id" = String, Path, description = "Dead letter id")),
    responses((status = 202, body = Replayed), (status = 404, body = Problem, content_type = "application/problem+json"),
        (status = 409, description = "Being replayed already", body = Problem, content_type = "application/problem+json"),
        (status = 503, body = Problem, content_type = "application/problem+json")))]
pub async fn retry_dead_letter(
    state: web::Data<AppState>,
    id: web::Path<String>,
) -> Result<HttpResponse, ApiError> {
    let replay_of = parse_id(&id)?;
    let (id, status) = match &state.cluster {
        Some(c) => (c.replay(replay_of).await??, Status::Queued),
        None => {
            let id = state.dispatcher.replay(replay_of).await?;
            let status = state
                .dispatcher
                .status(id)
                .map_or(Status::Queued, |o| o.status);
            (id, status)
        }
    };
    Ok(HttpResponse::Accepted()
        .insert_header((header::LOCATION, format!("/v1/messages/{id}")))
        .json(Replayed {
            id,
            replay_of,
            status,
        }))
}

/// Prometheus metrics.
#[utoipa::path(get, path = "/metrics", responses((status = 200, description = "Prometheus text format 0.0.4", body = String)))]
pub async fn metrics_text(state: web::Data<AppState>) -> HttpResponse {
    let mut text = metrics::render(&state.dispatcher.stats());
    let (budget, body_share) = state.buffered.refused();
    text.push_str(&metrics::render_http_refusals(
        state.connections.refused(),
        body_share,
        budget,
    ));
    if let Some(c) = &state.cluster {
        text.push_str(&metrics::render_cluster(&c.stats().await));
    }
    HttpResponse::Ok()
        .content_type("text/plain; version=0.0.4; charset=utf-8")
        .body(text)
}

/// Liveness.
#[utoipa::path(get, path = "/healthz", responses((status = 200, description = "The process is up")))]
pub async fn healthz() -> HttpResponse {
    HttpResponse::Ok().json(json!({"status": "ok"}))
}

/// Readiness: false while draining, when the storage can write nothing any more (a journal whose
/// writer stopped), and on a cluster node while NATS cannot be reached.
#[utoipa::path(get, path = "/readyz", responses((status = 200, description = "Accepting messages"),
    (status = 503, description = "Draining, storage closed, or NATS unreachable", body = Problem, content_type = "application/problem+json")))]
pub async fn readyz(state: web::Data<AppState>) -> Result<HttpResponse, ApiError> {
    if state.dispatcher.is_draining() || state.cluster.as_ref().is_some_and(|c| c.is_draining()) {
        return Err(ApiError::Unavailable {
            detail: "the server is draining and accepts no new messages".into(),
            retry_after: 5,
        });
    }
    if state.dispatcher.is_storage_closed() {
        return Err(ApiError::Unavailable {
            detail: "the storage can write nothing any more (see the log); restart the server"
                .into(),
            retry_after: 60,
        });
    }
    if state.cluster.as_ref().is_some_and(|c| !c.is_connected()) {
        return Err(ApiError::Unavailable {
            detail: "this cluster node cannot reach NATS (it reconnects by itself)".into(),
            retry_after: 1,
        });
    }
    Ok(HttpResponse::Ok().json(json!({"ready": true})))
}

/// This document.
#[utoipa::path(get, path = "/openapi.json", responses((status = 200, description = "OpenAPI 3 description")))]
pub async fn openapi_json(state: web::Data<AppState>) -> HttpResponse {
    HttpResponse::Ok()
        .content_type("application/json")
        .body(state.openapi.clone())
}

/// The OpenAPI document of this server: [`ApiDoc`], with the submission described exactly for
/// the routes it serves — `kind` one of them, and for each its processor's payload schema, with
/// the configured limits on `delay_ms` and `timeout_ms`.
pub fn openapi(dispatcher: &Dispatcher, max_delay_ms: u64, max_timeout_ms: u64) -> Value {
    let mut doc = serde_json::to_value(ApiDoc::openapi()).unwrap_or_default();
    let variants: Vec<Value> = dispatcher
        .routes()
        .iter()
        .map(|r| {
            let mut required = vec!["kind"];
            if r.payload_schema != json!({}) {
                required.push("payload");
            }
            json!({
                "type": "object",
                "title": r.kind,
                "properties": {
                    "kind": {"type": "string", "const": r.kind},
                    "payload": r.payload_schema,
                    "delay_ms": {"type": ["integer", "null"], "minimum": 0, "maximum": max_delay_ms},
                    "timeout_ms": {"type": ["integer", "null"], "minimum": 1, "maximum": max_timeout_ms},
                    "key": {"type": ["string", "null"], "minLength": 1, "maxLength": 256},
                },
                "required": required,
                "additionalProperties": false,
            })
        })
        .collect();
    // The answers every operation may give besides its own: 401 (when server.tokens is set),
    // 400 for a malformed query string, and for a body: 400, 408 (too slow), 413, 415 and 503
    // (the server's body budget is in use).
    if let Some(paths) = doc["paths"].as_object_mut() {
        for (path, item) in paths.iter_mut() {
            let Some(ops) = item.as_object_mut() else {
                continue;
            };
            for op in ops.values_mut() {
                let has_query = op["parameters"]
                    .as_array()
                    .is_some_and(|ps| ps.iter().any(|p| p["in"] == "query"));
                let has_body = op.get("requestBody").is_some();
                let mut extra: Vec<(&str, &str)> = Vec::new();
                if !matches!(path.as_str(), "/healthz" | "/readyz") {
                    extra.push(("401", "A bearer token is required (server.tokens)"));
                }
                if has_query || has_body {
                    extra.push(("400", "Malformed query string or body"));
                }
                if has_body {
                    extra.push((
                        "408",
                        "The body did not arrive within server.body_timeout_ms",
                    ));
                    extra.push(("413", "Body over server.max_body_bytes"));
                    extra.push(("415", "Not JSON"));
                    extra.push(("503", "Busy, full, degraded or draining (Retry-After)"));
                }
                if path == "/v1/messages" && has_body {
                    extra.push((
                        "429",
                        "The client holds its share of the route (Retry-After)",
                    ));
                }
                let responses = &mut op["responses"];
                for (code, description) in extra {
                    if responses.get(code).is_none() {
                        responses[code] = json!({
                            "description": description,
                            "content": {"application/problem+json": {
                                "schema": {"$ref": "#/components/schemas/Problem"}}},
                        });
                    }
                }
            }
        }
    }
    doc["components"]["schemas"]["Submission"] = json!({
        "description": "A message: one of the routed kinds, with a payload its processor accepts.",
        "oneOf": variants,
    });
    doc
}

/// The OpenAPI description, generated from the handlers above.
#[derive(OpenApi)]
#[openapi(
    info(
        title = "Mailroom",
        description = "Message dispatch: submit messages by kind, read their outcomes."
    ),
    paths(
        submit,
        batch,
        get_message,
        cancel_message,
        list_routes,
        crate::ui::overview,
        list_dead_letters,
        get_dead_letter,
        retry_dead_letter,
        metrics_text,
        healthz,
        readyz,
        openapi_json
    ),
    components(schemas(
        Submission,
        Outcome,
        Accepted,
        Problem,
        BatchRequest,
        BatchResponse,
        RoutesResponse,
        RouteInfo,
        DeadLettersResponse,
        DeadLetter,
        Replayed,
        Status,
        ErrorInfo,
        ErrorClass,
        Timings,
        Source,
        Pool,
        crate::ui::Overview,
        crate::ui::Totals,
        crate::ui::RouteLive,
        crate::ui::RouteHistory,
        crate::ui::StorageHealth
    ))
)]
pub struct ApiDoc;

/// Refuses every request on a connection refused for being over its client's share (one that
/// came before the refusal shut it down: [`crate::connections`]); then checks the bearer token
/// (when tokens are set) on every path except `/healthz`, `/readyz` and the dashboard's own
/// files (the page asks for the token, then sends it with each call).
pub async fn auth(
    req: ServiceRequest,
    next: Next<impl MessageBody + 'static>,
) -> Result<ServiceResponse<impl MessageBody>, actix_web::Error> {
    if let Some(refused) = req.conn_data::<crate::connections::Refused>() {
        return Err(refused.error().into());
    }
    if let Some(state) = req.app_data::<web::Data<AppState>>() {
        let open = matches!(req.path(), "/healthz" | "/readyz") || crate::ui::is_public(req.path());
        if !state.tokens.is_empty() && !open {
            let given = bearer(req.request());
            let ok = given.is_some_and(|g| token_accepted(&state.tokens, g));
            if !ok {
                return Err(ApiError::Unauthorized.into());
            }
        }
    }
    next.call(req).await
}

async fn not_found(req: HttpRequest) -> Result<HttpResponse, ApiError> {
    Err(ApiError::NotFound(format!(
        "no such endpoint: {} {}",
        truncated(req.method().as_str(), ECHO_MAX),
        truncated(req.path(), ECHO_MAX)
    )))
}

/// A resource whose other methods answer 405 (problem+json) with `Allow: allow`.
pub(crate) fn resource(path: &str, allow: &'static str) -> actix_web::Resource {
    web::resource(path.to_owned()).default_service(web::to(move || async move {
        Err::<HttpResponse, _>(ApiError::MethodNotAllowed(allow))
    }))
}

/// Registers every endpoint (and problem+json answers for unknown paths, wrong methods and
/// malformed query strings or paths).
pub fn configure(cfg: &mut web::ServiceConfig) {
    let bad_query = web::QueryConfig::default()
        .error_handler(|e, _| ApiError::BadRequest(format!("invalid query string: {e}")).into());
    let bad_path = web::PathConfig::default()
        .error_handler(|e, _| ApiError::NotFound(format!("invalid path: {e}")).into());
    let r = resource;
    cfg.app_data(bad_query)
        .app_data(bad_path)
        .service(r("/v1/messages", "POST").route(web::post().to(submit)))
        .service(r("/v1/batch", "POST").route(web::post().to(batch)))
        .service(
            r("/v1/messages/{id}", "GET, DELETE")
                .route(web::get().to(get_message))
                .route(web::delete().to(cancel_message)),
        )
        .service(r("/v1/routes", "GET").route(web::get().to(list_routes)))
        .service(r("/v1/dead-letters", "GET").route(web::get().to(list_dead_letters)))
        .service(r("/v1/dead-letters/{id}", "GET").route(web::get().to(get_dead_letter)))
        .service(r("/v1/dead-letters/{id}/retry", "POST").route(web::post().to(retry_dead_letter)))
        .service(r("/metrics", "GET").route(web::get().to(metrics_text)))
        .service(r("/healthz", "GET").route(web::get().to(healthz)))
        .service(r("/readyz", "GET").route(web::get().to(readyz)))
        .service(r("/openapi.json", "GET").route(web::get().to(openapi_json)))
        .default_service(web::to(not_found));
}
