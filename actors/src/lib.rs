#![doc = include_str!("../README.md")]
//!
//! # Layout
//!
//! The modules follow the data path drawn in `docs/ARCHITECTURE.md`, source to outcome:
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
//! - `store` — message state in memory (transitions, waiters): the index the dispatcher reads.
//! - [`storage`] — the [`Storage`] trait: where every change of a message's state is written so
//!   it survives the process; [`Memory`] (nowhere) and [`Journal`] (on local disk), and
//!   recovery from it at start-up.
//! - [`dead_letters`] — messages that failed every attempt.
//! - [`metrics`] — the ledger snapshot.
//! - [`source`] — event sources as actors (the timer; the TCP source).
//! - [`settings`] — plain settings structs; the library reads no files.
//! - [`journal`] — the on-disk log (checksummed records, group commit) that the durable store
//!   is built on.

mod alarm;
pub mod dead_letters;
pub mod dispatcher;
pub mod envelope;
pub mod error;
pub mod journal;
mod ledger;
pub mod metrics;
pub mod processor;
mod recovery;
pub mod route;
pub mod router;
pub mod settings;
pub mod source;
pub mod storage;
pub(crate) mod store;
pub mod supervision;

pub use dead_letters::DeadLetter;
pub use dispatcher::{Dispatcher, DispatcherBuilder, ShutdownReport};
pub use envelope::{
    ClientId, Envelope, ErrorClass, ErrorInfo, Kind, Message, MessageId, Outcome, Source, Status,
    Timings,
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
pub use source::{client_id, parse_json, token_accepted, truncated, JsonError, Submission};
pub use storage::{Journal, JournalSettings, Memory, Storage, StorageError};

/// Entry points for the fuzz targets in `fuzz/` (feature `fuzzing`): the parsing that a client's
/// bytes go through, with no server around it, and the properties it must keep. Not part of the
/// library's API.
#[cfg(feature = "fuzzing")]
#[doc(hidden)]
pub mod fuzzing {
    use crate::source::tcp::{read_line, TcpSettings};
    use crate::source::{parse_json, Submission};
    use crate::{Kind, Source};

    /// A submission body as HTTP reads it: strict JSON within 64 levels, then the envelope.
    /// Whatever parses must print back to the same value (numbers exactly as sent).
    pub fn submission(bytes: &[u8]) {
        let Ok(value) = parse_json(bytes, 64) else {
            return;
        };
        let printed = value.to_string();
        let again = parse_json(printed.as_bytes(), 64).expect("what parsed prints as valid JSON");
        assert_eq!(again, value, "a value survives printing and reading");
        assert!(crate::source::json_depth(&value) <= 64);
        if let Ok(s) = serde_json::from_value::<Submission>(value) {
            let _ = Kind::is_valid(&s.kind);
            let _ = s.into_message(Source::Http);
        }
    }

    /// A TCP line, with a token required: a line is taken only with the right token, and a
    /// refused one names a documented code.
    pub fn tcp_line(bytes: &[u8]) {
        let settings = TcpSettings {
            tokens: vec!["s3cret".into()],
            ..TcpSettings::default()
        };
        match read_line(bytes, &settings) {
            Ok(line) => assert_eq!(line.token.as_deref(), Some("s3cret")),
            Err(r) => assert!(matches!(r.code, 400 | 401), "code {}", r.code),
        }
    }
}
