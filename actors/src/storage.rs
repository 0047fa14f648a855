//! Storage: where accepted work is written so that it outlives the process. One public trait,
//! [`Storage`], with two implementations here: [`Memory`] (nothing is written; today's
//! in-memory behaviour) and [`Journal`] (an append-only log on local disk, see
//! [`crate::journal`]). A cluster backend (a NATS JetStream stream) fits the same trait: records
//! are published to a stream, a receipt is the stream's acknowledgement.
//!
//! The storage is a write-ahead log of [`Record`]s, not the index the dispatcher reads: the
//! dispatcher keeps message state in memory and writes every change of it here. At start-up
//! [`Storage::load`] hands back what was written, and the dispatcher rebuilds its state from it
//! (see `docs/ARCHITECTURE.md`, "Storage").
//!
//! Failure: an append that cannot be made durable resolves its [`Receipt`] with a
//! [`StorageError`]; the dispatcher then refuses the message it was admitting (nothing is lost:
//! the message was never acknowledged). [`Storage::load`] fails on a record that does not check
//! out, naming the file and offset, so start-up stops rather than silently losing work.

use std::io;
use std::path::{Path, PathBuf};
use std::sync::atomic::Ordering::Relaxed;
use std::sync::Arc;
use std::time::Duration;

use parking_lot::Mutex;
use serde::{Deserialize, Serialize};
use serde_json::Value;

use crate::dead_letters::DeadLetter;
use crate::envelope::{plain_str, Kind, MessageId, Outcome, Source};
use crate::journal::{self, Log, Scan, ScanError};

pub use crate::journal::Fsync;

/// A message as it was accepted: everything needed to run it again after a restart.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Accepted {
    /// Its id (which also gives its acceptance time).
    pub id: MessageId,
    /// Its kind.
    pub kind: Kind,
    /// Its payload.
    pub payload: Value,
    /// Where it came from.
    pub source: Source,
    /// Its idempotency key.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub key: Option<String>,
    /// When it may run, Unix milliseconds (a delayed message).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub due_ms: Option<u64>,
    /// Its own run timeout, milliseconds.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub timeout_ms: Option<u64>,
    /// The dead letter it replays.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub replay_of: Option<MessageId>,
    /// Attempts already started (non-zero when compaction writes the record again).
    #[serde(default)]
    pub attempts: u32,
}

impl Accepted {
    /// `{"accepted": {…}}` as serde writes the record, in fewer steps.
    fn write_json(&self, out: &mut Vec<u8>) -> serde_json::Result<()> {
        // Every field by name: a field added to `Accepted` fails to compile here until it is
        // written below (and the test comparing the bytes with serde's covers it).
        let Accepted {
            id: _,
            kind: _,
            payload: _,
            source: _,
            key: _,
            due_ms: _,
            timeout_ms: _,
            replay_of: _,
            attempts: _,
        } = self;
        out.extend_from_slice(b"{\"accepted\":{\"id\":");
        plain_str(
            out,
            self.id.as_ulid().array_to_str(&mut [0u8; ulid::ULID_LEN]),
        );
        out.extend_from_slice(b",\"kind\":");
        plain_str(out, self.kind.as_str());
        out.extend_from_slice(b",\"payload\":");
        serde_json::to_writer(&mut *out, &self.payload)?;
        out.extend_from_slice(b",\"source\":");
        serde_json::to_writer(&mut *out, &self.source)?;
        if let Some(key) = &self.key {
            out.extend_from_slice(b",\"key\":");
            serde_json::to_writer(&mut *out, key)?;
        }
        if let Some(due) = self.due_ms {
            out.extend_from_slice(b",\"due_ms\":");
            serde_json::to_writer(&mut *out, &due)?;
        }
        if let Some(timeout) = self.timeout_ms {
            out.extend_from_slice(b",\"timeout_ms\":");
            serde_json::to_writer(&mut *out, &timeout)?;
        }
        if let Some(replay_of) = self.replay_of {
            out.extend_from_slice(b",\"replay_of\":");
            plain_str(
                out,
                replay_of.as_ulid().array_to_str(&mut [0u8; ulid::ULID_LEN]),
            );
        }
        out.extend_from_slice(b",\"attempts\":");
        serde_json::to_writer(&mut *out, &self.attempts)?;
        out.extend_from_slice(b"}}");
        Ok(())
    }
}

/// One change of a message's state, as written to storage.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Record {
    /// A message was accepted.
    Accepted(Accepted),
    /// An attempt began. Not written for an async attempt that completes on its first poll:
    /// its `Finished` record, appended next, says all this would. If the process dies during
    /// that poll, or before the `Finished` record is written, the attempt is not counted: the
    /// message runs again under the same attempt number.
    Started {
        /// The message.
        id: MessageId,
        /// The attempt's number (1 for the first).
        attempt: u32,
    },
    /// A message reached its terminal state.
    Finished {
        /// Its outcome (shared with the index, not copied).
        outcome: Arc<Outcome>,
        /// Its idempotency key, remembered as long as the outcome is.
        #[serde(default, skip_serializing_if = "Option::is_none")]
        key: Option<String>,
    },
    /// A message was filed in the dead letters (its `Finished` record follows).
    Dead(DeadLetter),
    /// A dead letter was replayed and left the dead letters.
    Replayed {
        /// The dead letter's id.
        id: MessageId,
    },
}

