//! The library's error types. They go one way: a rejected submission hands the [`Message`] back
//! to the caller (nothing is lost silently), and each variant says exactly why it was refused so
//! the HTTP edge can map it to one status code.

use crate::envelope::{Message, MessageId, Status};

/// Why a message was not accepted. Every variant hands the message back (boxed, so a
/// `Result<_, Rejected>` stays small on the hot path; [`Rejected::into_message`] unboxes it).
#[derive(Debug, thiserror::Error)]
pub enum Rejected {
    /// No route is registered for the message's kind.
    #[error("no route for kind {:?}", crate::source::truncated(.0.kind(), 64))]
    NoRoute(Box<Message>),
    /// The route already holds its capacity of queued + delayed + running messages.
    #[error("route {:?} is full (capacity {capacity})", .message.kind())]
    QueueFull {
        /// The message, handed back.
        message: Box<Message>,
        /// The route's bound.
        capacity: usize,
    },
    /// The route's processor restarted more often than its restart budget allows.
    #[error("route {:?} is degraded: its processor keeps crashing; retry after {retry_after_ms} ms", .message.kind())]
    Degraded {
        /// The message, handed back.
        message: Box<Message>,
        /// When the route may accept again.
        retry_after_ms: u64,
    },
    /// The message's client already has the route's `max_per_client` unfinished messages in it.
    #[error("client share of route {:?} is full ({limit} unfinished messages per client)", .message.kind())]
    ClientShareFull {
        /// The message, handed back.
        message: Box<Message>,
        /// The route's per-client limit.
        limit: u64,
    },
    /// The dispatcher is shutting down and accepts nothing new.
    #[error("the dispatcher is shutting down")]
    ShuttingDown(Box<Message>),
    /// The payload or the timing fields are not valid for the route.
    #[error("invalid message: {reason}")]
    Invalid {
        /// The message, handed back.
        message: Box<Message>,
        /// What is wrong, in words.
        reason: String,
    },
    /// The message's record could not be written to storage (a full disk, an I/O error);
    /// nothing of it was kept. It may be accepted once writes succeed again.
    #[error("the message could not be stored: {error}")]
    Storage {
        /// The message, handed back.
        message: Box<Message>,
        /// What the storage reported.
        error: crate::storage::StorageError,
    },
}

impl Rejected {
    /// Takes the message back.
    pub fn into_message(self) -> Message {
        match self {
            Rejected::NoRoute(m) | Rejected::ShuttingDown(m) => *m,
            Rejected::QueueFull { message, .. }
            | Rejected::ClientShareFull { message, .. }
            | Rejected::Degraded { message, .. }
            | Rejected::Storage { message, .. }
            | Rejected::Invalid { message, .. } => *message,
        }
    }

    /// The message that was refused.
    pub fn message(&self) -> &Message {
        match self {
            Rejected::NoRoute(m) | Rejected::ShuttingDown(m) => m,
            Rejected::QueueFull { message, .. }
            | Rejected::ClientShareFull { message, .. }
            | Rejected::Degraded { message, .. }
            | Rejected::Storage { message, .. }
            | Rejected::Invalid { message, .. } => message,
        }
    }

    /// A short label for metrics: `no_route`, `full`, `client_share`, `degraded`, `draining`,
    /// `storage`, `invalid`.
    pub fn reason(&self) -> &'static str {
        match self {
            Rejected::NoRoute(_) => "no_route",
            Rejected::QueueFull { .. } => "full",
            Rejected::ClientShareFull { .. } => "client_share",
            Rejected::Degraded { .. } => "degraded",
            Rejected::ShuttingDown(_) => "draining",
            Rejected::Storage { .. } => "storage",
            Rejected::Invalid { .. } => "invalid",
        }
    }
}

/// Why a cancel did not happen.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum CancelError {
    /// No message with that id is known (never accepted, or evicted).
    #[error("no message with id {0}")]
    Unknown(MessageId),
    /// The message is running or already finished; only queued and delayed ones can be cancelled.
    #[error("message {id} is {status} and can no longer be cancelled")]
    TooLate {
        /// The message.
        id: MessageId,
        /// Its status at the time of the request.
        status: Status,
    },
}

/// Why a dead letter could not be replayed.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum ReplayError {
    /// No dead letter has that id.
    #[error("no dead letter with id {0}")]
    Unknown(MessageId),
    /// The dead letter is being replayed already (its replay not yet durable); it leaves the
    /// dead letters once it is, or stays if that replay is refused.
    #[error("dead letter {0} is being replayed already")]
    InProgress(MessageId),
    /// The replay was refused at admission; the dead letter stays where it was.
    #[error("the replay was refused: {0}")]
    Rejected(#[from] Rejected),
}

/// Why a dispatcher could not be built.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum BuildError {
    /// A route's kind is not `[a-z0-9_.-]{1,64}`.
    #[error(transparent)]
    BadKind(#[from] crate::envelope::BadKind),
    /// A route names a processor nobody registered.
    #[error(
        "route {kind:?} names processor {processor:?}, which is not registered (known: {known})"
    )]
    UnknownProcessor {
        /// The route.
        kind: String,
        /// The processor it names.
        processor: String,
        /// The processors that are registered, comma-separated.
        known: String,
    },
    /// A setting is out of range.
    #[error("invalid setting {name}: {reason}")]
    Setting {
        /// Which setting.
        name: String,
        /// What was expected.
        reason: String,
    },
    /// Two routes have the same kind.
    #[error("route {0:?} is defined twice")]
    DuplicateRoute(String),
    /// `build` was called outside a running actix `System`.
    #[error("a Dispatcher must be built inside a running actix System (e.g. in #[actix::main])")]
    NoSystem,
    /// The storage could not be read back (an I/O error, or a corrupt record: file and offset).
    #[error("{0}")]
    Storage(String),
}
