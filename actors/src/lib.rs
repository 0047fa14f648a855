#![doc = include_str!("../README.md")]
//!
//! # Layout
//!
//! The public surface is what the root re-exports — [`Dispatcher`] and its builder, [`Message`]
//! and [`Outcome`], the processor traits, the settings, the sources, and [`Storage`] — plus four
//! modules: [`processor`] (the built-in processors), [`source`] (the TCP and timer sources and
//! the parsing every source shares), [`storage`] (the storage trait, records, the journal) and
//! [`journal`] (the on-disk log format). The rest is private; the modules follow the data path
//! drawn in `docs/ARCHITECTURE.md`, source to outcome:
//!
//! - `envelope` — ids, kinds, messages, envelopes, statuses, outcomes: the shared types.
//! - `dispatcher` — the public handle and its builder; admission (routing, validation, the
//!   route's bound) happens here, in the caller's thread.
//! - `ledger` — the only way a message's state changes after admission: start, finish, bury,
//!   cancel, each written to storage and counted before waiters are told.
//! - `router` — the router actors: forward envelopes to route workers, hold delayed ones.
//! - `processor/worker.rs`, `processor/cpu.rs` — the supervised worker of each route and the
//!   `SyncArbiter` pool; each gets a narrow `Station` (ledger, router, drain state), not the
//!   dispatcher.
//! - `store` — message state in memory (the index); `storage`/`journal` — what outlives the
//!   process; `recovery` — rebuilding the index from storage, and compaction.
//! - `supervision` — panic text and the restart budget; `dead_letters`; `metrics` — the
//!   ledger snapshot; `settings` — plain settings structs (the library reads no files).

mod alarm;
#[cfg(feature = "cluster")]
pub mod cluster;
mod commit;
mod dead_letters;
mod dispatcher;
mod envelope;
mod error;
pub mod journal;
mod ledger;
mod metrics;
pub mod processor;
mod recovery;
mod route;
mod router;
mod settings;
pub mod source;
pub mod storage;
mod store;
mod supervision;
mod timer;
mod watchdog;

#[cfg(feature = "cluster")]
pub use cluster::{Cluster, ClusterError, ClusterOutcome, ClusterSettings, ClusterStats};
pub use dead_letters::DeadLetter;
pub use dispatcher::{Dispatcher, DispatcherBuilder, ShutdownReport, Submitter};
pub use envelope::{
    BadKind, BadMessageId, ClientId, ErrorClass, ErrorInfo, Kind, Message, MessageId, Outcome,
    Source, Status, Timings,
};
pub use error::{BuildError, CancelError, Rejected, ReplayError};
pub use metrics::{HistogramSnapshot, KindStats, LedgerSnapshot, Rejections, LATENCY_BUCKETS};
pub use processor::{
    AsyncProcessor, CpuProcessor, Job, Pool, ProcessError, ProcessResult, Processor,
};
pub use route::RouteInfo;
pub use settings::{
    CpuSettings, FetchSettings, IoSettings, RestartPolicy, RouteSettings, Settings,
};
pub use source::tcp::{StopAccepting, TcpSettings, TcpSource};
pub use source::timer::{Every, Schedule, ScheduleError, ScheduleHandle};
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
        let read = Submission::from_value(value.clone()).map_err(|e| e.to_string());
        let by_serde = serde_json::from_value::<Submission>(value).map_err(|e| e.to_string());
        // The one difference allowed: serde's walk rewrites some numbers of the payload (an
        // integer `-0` as `0`, some decimals in exponent form), while `from_value` keeps the
        // payload exactly as it was sent. So the payload is compared after the same walk.
        let as_serde = read.clone().map(|mut s| {
            s.payload = serde_json::from_value(s.payload).expect("a value reads as a value");
            s
        });
        assert_eq!(as_serde, by_serde, "the envelope reads as serde reads it");
        if let Ok(s) = read {
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