impl Record {
    /// The record's bytes as stored (JSON text: the journal can be read with ordinary tools).
    pub fn encode(&self) -> Vec<u8> {
        // The two records of every message are written field by field, the names as fixed text
        // (serde's bytes in fewer steps: a test compares them); the others by serde.
        let mut out = Vec::with_capacity(256);
        let written = match self {
            Record::Accepted(a) => a.write_json(&mut out),
            Record::Finished { outcome, key } => outcome.to_json().and_then(|text| {
                out.extend_from_slice(b"{\"finished\":{\"outcome\":");
                out.extend_from_slice(&text);
                if let Some(key) = key {
                    out.extend_from_slice(b",\"key\":");
                    serde_json::to_writer(&mut out, key)?;
                }
                out.extend_from_slice(b"}}");
                Ok(())
            }),
            _ => serde_json::to_writer(&mut out, self),
        };
        written.expect("a record always serializes");
        out
    }

    /// Reads a record back, however deep it nests: what was written must read back (a
    /// payload is nested up to the service's `max_json_depth`, a fetched body up to 127 levels,
    /// a library message without a limit, and the record adds its own levels), so serde_json's
    /// 128-level cap is lifted and the stack grows as the record needs (serde_stacker).
    pub fn decode(bytes: &[u8]) -> Result<Record, serde_json::Error> {
        decode_deep(bytes)
    }

    /// Which record this is.
    pub fn kind(&self) -> RecordKind {
        match self {
            Record::Accepted(_) => RecordKind::Accepted,
            Record::Started { .. } => RecordKind::Started,
            Record::Finished { .. } => RecordKind::Finished,
            Record::Dead(_) => RecordKind::Dead,
            Record::Replayed { .. } => RecordKind::Replayed,
        }
    }

    /// The message the record is about.
    pub fn id(&self) -> MessageId {
        match self {
            Record::Accepted(a) => a.id,
            Record::Started { id, .. } | Record::Replayed { id } => *id,
            Record::Finished { outcome, .. } => outcome.id,
            Record::Dead(d) => d.id,
        }
    }
}

/// Why storage could not do what was asked.
#[derive(Debug, Clone, thiserror::Error)]
pub enum StorageError {
    /// A write, an fsync or a read failed (a full disk, an I/O error).
    #[error("storage I/O error: {0}")]
    Io(Arc<io::Error>),
    /// What was read back does not check out.
    #[error("storage corrupt: {file} at offset {offset}: {reason}")]
    Corrupt {
        /// The file.
        file: PathBuf,
        /// Where the bad record begins.
        offset: u64,
        /// What is wrong.
        reason: String,
    },
    /// The storage was closed.
    #[error("storage is closed")]
    Closed,
    /// Records wait to be written faster than the disk takes them: admission pauses until the
    /// backlog shrinks below its bound.
    #[error("the journal is {0} bytes behind; try again shortly")]
    Backlog(u64),
    /// The storage is on another machine (a cluster's NATS server) that cannot be reached
    /// now; nothing was written.
    #[error("storage unreachable: {0}")]
    Unavailable(String),
    /// Another process has the journal open.
    #[error("the journal in {0} is in use by another process (its LOCK file is locked)")]
    InUse(PathBuf),
}

impl From<io::Error> for StorageError {
    fn from(e: io::Error) -> Self {
        StorageError::Io(Arc::new(e))
    }
}

impl From<ScanError> for StorageError {
    fn from(e: ScanError) -> Self {
        match e {
            ScanError::Io(e) => e.into(),
            ScanError::Corrupt {
                file,
                offset,
                reason,
            } => StorageError::Corrupt {
                file,
                offset,
                reason,
            },
        }
    }
}

/// The answer to [`Storage::append`]: resolves once the record is as durable as the storage
/// promises.
#[derive(Debug)]
pub struct Receipt(ReceiptInner);

#[derive(Debug)]
enum ReceiptInner {
    Ready(Result<(), StorageError>),
    Journal(journal::Ack),
    Pending(tokio::sync::oneshot::Receiver<Result<(), StorageError>>),
}

/// Settles a [`Receipt::pending`] receipt: for a storage that learns later that a record is
/// durable (an acknowledgement from another process, a commit of its own that covers many
/// records). Dropped without [`Settle::settle`], the receipt resolves to
/// [`StorageError::Closed`] (the message whose record it was is refused).
///
/// Settle every receipt within a bounded time, by itself: not only when the dispatcher calls
/// the storage again (not even [`Storage::flush`]). A caller waits on the receipt, and so does
/// [`Dispatcher::shutdown`](crate::Dispatcher::shutdown) for every admission still waiting.
#[derive(Debug)]
#[must_use = "a Settle dropped unsettled refuses the record's message"]
pub struct Settle(tokio::sync::oneshot::Sender<Result<(), StorageError>>);

impl Settle {
    /// Resolves the receipt: `Ok` once the record is durable, or the error that kept it from
    /// being written (the dispatcher then refuses the message whose record it was).
    pub fn settle(self, result: Result<(), StorageError>) {
        // Nobody waiting any more (the receipt was dropped) is fine: nothing to tell.
        let _ = self.0.send(result);
    }
}

impl Receipt {
    /// A receipt that is already settled.
    pub fn ready(result: Result<(), StorageError>) -> Receipt {
        Receipt(ReceiptInner::Ready(result))
    }

    /// A receipt that resolves when its [`Settle`] is settled (or dropped), for a
    /// [`Storage::append`] that returns before the record is durable. A storage that returns
    /// these must also override [`Storage::flush`], so that it resolves only once every
    /// receipt given out before it is settled, with the first error among them.
    pub fn pending() -> (Receipt, Settle) {
        let (tx, rx) = tokio::sync::oneshot::channel();
        (Receipt(ReceiptInner::Pending(rx)), Settle(tx))
    }

