#![doc = include_str!("../README.md")]
//!
//! # Layout
//!
//! The modules follow the diagram in DESIGN.md, source to outcome:
//!
//! - [`envelope`] — ids, kinds, [`Message`], [`Envelope`], [`Status`], [`Outcome`]: the shared types.
//! - [`dispatcher`] — [`Dispatcher`], the public handle, and its builder. Admission control lives
//!   here: a message is routed, validated and counted against its route's bound before it is
//!   accepted.
//! - [`router`] — the router actor: forwards envelopes to route workers, holds delayed ones.
//! - [`processor`] — the processor traits and registrations; `worker` (the supervised actor that
//!   runs one route), `cpu` (the `SyncArbiter` pool), [`processor::builtin`] and
//!   [`processor::fetch`].
//! - [`supervision`] — panic text and the restart budget.
//! - [`store`] — the [`Store`] trait (message state, transitions, waiters) and [`MemoryStore`].
//! - [`dead_letters`] — messages that failed every attempt.
//! - [`metrics`] — the ledger snapshot.
//! - [`source`] — event sources as actors (the timer; the TCP source).
//! - [`settings`] — plain settings structs; the library reads no files.

mod alarm;
pub mod dead_letters;
pub mod dispatcher;
pub mod envelope;
pub mod error;
pub mod metrics;
pub mod processor;
pub mod route;
pub mod router;
pub mod settings;
pub mod source;
pub mod store;
pub mod supervision;

pub use dead_letters::DeadLetter;
pub use dispatcher::{Dispatcher, DispatcherBuilder, ShutdownReport};
pub use envelope::{
    Envelope, ErrorClass, ErrorInfo, Kind, Message, MessageId, Outcome, Source, Status, Timings,
};
pub use error::{BuildError, CancelError, Rejected, ReplayError};
pub use metrics::{KindStats, LedgerSnapshot};
pub use processor::{
    AsyncProcessor, CpuProcessor, Job, Pool, ProcessError, ProcessResult, Processor,
};
pub use route::RouteInfo;
pub use settings::{
    CpuSettings, FetchSettings, IoSettings, RestartPolicy, RouteSettings, Settings,
};
pub use source::tcp::{StopAccepting, TcpSettings, TcpSource};
pub use source::timer::{Every, Schedule, ScheduleError, ScheduleHandle};
pub use source::{client_name, json_depth, parse_json, token_accepted, truncated, Submission};
pub use store::{MemoryStore, Store};