    /// Waits until the record is durable, or for the error that kept it from being written.
    pub async fn durable(mut self) -> Result<(), StorageError> {
        self.wait().await
    }

    /// [`Receipt::durable`] without giving the receipt up: a caller that is dropped while it
    /// waits leaves the receipt to be waited for by someone else.
    /// Waiting again after it returned gives the same answer.
    pub(crate) async fn wait(&mut self) -> Result<(), StorageError> {
        let result = match &mut self.0 {
            ReceiptInner::Ready(r) => return r.clone(),
            ReceiptInner::Journal(ack) => match ack.await {
                Ok(r) => r.map_err(StorageError::Io),
                Err(_) => Err(StorageError::Closed),
            },
            ReceiptInner::Pending(rx) => rx.await.unwrap_or(Err(StorageError::Closed)),
        };
        // A channel's receiver must not be polled again once it has answered.
        self.0 = ReceiptInner::Ready(result.clone());
        result
    }

    /// Runs `step` with the receipt's result, for a caller that went away while it waited:
    /// as a task on `arbiter` (so no thread is held while the record is written), or, if there
    /// is none, it has stopped or it stops before the receipt is settled, on a thread of its
    /// own. If that thread cannot be started either, `step` runs at once with
    /// [`StorageError::Closed`]. So `step` always runs, once.
    pub(crate) fn then_on(
        self,
        arbiter: Option<&actix_rt::ArbiterHandle>,
        step: impl FnOnce(Result<(), StorageError>) + Send + 'static,
    ) {
        let mut rest = Rest {
            receipt: Some(self),
            step: Some(Box::new(step)),
        };
        let Some(arbiter) = arbiter else {
            return; // `rest` is dropped: its thread takes over
        };
        // If the task is dropped before it ends (the arbiter stopped, or would not take it),
        // so is `rest`, whose drop finishes on a thread.
        arbiter.spawn(async move {
            let result = rest
                .receipt
                .as_mut()
                .expect("taken only here or on drop")
                .wait()
                .await;
            rest.receipt = None;
            if let Some(step) = rest.step.take() {
                step(result);
            }
        });
    }

    /// [`Receipt::durable`] for a thread that may block (never an async arbiter).
    ///
    /// # Panics
    ///
    /// On a thread that runs an async runtime (an actix arbiter), while the record is not yet
    /// durable.
    pub fn wait_blocking(self) -> Result<(), StorageError> {
        match self.0 {
            ReceiptInner::Ready(r) => r,
            ReceiptInner::Journal(ack) => match ack.blocking_recv() {
                Ok(r) => r.map_err(StorageError::Io),
                Err(_) => Err(StorageError::Closed),
            },
            ReceiptInner::Pending(rx) => rx.blocking_recv().unwrap_or(Err(StorageError::Closed)),
        }
    }
}

/// A step to run with a record's result (a receipt's, or a commit's).
pub(crate) type Step = Box<dyn FnOnce(Result<(), StorageError>) + Send>;

/// The step waiting for a receipt ([`Receipt::then_on`]): dropped before it ran, it waits for
/// the receipt on a thread of its own.
struct Rest {
    receipt: Option<Receipt>,
    step: Option<Step>,
}

impl Drop for Rest {
    fn drop(&mut self) {
        let (Some(receipt), Some(step)) = (self.receipt.take(), self.step.take()) else {
            return;
        };
        // The step is shared with the thread: if the thread cannot start, it runs here.
        let step = Arc::new(Mutex::new(Some(step)));
        let on_thread = step.clone();
        let spawned = std::thread::Builder::new()
            .name("mailroom-receipt".into())
            .spawn(move || {
                let result = receipt.wait_blocking();
                if let Some(step) = on_thread.lock().take() {
                    step(result);
                }
            });
        if let Err(e) = spawned {
            tracing::error!(error = %e, "cannot start a thread to wait for a record; its message is refused");
            if let Some(step) = step.lock().take() {
                step(Err(StorageError::Closed));
            }
        }
    }
}

/// What compaction did.
#[derive(Debug, Default, Clone, PartialEq)]
pub struct Compacted {
    /// Segments (or equivalent units) removed.
    pub segments: usize,
    /// Records read from them.
    pub read: usize,
    /// Records written again because they were still needed: the kind and id of each.
    pub kept: Vec<(RecordKind, MessageId)>,
}

/// Whether JSON text nests at most `max` arrays and objects deep (brackets inside strings do
/// not count). One pass, no recursion: checked before a deep decode, so that what is decoded
/// can also be dropped and cloned (which recurse) without running out of stack.
#[cfg(feature = "cluster")]
pub(crate) fn nests_within(bytes: &[u8], max: usize) -> bool {
    let (mut depth, mut in_string, mut escaped) = (0usize, false, false);
    for &b in bytes {
        if in_string {
            match b {
                _ if escaped => escaped = false,
                b'\\' => escaped = true,
                b'"' => in_string = false,
                _ => {}
            }
            continue;
        }
        match b {
            b'"' => in_string = true,
            b'[' | b'{' => {
                depth += 1;
                if depth > max {
                    return false;
                }
            }
            b']' | b'}' => depth = depth.saturating_sub(1),
            _ => {}
        }
    }
    true
}

/// Reads JSON that this process or another node wrote, however deep it nests (see
/// [`Record::decode`]): serde_json's 128-level cap is lifted and the stack grows as needed.
pub(crate) fn decode_deep<T: serde::de::DeserializeOwned>(bytes: &[u8]) -> serde_json::Result<T> {
    let mut de = serde_json::Deserializer::from_slice(bytes);
    de.disable_recursion_limit();
    let value = T::deserialize(serde_stacker::Deserializer::new(&mut de))?;
    de.end()?;
    Ok(value)
}

/// [`decode_deep`] of what came over the network, refused (`None`) past `max` levels of
/// nesting: another node's records nest a few levels more than the payloads it admits.
#[cfg(feature = "cluster")]
pub(crate) fn decode_within<T: serde::de::DeserializeOwned>(bytes: &[u8], max: usize) -> Option<T> {
    nests_within(bytes, max)
        .then(|| decode_deep(bytes).ok())
        .flatten()
}

/// Which [`Record`] a stored record is, without reading all of it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum RecordKind {
    /// [`Record::Accepted`]
    Accepted,
    /// [`Record::Started`]
    Started,
    /// [`Record::Finished`]
    Finished,
    /// [`Record::Dead`]
    Dead,
    /// [`Record::Replayed`]
    Replayed,
}

/// What compaction does with a record: drop it, write it again as it is, or (an `Accepted`
/// record) write it again with this attempt count.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Keep {
    /// No longer needed.
    Drop,
    /// Still needed, unchanged.
    AsIs,
    /// Still needed, with `attempts` set to this.
    WithAttempts(u32),
}

impl Record {
    /// The kind and id of an encoded record, read from its first bytes: every record is written
    /// as `{"<kind>":{…` with the message's id as the first `"id"` in it (the id leads each
    /// struct). `None` for bytes that are not such a record.
    pub fn peek(bytes: &[u8]) -> Option<(RecordKind, MessageId)> {
        let rest = bytes.strip_prefix(b"{\"")?;
        let end = rest.iter().position(|&b| b == b'"')?;
        let kind = match &rest[..end] {
            b"accepted" => RecordKind::Accepted,
            b"started" => RecordKind::Started,
            b"finished" => RecordKind::Finished,
            b"dead" => RecordKind::Dead,
            b"replayed" => RecordKind::Replayed,
            _ => return None,
        };
        const ID: &[u8] = b"\"id\":\"";
        let at = rest.windows(ID.len()).position(|w| w == ID)? + ID.len();
        let id = std::str::from_utf8(rest.get(at..at + 26)?)
            .ok()?
            .parse()
            .ok()?;
        Some((kind, id))
    }
}

/// Counters of a storage, for metrics and benchmarks.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq, Serialize)]
pub struct StorageStats {
    /// Records written.
    pub records: u64,
    /// fsyncs done.
    pub fsyncs: u64,
    /// Writes or fsyncs that failed.
    pub failures: u64,
    /// Bytes of records on disk (a journal's open segment is allocated ahead of them).
    pub bytes: u64,
}

/// Where accepted work is written so it survives the process.
///
/// The dispatcher calls [`Storage::load`] once when it is built, then [`Storage::append`] for
/// every change of a message's state, from any thread, and [`Storage::compact`] now and then
/// from a thread of its own that may block.
pub trait Storage: Send + Sync + 'static {
    /// Whether records outlive the process. When false, nothing is recovered at start-up and
    /// shutdown cancels what it could not finish.
    fn is_durable(&self) -> bool;
    /// Appends a record, in order after every record appended before it returned. The receipt
    /// says when it is durable: [`Receipt::ready`] if it is on return, else
    /// [`Receipt::pending`], settled once it is (the caller waits on the receipt, not on this
    /// call, so several records can share one commit).
    fn append(&self, record: &Record) -> Receipt;
    /// [`Storage::append`] for a record nobody waits for (it becomes durable with a later
    /// record, or soon after; a crash before that loses it, which must be safe).
    fn write(&self, record: &Record) {
        drop(self.append(record));
    }
    /// [`Storage::append`] for a record whose waiter is in no hurry (a message that runs
    /// meanwhile): the storage may hold it a few milliseconds to commit it with others, and
    /// commits it at once on [`Storage::hurry`] or [`Storage::flush`].
    fn append_lazy(&self, record: &Record) -> Receipt {
        self.append(record)
    }
    /// Commits the records held by [`Storage::append_lazy`] now, with no commit of its own
    /// beyond theirs. The default does nothing (nothing is held).
    fn hurry(&self) {}
    /// Every record written and not compacted away, oldest first. Called once, before the
    /// first append.
    fn load(&self) -> Result<Vec<Record>, StorageError>;
    /// Drops records that are no longer needed: `keep` is asked about each record of the
    /// oldest data (by kind, id, and whether older data than it stays) and says what to do with
    /// it. Returns what was kept so the caller can write again anything that changed meanwhile.
    fn compact(
        &self,
        keep: &mut dyn FnMut(RecordKind, MessageId, bool) -> Keep,
    ) -> Result<Compacted, StorageError> {
        let _ = keep;
        Ok(Compacted::default())
    }
    /// Resolves once every record appended before it is durable, whatever the fsync mode
    /// (shutdown calls it last; a duplicate of a message recovered at start is answered after
    /// it). The default is for a storage whose receipts are all ready on
    /// return; one that gives out [`Receipt::pending`] receipts must override it.
    fn flush(&self) -> Receipt {
        Receipt::ready(Ok(()))
    }
    /// What has been written so far.
    fn stats(&self) -> StorageStats {
        StorageStats::default()
    }
    /// Whether a new message may be admitted now: an error when records already wait to be
    /// written beyond the storage's bound (so a slow disk cannot make memory grow without
    /// bound), or [`StorageError::Closed`] when the storage can write nothing any more (a
    /// journal whose writer stopped). Otherwise records of messages already accepted are
    /// always taken.
    fn admitting(&self) -> Result<(), StorageError> {
        Ok(())
    }
}

/// No storage: message state lives in memory only and is gone with the process.
#[derive(Debug, Default, Clone, Copy)]
pub struct Memory;

impl Storage for Memory {
    fn is_durable(&self) -> bool {
        false
    }

    fn append(&self, _record: &Record) -> Receipt {
        Receipt::ready(Ok(()))
    }

    fn load(&self) -> Result<Vec<Record>, StorageError> {
        Ok(Vec::new())
    }
}

/// How a [`Journal`] writes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct JournalSettings {
    /// When records reach the disk, and when an append is acknowledged.
    pub fsync: Fsync,
    /// A segment file is closed (and may be compacted) once it holds this many bytes.
    pub segment_bytes: u64,
    /// Most bytes of records waiting to be written before new messages are refused
    /// ([`StorageError::Backlog`]).
    pub max_backlog_bytes: u64,
}

impl Default for JournalSettings {
    fn default() -> Self {
        JournalSettings {
            fsync: Fsync::Always,
            segment_bytes: journal::SEGMENT_BYTES,
            max_backlog_bytes: 64 * 1024 * 1024,
        }
    }
}

/// How long compaction leaves a segment alone after finding it still mostly needed.
const RECHECK: Duration = Duration::from_secs(30);

/// Bytes of records compaction hands the journal's writer at once (see [`Journal::compact`]).
const COPY_CHUNK: usize = 1 << 20;

/// The embedded journal: records in checksummed segment files in one folder, written by one
/// thread with group commit (see [`crate::journal`]). Compaction reads a closed segment, writes
/// again what is still needed and deletes the file.
#[derive(Debug)]
pub struct Journal {
    log: Log,
    scan: Mutex<Option<Scan>>,
    max_backlog_bytes: u64,
    /// Segments compaction found still mostly needed, when, and how many segments were closed
    /// then: each is read again once another segment closes or after [`RECHECK`], not every
    /// time compaction runs.
    skipped: Mutex<std::collections::HashMap<PathBuf, (std::time::Instant, usize)>>,
    /// Holds the folder's lock for as long as the journal is open.
    _lock: std::fs::File,
}

impl Journal {
    /// Opens (or creates) the journal in `dir`. A torn tail is dropped with a warning; a
    /// corrupt record stops it with [`StorageError::Corrupt`].
    /// Only one process may have a journal open: a second gets [`StorageError::InUse`].
    pub fn open(dir: impl AsRef<Path>, settings: JournalSettings) -> Result<Journal, StorageError> {
        let dir = dir.as_ref();
        std::fs::create_dir_all(dir)?;
        let lock = std::fs::File::create(dir.join("LOCK"))?;
        match lock.try_lock() {
            Ok(()) => {}
            Err(std::fs::TryLockError::WouldBlock) => {
                return Err(StorageError::InUse(dir.to_owned()))
            }
            Err(std::fs::TryLockError::Error(e)) => return Err(e.into()),
        }
        let (log, scan) = Log::open_with(dir, settings.fsync, settings.segment_bytes)?;
        Ok(Journal {
            log,
            scan: Mutex::new(Some(scan)),
            max_backlog_bytes: settings.max_backlog_bytes,
            skipped: Mutex::new(std::collections::HashMap::new()),
            _lock: lock,
        })
    }
}

impl Storage for Journal {
    fn is_durable(&self) -> bool {
        true
    }

    fn append(&self, record: &Record) -> Receipt {
        Receipt(ReceiptInner::Journal(self.log.append(record.encode())))
    }

    fn write(&self, record: &Record) {
        self.log.append_detached(record.encode());
    }

    fn append_lazy(&self, record: &Record) -> Receipt {
        Receipt(ReceiptInner::Journal(self.log.append_lazy(record.encode())))
    }

    fn hurry(&self) {
        self.log.hurry();
    }

    fn load(&self) -> Result<Vec<Record>, StorageError> {
        let Some(scan) = self.scan.lock().take() else {
            return Ok(Vec::new());
        };
        scan.records
            .iter()
            .zip(&scan.positions)
            .map(|(bytes, &(segment, offset))| {
                Record::decode(bytes).map_err(|e| StorageError::Corrupt {
                    file: scan.segments[segment].clone(),
                    offset,
                    reason: format!("the record's checksum is right but it does not decode: {e}"),
                })
            })
            .collect()
    }

    fn compact(
        &self,
        keep: &mut dyn FnMut(RecordKind, MessageId, bool) -> Keep,
    ) -> Result<Compacted, StorageError> {
        let mut done = Compacted::default();
        let closed = self.log.closed_segments()?;
        let count = closed.len();
        self.skipped.lock().retain(|p, _| closed.contains(p));
        // Oldest first. A segment still mostly needed stays (writing it again would only move
        // it); the ones after it are compacted too, but `keep` is told an older one stays, so
        // it keeps what that one's records may need (a `Finished` for an `Accepted` there, a
        // `Replayed` for a `Dead` there).
        let mut behind = false;
        for path in closed {
            let recent = self
                .skipped
                .lock()
                .get(&path)
                .is_some_and(|(at, then)| at.elapsed() < RECHECK && *then == count);
            if recent {
                behind = true;
                continue;
            }
            let total = std::fs::metadata(&path)?.len();
            let corrupt = |e: String| StorageError::Corrupt {
                file: path.clone(),
                offset: 0,
                reason: format!("a record does not decode: {e}"),
            };
            // Only the kind and id are read; only a kept `Accepted` record is decoded (to set
            // its attempts), so compaction costs little beside what it copies. Memory holds
            // what is kept, at most half the segment: past that it stays, and reading stops.
            let mut kept = Vec::new();
            let (mut kept_bytes, mut read) = (0u64, 0usize);
            let mut mostly_needed = false;
            for bytes in journal::read_segment(&path)? {
                let bytes = bytes?;
                read += 1;
                let (kind, id) = match Record::peek(&bytes) {
                    Some(p) => p,
                    None => {
                        let r = Record::decode(&bytes).map_err(|e| corrupt(e.to_string()))?;
                        (r.kind(), r.id())
                    }
                };
                let copy = match keep(kind, id, behind) {
                    Keep::Drop => continue,
                    Keep::AsIs => bytes,
                    Keep::WithAttempts(n) => match Record::decode(&bytes) {
                        Ok(Record::Accepted(mut a)) => {
                            a.attempts = n;
                            Record::Accepted(a).encode()
                        }
                        Ok(_) => bytes,
                        Err(e) => return Err(corrupt(e.to_string())),
                    },
                };
                kept_bytes += copy.len() as u64;
                kept.push((copy, (kind, id)));
                if kept_bytes * 2 > total {
                    mostly_needed = true;
                    break;
                }
            }
            if mostly_needed {
                self.skipped
                    .lock()
                    .insert(path, (std::time::Instant::now(), count));
                behind = true;
                continue;
            }
            done.read += read;
            let wait = |acks: &mut Vec<journal::Ack>| -> Result<(), StorageError> {
                for ack in acks.drain(..) {
                    match ack.blocking_recv() {
                        Ok(r) => r.map_err(StorageError::Io)?,
                        Err(_) => return Err(StorageError::Closed),
                    }
                }
                Ok(())
            };
            // Copied a chunk at a time, each in no hurry and waited for before the next: the
            // writer's queue never holds more than a chunk of copies, so the records of
            // messages arriving meanwhile are not queued behind megabytes of them (nor refused
            // as a backlog), and the copies share their commits.
            let (mut acks, mut chunk) = (Vec::new(), 0);
            for (b, _) in kept.iter_mut() {
                chunk += b.len();
                acks.push(self.log.append_lazy(std::mem::take(b)));
                if chunk >= COPY_CHUNK {
                    wait(&mut acks)?;
                    chunk = 0;
                }
            }
            // The segment goes only once what it still held is durable elsewhere, and so is
            // everything written before now (records nobody waited for, such as the `Finished`
            // of a message whose `Accepted` is in this segment), whatever the fsync mode.
            acks.push(self.log.sync());
            wait(&mut acks)?;
            self.log.remove_segment(&path)?;
            done.segments += 1;
            done.kept.extend(kept.into_iter().map(|(_, k)| k));
        }
        Ok(done)
    }

    fn flush(&self) -> Receipt {
        Receipt(ReceiptInner::Journal(self.log.sync()))
    }

    fn admitting(&self) -> Result<(), StorageError> {
        if self.log.is_stopped() {
            return Err(StorageError::Closed);
        }
        let behind = self.log.stats().backlog.load(Relaxed);
        if behind > self.max_backlog_bytes {
            return Err(StorageError::Backlog(behind));
        }
        Ok(())
    }

    fn stats(&self) -> StorageStats {
        let s = self.log.stats();
        StorageStats {
            records: s.records.load(Relaxed),
            fsyncs: s.fsyncs.load(Relaxed),
            failures: s.failures.load(Relaxed),
            bytes: s.disk_bytes.load(Relaxed),
        }
    }
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;

    #[cfg(feature = "cluster")]
    #[test]
    fn nesting_is_measured_outside_strings() {
        assert!(nests_within(br#"{"a":[1,{"b":2}]}"#, 3));
        assert!(!nests_within(br#"{"a":[1,{"b":2}]}"#, 2));
        // Brackets in strings, escaped quotes included, do not count.
        assert!(nests_within(br#"["[[[\"[[[", "{{{"]"#, 1));
        // A backslash escaped just before the closing quote: the quote closes the string.
        assert!(!nests_within(br#"["a\\",[[1]]]"#, 2));
        assert!(nests_within(br#"["a\\",[[1]]]"#, 3));
        let deep = format!("{}1{}", "[".repeat(200), "]".repeat(200));
        assert!(nests_within(deep.as_bytes(), 200));
        assert!(!nests_within(deep.as_bytes(), 199));
        assert!(decode_within::<Value>(deep.as_bytes(), 199).is_none());
        assert!(decode_within::<Value>(deep.as_bytes(), 200).is_some());
    }
    use crate::envelope::Kind;
    use serde_json::json;

    /// Runs `then_on` with a pending receipt, settles it, and returns the result the step got
    /// and the name of the thread it ran on.
    fn step_of(arbiter: Option<&actix_rt::ArbiterHandle>) -> (Result<(), StorageError>, String) {
        let (receipt, settle) = Receipt::pending();
        let (tx, rx) = std::sync::mpsc::channel();
        receipt.then_on(arbiter, move |r| {
            let name = std::thread::current().name().unwrap_or("").to_owned();
            tx.send((r, name)).unwrap();
        });
        assert!(rx.try_recv().is_err(), "ran before the receipt was settled");
        settle.settle(Err(StorageError::Closed));
        let ran = rx
            .recv_timeout(Duration::from_secs(10))
            .expect("the step ran");
        // Once: the step (and its sender) is gone.
        assert!(matches!(
            rx.recv_timeout(Duration::from_secs(10)),
            Err(std::sync::mpsc::RecvTimeoutError::Disconnected)
        ));
        ran
    }

    #[test]
    fn a_step_for_an_abandoned_receipt_runs_once_on_the_arbiter_or_else_on_a_thread() {
        let sys = actix_rt::System::new();
        let arbiter = sys.block_on(async { actix_rt::Arbiter::new() });
        // On the arbiter: no thread of its own.
        let (r, on) = step_of(Some(&arbiter.handle()));
        assert!(matches!(r, Err(StorageError::Closed)), "{r:?}");
        assert!(on.contains("arbiter"), "ran on {on:?}");
        // No arbiter, or one that has stopped: on a thread.
        let (r, on) = step_of(None);
        assert!(matches!(r, Err(StorageError::Closed)), "{r:?}");
        assert_eq!(on, "mailroom-receipt");
        let handle = arbiter.handle();
        arbiter.stop();
        arbiter.join().unwrap();
        let (_, on) = step_of(Some(&handle));
        assert_eq!(on, "mailroom-receipt");
    }

    #[test]
    fn a_step_waiting_on_an_arbiter_that_stops_finishes_on_a_thread() {
        let sys = actix_rt::System::new();
        let arbiter = sys.block_on(async { actix_rt::Arbiter::new() });
        let (receipt, settle) = Receipt::pending();
        let (tx, rx) = std::sync::mpsc::channel();
        receipt.then_on(Some(&arbiter.handle()), move |r| {
            let name = std::thread::current().name().unwrap_or("").to_owned();
            tx.send((r, name)).unwrap();
        });
        // Waiting on the arbiter when it stops: the task is dropped, and a thread waits on.
        arbiter.stop();
        arbiter.join().unwrap();
        assert!(rx.try_recv().is_err(), "ran before the receipt was settled");
        settle.settle(Ok(()));
        let (r, on) = rx
            .recv_timeout(Duration::from_secs(10))
            .expect("the step ran");
        assert!(r.is_ok(), "{r:?}");
        assert_eq!(on, "mailroom-receipt");
    }

    /// An `echo` message's `Accepted` record (for the tests of this crate).
    pub(crate) fn accepted(id: MessageId) -> Record {
        Record::Accepted(Accepted {
            id,
            kind: Kind::new("echo").unwrap(),
            payload: json!("x".repeat(100)),
            source: Source::Library,
            key: None,
            due_ms: None,
            timeout_ms: None,
            replay_of: None,
            attempts: 0,
        })
    }

    #[test]
    fn accepted_and_finished_records_encode_as_serde_writes_them_and_decode() {
        let outcome = Outcome {
            id: MessageId::next(),
            kind: Kind::new("echo").unwrap(),
            status: crate::Status::Completed,
            result: Some(json!({"a": "b \" \\ \n", "n": 1.5})),
            error: None,
            attempts: 1,
            source: Source::Tcp,
            accepted_at_ms: 1_764_000_000_000,
            timings: crate::envelope::Timings::default(),
            replay_of: None,
        };
        for key in [None, Some("k \"1\"".to_string())] {
            let r = Record::Finished {
                outcome: Arc::new(outcome.clone()),
                key,
            };
            assert_eq!(r.encode(), serde_json::to_vec(&r).unwrap());
            assert_eq!(Record::decode(&r.encode()).unwrap(), r);
            assert_eq!(
                Record::peek(&r.encode()),
                Some((RecordKind::Finished, outcome.id))
            );
        }
        let every = Record::Accepted(Accepted {
            id: MessageId::next(),
            kind: Kind::new("a.b-c_9").unwrap(),
            payload: json!({"x": [1, "\u{1}", null], "y": {}}),
            source: Source::Replay,
            key: Some("k\\".into()),
            due_ms: Some(u64::MAX),
            timeout_ms: Some(0),
            replay_of: Some(MessageId::next()),
            attempts: 7,
        });
        for r in [every, accepted(MessageId::next())] {
            assert_eq!(
                String::from_utf8(r.encode()).unwrap(),
                serde_json::to_string(&r).unwrap()
            );
            assert_eq!(Record::decode(&r.encode()).unwrap(), r);
        }
    }

    #[test]
    fn records_nested_past_serde_jsons_default_limit_read_back_from_disk() {
        // A payload or result deeper than serde_json's 128 levels (a library message has no
        // limit; a fetched body 127 levels, to which the record adds its own).
        let mut deep =
            json!({"n": serde_json::Number::from_string_unchecked("1e400".into()), "z": -0});
        for i in 0..600 {
            deep = if i % 2 == 0 {
                json!([deep])
            } else {
                json!({"k": deep})
            };
        }
        let id = MessageId::next();
        let mut a = accepted(id);
        if let Record::Accepted(a) = &mut a {
            a.payload = deep.clone();
        }
        let finished = Record::Finished {
            outcome: Arc::new(Outcome {
                id,
                kind: Kind::new("fetch").unwrap(),
                status: crate::Status::Completed,
                result: Some(deep),
                error: None,
                attempts: 1,
                source: Source::Http,
                accepted_at_ms: 1_764_000_000_000,
                timings: crate::envelope::Timings::default(),
                replay_of: None,
            }),
            key: None,
        };
        let dir = tempfile::tempdir().unwrap();
        {
            let j = Journal::open(dir.path(), JournalSettings::default()).unwrap();
            assert!(j.load().unwrap().is_empty());
            j.append(&a).wait_blocking().unwrap();
            j.append(&finished).wait_blocking().unwrap();
        }
        let j = Journal::open(dir.path(), JournalSettings::default()).unwrap();
        assert_eq!(j.load().unwrap(), vec![a, finished]);
    }

    #[test]
    fn compaction_copies_many_chunks_and_every_copy_is_back_after_a_reopen() {
        let dir = tempfile::tempdir().unwrap();
        let settings = JournalSettings {
            segment_bytes: 4 << 20,
            ..JournalSettings::default()
        };
        let big = |id: MessageId| match accepted(id) {
            Record::Accepted(mut a) => {
                a.payload = json!("y".repeat(2000));
                Record::Accepted(a)
            }
            _ => unreachable!(),
        };
        // About 6 MiB: the first segment closes at 4 MiB, and a third of it (more than one
        // `COPY_CHUNK`) is still needed.
        let ids: Vec<MessageId> = (0..3000).map(|_| MessageId::next()).collect();
        let needed = |id: MessageId| ids.iter().position(|i| *i == id).unwrap() % 3 == 0;
        let copied;
        {
            let j = Journal::open(dir.path(), settings).unwrap();
            let receipts: Vec<_> = ids.iter().map(|id| j.append(&big(*id))).collect();
            for r in receipts {
                r.wait_blocking().unwrap();
            }
            let done = j
                .compact(&mut |_, id, _| {
                    if needed(id) {
                        Keep::WithAttempts(2)
                    } else {
                        Keep::Drop
                    }
                })
                .unwrap();
            assert_eq!(done.segments, 1);
            copied = done.kept.len();
            assert!(copied * 2000 > COPY_CHUNK, "{copied} copied");
        }
        let j = Journal::open(dir.path(), settings).unwrap();
        let loaded = j.load().unwrap();
        let with_attempts: Vec<MessageId> = loaded
            .iter()
            .filter_map(|r| match r {
                Record::Accepted(a) if a.attempts == 2 => Some(a.id),
                _ => None,
            })
            .collect();
        assert_eq!(with_attempts.len(), copied, "every copy is on disk once");
        let distinct: std::collections::HashSet<_> = with_attempts.iter().collect();
        assert_eq!(distinct.len(), copied, "no copy is on disk twice");
        assert!(with_attempts.iter().all(|id| needed(*id)));
        let back: std::collections::HashSet<MessageId> = loaded.iter().map(Record::id).collect();
        for (n, id) in ids.iter().enumerate() {
            assert!(!needed(*id) || back.contains(id), "message {n} kept");
        }
    }

    #[test]
    fn compaction_keeps_what_is_needed_and_removes_whole_segments() {
        let dir = tempfile::tempdir().unwrap();
        let settings = JournalSettings {
            segment_bytes: 4096,
            ..JournalSettings::default()
        };
        let ids: Vec<MessageId> = (0..300).map(|_| MessageId::next()).collect();
        {
            let j = Journal::open(dir.path(), settings).unwrap();
            assert!(j.load().unwrap().is_empty());
            for id in &ids {
                j.append(&accepted(*id)).wait_blocking().unwrap();
            }
            let before = j.stats().bytes;
            // Every tenth message is still needed.
            let done = j
                .compact(&mut |kind, id, _behind| {
                    assert_eq!(kind, RecordKind::Accepted);
                    if ids.iter().position(|i| *i == id).unwrap() % 10 == 0 {
                        Keep::WithAttempts(3)
                    } else {
                        Keep::Drop
                    }
                })
                .unwrap();
            assert!(done.segments > 0);
            assert!(done.kept.iter().all(|(k, _)| *k == RecordKind::Accepted));
            assert!(
                j.stats().bytes < before / 2,
                "{} of {before}",
                j.stats().bytes
            );
            // A second open is refused while this one holds the folder.
            assert!(matches!(
                Journal::open(dir.path(), settings),
                Err(StorageError::InUse(_))
            ));
        }
        let j = Journal::open(dir.path(), settings).unwrap();
        let loaded = j.load().unwrap();
        assert!(loaded
            .iter()
            .any(|r| matches!(r, Record::Accepted(a) if a.attempts == 3)));
        let mut back: Vec<MessageId> = loaded.iter().map(Record::id).collect();
        back.sort();
        back.dedup();
        // The needed ones are all there (the active segment's others too).
        for (n, id) in ids.iter().enumerate() {
            if n % 10 == 0 {
                assert!(back.contains(id), "message {n} kept");
            }
        }
        assert!(
            back.len() < ids.len(),
            "{} of {} left",
            back.len(),
            ids.len()
        );
    }

    #[test]
    fn a_record_reads_back_as_written_and_peeks_its_kind_and_id() {
        let id = MessageId::next();
        let r = accepted(id);
        assert_eq!(Record::decode(&r.encode()).unwrap(), r);
        assert_eq!(Record::peek(&r.encode()), Some((RecordKind::Accepted, id)));
        let started = Record::Started { id, attempt: 1 };
        assert_eq!(
            Record::peek(&started.encode()),
            Some((RecordKind::Started, id))
        );
        let replayed = Record::Replayed { id };
        assert_eq!(
            Record::peek(&replayed.encode()),
            Some((RecordKind::Replayed, id))
        );
        assert_eq!(Record::peek(b"{\"other\":1}"), None);
        let text = String::from_utf8(r.encode()).unwrap();
        assert!(text.starts_with("{\"accepted\":{\"id\":\""), "{text}");
    }
}
