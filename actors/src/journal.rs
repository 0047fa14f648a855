//! The journal's log: records appended to segment files on disk, each with a checksum, written
//! by one thread that shares each fsync among every record waiting for it (group commit).
//!
//! A segment is `NNNNNNNNNNNNNNNN.log` (its sequence number) in the journal's folder: an 8-byte
//! header (`MRJRNL01`), then records, each `length (u32 LE) · crc32 of the bytes (u32 LE) ·
//! bytes`. Records are opaque bytes here; what they mean is the store's business. The segment
//! being appended to is allocated ahead to its full size (zeros after its last record), so an
//! append does not grow the file, and its fsync has no new size to commit: on ext4 measured two
//! disk writes per fsync instead of three, and about a third less CPU. Zeros where a record
//! would begin are the end of the records. A segment is cut back to its records when it is
//! closed and when the log is dropped; a closed one that a crash left uncut is cut back when
//! the log is opened.
//!
//! Appends that someone is in a hurry for ([`Log::append`], [`Log::sync`]) wake the writer at
//! once; the others ([`Log::append_lazy`], [`Log::append_detached`]) wait up to [`LAZY`] for
//! company, so under load the writer wakes, writes and fsyncs once per batch of many records.
//!
//! Failure: [`scan`] reads every segment in order. A record that does not check out at the end
//! of the last segment — a crash in the middle of a write: cut short, followed only by zeros, or
//! with a block of zeros where the crash kept part of the write from the disk — is a *torn
//! tail*: reported (file, offset, bytes) and dropped by [`Log::open`], which cuts the file back
//! there and goes on. (A block the disk itself lost inside acknowledged records of the last
//! segment looks the same, and is dropped the same way.) Anything else that does not check out
//! (a bad checksum with records after it, a short record in an earlier segment, a bad header) is
//! corruption: [`ScanError::Corrupt`] names the file and offset, and nothing is opened. A write
//! or fsync that fails is reported to every record of its batch and the segment is cut back to
//! its last good length, so a later write that succeeds follows whole records only; if it
//! cannot be cut back, the writer stops and every later record is refused. It stops too when
//! an fsync fails after its records were acknowledged ([`Fsync::Interval`], [`Fsync::Never`]):
//! a later fsync could not be trusted to cover them. When the
//! file system cannot allocate ahead (no space, or no support), the segment grows as it is
//! written, as it would without it.

use std::fs::{self, File, OpenOptions};
use std::io::{self, BufWriter, Read, Seek, SeekFrom, Write};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering::Relaxed};
use std::sync::Arc;

use parking_lot::{Condvar, Mutex};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use tokio::sync::oneshot;

/// The first bytes of every segment.
const MAGIC: &[u8; 8] = b"MRJRNL01";
/// Longest record accepted (a message is at most a megabyte or so; this leaves room).
pub const MAX_RECORD: u32 = 64 * 1024 * 1024;
/// By default a segment is closed and the next begun once it holds this many bytes.
pub const SEGMENT_BYTES: u64 = 64 * 1024 * 1024;
/// How long a record appended with no hurry ([`Log::append_lazy`], [`Log::append_detached`])
/// may wait for company before the writer takes it: records in no hurry wake the writer at most
/// once per this long, so under load they share a write and an fsync with many others.
pub const LAZY: Duration = Duration::from_millis(5);
/// After the next segment could not be begun, how long the writer writes on in the full one
/// before it tries again (so a folder that is gone or a full disk costs one error a second, not
/// one per batch).
const ROTATE_RETRY: Duration = Duration::from_secs(1);
/// With [`Fsync::Always`], how long after an fsync that failed the writer tries again when no
/// batch comes first (so a failing disk costs one error a second, not one per [`LAZY`]).
const SYNC_RETRY: Duration = Duration::from_secs(1);
/// Most bytes written between two fsyncs of one batch.
const MAX_BATCH_BYTES: usize = 8 * 1024 * 1024;

/// When appended records reach the disk.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Fsync {
    /// Each record is acknowledged after an fsync that covers it (records waiting at the same
    /// time share one). Every record is fsynced within [`LAZY`] of its append, or at once when
    /// someone is in a hurry for it ([`Log::append`], [`Log::sync`]).
    Always,
    /// Records are acknowledged once written; an fsync runs at least this often while records
    /// arrive.
    Interval(Duration),
    /// Records are acknowledged once written; the operating system decides when they reach
    /// the disk.
    Never,
}

/// A torn tail found by [`scan`]: where the last whole record ends, and what follows it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Torn {
    /// The segment.
    pub file: PathBuf,
    /// Offset of the first byte that is not part of a whole record.
    pub offset: u64,
    /// Bytes from there to the last one that is not zero (zeros after it are the segment's
    /// allocation, not part of the write).
    pub bytes: u64,
}

/// What [`scan`] found.
#[derive(Debug, Default)]
pub struct Scan {
    /// Every whole record, oldest first.
    pub records: Vec<Vec<u8>>,
    /// Where each record of `records` begins: its segment (an index into `segments`) and the
    /// offset of its header in that file.
    pub positions: Vec<(usize, u64)>,
    /// The segments, oldest first.
    pub segments: Vec<PathBuf>,
    /// A torn tail of the last segment, if there is one.
    pub torn: Option<Torn>,
    /// Where each segment's whole records end (the zeros after them, if any, are what it was
    /// allocated ahead with): the next record goes at the last one's end (0 when the last one
    /// has not even its header).
    pub ends: Vec<u64>,
    /// Bytes of whole records and headers.
    pub bytes: u64,
}

/// Why a journal cannot be read.
#[derive(Debug, thiserror::Error)]
pub enum ScanError {
    /// The folder or a segment could not be read.
    #[error("cannot read the journal: {0}")]
    Io(#[from] io::Error),
    /// A segment holds something that is not a whole record, and not at the end.
    #[error("journal corrupt: {file} at offset {offset}: {reason}")]
    Corrupt {
        /// The segment.
        file: PathBuf,
        /// Where the bad record begins.
        offset: u64,
        /// What is wrong.
        reason: String,
    },
}

fn segment_name(seq: u64) -> String {
    format!("{seq:016}.log")
}

/// The segment files of `dir`, oldest first, with their sequence numbers.
fn segments(dir: &Path) -> io::Result<Vec<(u64, PathBuf)>> {
    let mut found = Vec::new();
    for entry in fs::read_dir(dir)? {
        let path = entry?.path();
        let seq = path
            .file_name()
            .and_then(|n| n.to_str())
            .and_then(|n| n.strip_suffix(".log"))
            .filter(|n| n.len() == 16)
            .and_then(|n| n.parse::<u64>().ok());
        if let Some(seq) = seq {
            found.push((seq, path));
        }
    }
    found.sort();
    Ok(found)
}

/// The unit in which a write reaches the disk (or does not): a crash can keep any of a write's
/// aligned blocks of this size from the disk, and the others of the same write may get there.
const DISK_BLOCK: usize = 512;

/// Whether the bad record at `at`, whose bytes would end at `end`, overlaps a block the crash
/// kept from the disk: an aligned [`DISK_BLOCK`] that reads as zeros from the record's first
/// byte (or its own, if later) to its end. A record's bytes are the store's JSON, which holds
/// no zeros, so corruption (a flipped bit) does not look like this.
fn lost_block(data: &[u8], at: usize, end: usize) -> bool {
    let end = end.max(at + 8).min(data.len());
    let mut block = at / DISK_BLOCK * DISK_BLOCK;
    while block < end {
        let to = (block + DISK_BLOCK).min(data.len());
        if data[block.max(at)..to].iter().all(|&b| b == 0) {
            return true;
        }
        block += DISK_BLOCK;
    }
    false
}

/// Reads every record of the journal in `dir` (which must exist), checking each checksum.
///
/// In the last segment, a record that does not check out is a torn tail (the crash came before
/// the write's fsync finished) when nothing but zeros follows it, when it runs past the end of
/// the file, or when it overlaps a block that reads as zeros (the crash kept that block of the
/// write from the disk, and maybe not the next ones). Anything else is corruption.
pub fn scan(dir: &Path) -> Result<Scan, ScanError> {
    let files = segments(dir)?;
    let mut scan = Scan::default();
    let last = files.len().saturating_sub(1);
    for (i, (_, path)) in files.iter().enumerate() {
        let mut data = Vec::new();
        File::open(path)?.read_to_end(&mut data)?;
        let corrupt = |offset: usize, reason: String| ScanError::Corrupt {
            file: path.clone(),
            offset: offset as u64,
            reason,
        };
        let is_last = i == last;
        let short = data.len() < MAGIC.len();
        // A segment begun just before a crash may not even have its header yet, or only its
        // allocation.
        let begun = (short && MAGIC.starts_with(&data)) || data.iter().all(|&b| b == 0);
        if begun && is_last {
            scan.torn = Some(Torn {
                file: path.clone(),
                offset: 0,
                bytes: data
                    .iter()
                    .rposition(|&b| b != 0)
                    .map_or(0, |i| i as u64 + 1),
            });
            scan.segments.push(path.clone());
            scan.ends.push(0);
            continue;
        }
        if short {
            return Err(corrupt(0, "shorter than a segment header".into()));
        }
        if &data[..MAGIC.len()] != MAGIC {
            return Err(corrupt(0, "not a Mailroom journal segment".into()));
        }
        scan.segments.push(path.clone());
        scan.bytes += MAGIC.len() as u64;
        let mut at = MAGIC.len();
        while at < data.len() {
            let rest = data.len() - at;
            // The bytes from `at` to the last one that is not zero: what a torn tail holds.
            let held = || {
                let last = data[at..]
                    .iter()
                    .rposition(|&b| b != 0)
                    .map_or(0, |i| i + 1);
                Torn {
                    file: path.clone(),
                    offset: at as u64,
                    bytes: last as u64,
                }
            };
            let zeros_after = |from: usize| data[from.min(data.len())..].iter().all(|&b| b == 0);
            if zeros_after(at) {
                break; // the end of the records: the rest was allocated ahead
            }
            if rest < 8 {
                if is_last {
                    scan.torn = Some(held());
                    break;
                }
                return Err(corrupt(
                    at,
                    format!("{rest} bytes, less than a record header"),
                ));
            }
            let len = u32::from_le_bytes(data[at..at + 4].try_into().expect("4 bytes"));
            let crc = u32::from_le_bytes(data[at + 4..at + 8].try_into().expect("4 bytes"));
            if len == 0 || len > MAX_RECORD {
                if is_last && lost_block(&data, at, at + 8) {
                    scan.torn = Some(held());
                    break;
                }
                return Err(corrupt(at, format!("record length {len} is not valid")));
            }
            let end = at + 8 + len as usize;
            if end > data.len() {
                if is_last {
                    scan.torn = Some(held());
                    break;
                }
                return Err(corrupt(at, format!("record of {len} bytes cut short")));
            }
            let bytes = &data[at + 8..end];
            if crc32fast::hash(bytes) != crc {
                if is_last && (zeros_after(end) || lost_block(&data, at, end)) {
                    scan.torn = Some(held()); // the last write did not finish
                    break;
                }
                return Err(corrupt(at, "checksum mismatch".into()));
            }
            scan.records.push(bytes.to_vec());
            scan.positions.push((scan.segments.len() - 1, at as u64));
            scan.bytes += 8 + u64::from(len);
            at = end;
        }
        let end = match &scan.torn {
            Some(t) if is_last => t.offset,
            _ => at as u64,
        };
        scan.ends.push(end);
    }
    Ok(scan)
}

/// Counts of what the writer has done, for metrics and benchmarks.
#[derive(Debug, Default)]
pub struct LogStats {
    /// Tests only: the next batch's write fails after its records are buffered, and (with
    /// `fail_cut`) cutting the segment back after it fails too.
    #[cfg(test)]
    fail_write: std::sync::atomic::AtomicBool,
    #[cfg(test)]
    fail_cut: std::sync::atomic::AtomicBool,
    /// Tests only: the next fsync fails.
    #[cfg(test)]
    fail_sync: std::sync::atomic::AtomicBool,
    /// Records written.
    pub records: AtomicU64,
    /// Batches written (each one write, and one fsync with [`Fsync::Always`]).
    pub batches: AtomicU64,
    /// fsyncs done.
    pub fsyncs: AtomicU64,
    /// Writes or fsyncs that failed.
    pub failures: AtomicU64,
    /// The sequence number of the segment being appended to.
    pub segment: AtomicU64,
    /// Bytes of records appended and not yet written.
    pub backlog: AtomicU64,
    /// Bytes of the segment files up to their last record (the open segment's file is
    /// allocated ahead of them). Kept up to date by the writer and by compaction, so reading it
    /// touches no file.
    pub disk_bytes: AtomicU64,
}

/// Whether `bytes` can be a record: refused on its own here, an empty or too long record does
/// not reach the writer, where it would fail every other record of its batch.
fn writable(bytes: &[u8]) -> io::Result<()> {
    if bytes.is_empty() {
        return Err(io::Error::new(
            io::ErrorKind::InvalidInput,
            "an empty record",
        ));
    }
    if u64::try_from(bytes.len()).map_or(true, |l| l > u64::from(MAX_RECORD)) {
        return Err(io::Error::new(
            io::ErrorKind::InvalidInput,
            format!(
                "a record of {} bytes is over the journal's limit of {MAX_RECORD}",
                bytes.len()
            ),
        ));
    }
    Ok(())
}

/// The answer to an append: `Ok` once the record is as durable as the [`Fsync`] mode promises.
pub type Ack = oneshot::Receiver<Result<(), Arc<io::Error>>>;

struct Append {
    bytes: Vec<u8>,
    ack: Option<oneshot::Sender<Result<(), Arc<io::Error>>>>,
}

/// The appends waiting for the writer, and what it is to wake for.
#[derive(Default)]
struct Waiting {
    appends: Vec<Append>,
    /// Someone is in a hurry: the writer takes everything now.
    urgent: bool,
    /// When the oldest append in no hurry came: the writer takes everything [`LAZY`] later.
    since: Option<Instant>,
    /// The log was dropped: the writer takes what is left and stops.
    closed: bool,
    /// The writer has stopped: nothing is taken any more.
    gone: bool,
}

/// The queue between the appenders and the writer thread. An append in no hurry only pushes
/// (the first of a batch also wakes the writer to set its timer), so most appends cost no
/// system call and the writer wakes once per batch, not once per record.
#[derive(Default)]
struct Queue {
    waiting: Mutex<Waiting>,
    wake: Condvar,
    /// The writer has stopped (read without the lock, by admission).
    stopped: AtomicBool,
}

impl Queue {
    /// Queues `append`; false (and its ack dropped: the waiter sees the log closed) once the
    /// writer has stopped.
    fn push(&self, append: Append, urgent: bool) -> bool {
        let mut w = self.waiting.lock();
        if w.gone {
            return false;
        }
        w.appends.push(append);
        let wake = if urgent {
            !std::mem::replace(&mut w.urgent, true)
        } else if w.since.is_none() {
            w.since = Some(Instant::now());
            !w.urgent
        } else {
            false
        };
        drop(w);
        if wake {
            self.wake.notify_one();
        }
        true
    }

    /// Has the writer take what waits now, with no barrier of its own.
    fn hurry(&self) {
        let mut w = self.waiting.lock();
        let wake = !w.appends.is_empty() && !std::mem::replace(&mut w.urgent, true);
        drop(w);
        if wake {
            self.wake.notify_one();
        }
    }

    fn close(&self) {
        self.waiting.lock().closed = true;
        self.wake.notify_one();
    }

    /// The writer stopped (it panicked, or broke: see [`Log::is_stopped`]): what waits, and
    /// whatever comes after, is dropped, so its waiters learn it at once instead of waiting for
    /// ever. What it drops from the queue no longer counts as waiting to be written (taken
    /// from `backlog` before the waiters learn it).
    fn writer_gone(&self, backlog: &AtomicU64) {
        self.stopped.store(true, Relaxed);
        let mut w = self.waiting.lock();
        w.gone = true;
        w.closed = true;
        let dropped = std::mem::take(&mut w.appends);
        drop(w);
        backlog.fetch_sub(unwritten(&dropped), Relaxed);
        drop(dropped);
    }

    /// Waits until there is something to take (or `until`, if given, passes), and takes it.
    /// `None` once the log is closed and nothing is left.
    fn take(&self, until: Option<Instant>) -> Option<Vec<Append>> {
        let mut w = self.waiting.lock();
        loop {
            let due = w.since.map(|t| t + LAZY);
            let now = Instant::now();
            if w.urgent
                || w.closed
                || due.is_some_and(|d| d <= now)
                || until.is_some_and(|u| u <= now)
            {
                break;
            }
            match due.into_iter().chain(until).min() {
                Some(at) => {
                    self.wake.wait_until(&mut w, at);
                }
                None => self.wake.wait(&mut w),
            }
        }
        w.urgent = false;
        w.since = None;
        if w.closed && w.appends.is_empty() {
            return None;
        }
        Some(std::mem::take(&mut w.appends))
    }
}

/// Bytes of `appends`, as [`LogStats::backlog`] counts them.
fn unwritten(appends: &[Append]) -> u64 {
    appends.iter().map(|a| a.bytes.len() as u64).sum()
}

/// An open journal: appends go to a writer thread.
pub struct Log {
    dir: PathBuf,
    queue: Arc<Queue>,
    thread: Option<JoinHandle<()>>,
    stats: Arc<LogStats>,
}

impl std::fmt::Debug for Log {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Log").field("stats", &self.stats).finish()
    }
}

impl Log {
    /// Opens the journal in `dir` (created if missing): scans it, drops a torn tail (cutting the
    /// last segment back to its last whole record, with a warning), and starts the writer
    /// thread, which appends to the last segment. Returns the log and what the scan read.
    pub fn open(dir: &Path, fsync: Fsync) -> Result<(Log, Scan), ScanError> {
        Log::open_with(dir, fsync, SEGMENT_BYTES)
    }

    /// [`Log::open`] with segments closed once they hold `segment_bytes` (at least 4 KiB).
    pub fn open_with(
        dir: &Path,
        fsync: Fsync,
        segment_bytes: u64,
    ) -> Result<(Log, Scan), ScanError> {
        fs::create_dir_all(dir)?;
        let scan = scan(dir)?;
        if let Some(torn) = &scan.torn {
            tracing::warn!(
                file = %torn.file.display(),
                offset = torn.offset,
                bytes = torn.bytes,
                "journal: dropping a torn tail (a write cut short by a crash)"
            );
            let f = OpenOptions::new().write(true).open(&torn.file)?;
            f.set_len(torn.offset)?;
            f.sync_all()?;
        }
        let segment_bytes = segment_bytes.max(4096);
        // A crash between beginning a segment and cutting the one before back to its records
        // leaves that one's allocation: it is cut back now.
        let closed = scan.segments.len().saturating_sub(1);
        for (path, &end) in scan.segments.iter().zip(&scan.ends).take(closed) {
            if fs::metadata(path)?.len() > end {
                let f = OpenOptions::new().write(true).open(path)?;
                f.set_len(end)?;
                f.sync_all()?;
            }
        }
        let seq = segments(dir)?.last().map_or(1, |(seq, _)| *seq);
        let end = scan.ends.last().copied().unwrap_or(0);
        let segment = Segment::open(dir, seq, end, segment_bytes)?;
        let stats = Arc::new(LogStats::default());
        stats.segment.store(seq, Relaxed);
        // The records of every segment (not the open one's allocation).
        let records: u64 = scan.ends.iter().take(closed).sum();
        stats.disk_bytes.store(records + segment.good, Relaxed);
        let queue = Arc::new(Queue::default());
        let writer = Writer {
            dir: dir.to_owned(),
            segment,
            segment_bytes,
            fsync,
            stats: stats.clone(),
            last_sync: Instant::now(),
            rotate_after: None,
            broken: false,
            dirty: false,
        };
        let thread = std::thread::Builder::new()
            .name("mailroom-journal".into())
            .spawn({
                let queue = queue.clone();
                move || writer.run(&queue)
            })?;
        Ok((
            Log {
                dir: dir.to_owned(),
                queue,
                thread: Some(thread),
                stats,
            },
            scan,
        ))
    }

    /// Appends a record; the returned [`Ack`] resolves when it is durable (see [`Fsync`]), or
    /// with the error that kept it from being written. The writer takes it at once.
    pub fn append(&self, bytes: Vec<u8>) -> Ack {
        self.append_acked(bytes, true)
    }

    /// [`Log::append`] for a record whose waiter is in no hurry (it has work of its own to do
    /// meanwhile): the writer takes it within [`LAZY`], with whatever else came by then, or at
    /// once if someone is in a hurry first ([`Log::sync`] hurries it).
    pub fn append_lazy(&self, bytes: Vec<u8>) -> Ack {
        self.append_acked(bytes, false)
    }

    fn append_acked(&self, bytes: Vec<u8>, urgent: bool) -> Ack {
        let (tx, rx) = oneshot::channel();
        if let Err(e) = writable(&bytes) {
            let _ = tx.send(Err(Arc::new(e)));
            return rx;
        }
        self.send(
            Append {
                bytes,
                ack: Some(tx),
            },
            urgent,
        );
        rx
    }

    /// Resolves once every record appended before it is on disk (an fsync, whatever the mode).
    /// The writer takes it, and everything before it, at once.
    pub fn sync(&self) -> Ack {
        let (tx, rx) = oneshot::channel();
        // An empty append is a barrier: nothing is written, and its batch is fsynced.
        self.send(
            Append {
                bytes: Vec::new(),
                ack: Some(tx),
            },
            true,
        );
        rx
    }

    /// Has the writer take every record appended so far now, rather than within [`LAZY`]:
    /// for a waiter of a lazy record who has come to need it. Unlike [`Log::sync`], it adds no
    /// fsync of its own (with [`Fsync::Interval`] or [`Fsync::Never`] the records are only
    /// written).
    pub fn hurry(&self) {
        self.queue.hurry();
    }

    /// Appends a record nobody waits for: the writer takes it within [`LAZY`] (see
    /// [`Log::append_lazy`]).
    pub fn append_detached(&self, bytes: Vec<u8>) {
        if let Err(e) = writable(&bytes) {
            // An empty record would be a barrier; one too long would fail its whole batch.
            if !bytes.is_empty() {
                tracing::error!(error = %e, bytes = bytes.len(), "journal: a record nobody waits for is not written");
            }
            return;
        }
        self.send(Append { bytes, ack: None }, false);
    }

    fn send(&self, append: Append, urgent: bool) {
        // Counted before it is queued, so the writer never takes away what is not yet added.
        let bytes = append.bytes.len() as u64;
        self.stats.backlog.fetch_add(bytes, Relaxed);
        if !self.queue.push(append, urgent) {
            self.stats.backlog.fetch_sub(bytes, Relaxed);
        }
    }

    /// Whether the writer thread has stopped (it panicked, could not cut a failed write back,
    /// or an fsync of acknowledged records failed): every append is refused from then on.
    pub fn is_stopped(&self) -> bool {
        self.queue.stopped.load(Relaxed)
    }

    /// What the writer has done so far.
    pub fn stats(&self) -> &LogStats {
        &self.stats
    }

    /// The folder the log is in.
    pub fn dir(&self) -> &Path {
        &self.dir
    }

    /// The segments the writer has closed (every one but the one it appends to), oldest
    /// first: these can be compacted.
    pub fn closed_segments(&self) -> io::Result<Vec<PathBuf>> {
        let active = self.stats.segment.load(Relaxed);
        Ok(segments(&self.dir)?
            .into_iter()
            .filter(|(seq, _)| *seq < active)
            .map(|(_, path)| path)
            .collect())
    }

    /// Deletes a closed segment (after what it holds that is still needed was appended again),
    /// and makes the deletion durable.
    pub fn remove_segment(&self, path: &Path) -> io::Result<()> {
        let len = fs::metadata(path)?.len();
        fs::remove_file(path)?;
        // Saturating: a segment that could not be cut back when it was closed is longer than
        // what was counted of it.
        let _ = self
            .stats
            .disk_bytes
            .fetch_update(Relaxed, Relaxed, |b| Some(b.saturating_sub(len)));
        File::open(&self.dir)?.sync_all()
    }
}

/// The records of one closed segment, one at a time, checked as [`scan`] checks them (nothing
/// may be torn). Reads through a buffer: memory holds one record, not the segment.
pub fn read_segment(path: &Path) -> Result<SegmentRecords, ScanError> {
    let mut file = io::BufReader::with_capacity(256 * 1024, File::open(path)?);
    let mut magic = [0u8; 8];
    if file.read_exact(&mut magic).is_err() || &magic != MAGIC {
        return Err(ScanError::Corrupt {
            file: path.to_owned(),
            offset: 0,
            reason: "not a Mailroom journal segment".into(),
        });
    }
    Ok(SegmentRecords {
        file,
        path: path.to_owned(),
        at: MAGIC.len() as u64,
    })
}

/// The records of a closed segment, oldest first (see [`read_segment`]).
#[derive(Debug)]
pub struct SegmentRecords {
    file: io::BufReader<File>,
    path: PathBuf,
    at: u64,
}

impl Iterator for SegmentRecords {
    type Item = Result<Vec<u8>, ScanError>;

    fn next(&mut self) -> Option<Self::Item> {
        let corrupt = |at: u64, reason: &str| ScanError::Corrupt {
            file: self.path.clone(),
            offset: at,
            reason: reason.to_owned(),
        };
        let mut header = [0u8; 8];
        let mut got = 0;
        while got < 8 {
            match self.file.read(&mut header[got..]) {
                Ok(0) if header[..got].iter().all(|&b| b == 0) => return None,
                Ok(0) => return Some(Err(corrupt(self.at, "less than a record header"))),
                Ok(n) => got += n,
                Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                Err(e) => return Some(Err(e.into())),
            }
        }
        let len = u32::from_le_bytes(header[..4].try_into().expect("4 bytes"));
        let crc = u32::from_le_bytes(header[4..].try_into().expect("4 bytes"));
        if len == 0 && crc == 0 {
            // The end of the records, if only zeros follow: the allocation of a segment that
            // could not be cut back when it was closed.
            let mut rest = [0u8; 64 * 1024];
            loop {
                match self.file.read(&mut rest) {
                    Ok(0) => return None,
                    Ok(n) if rest[..n].iter().all(|&b| b == 0) => {}
                    Ok(_) => return Some(Err(corrupt(self.at, "zeros, and records after them"))),
                    Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                    Err(e) => return Some(Err(e.into())),
                }
            }
        }
        if len == 0 || len > MAX_RECORD {
            return Some(Err(corrupt(self.at, "record length is not valid")));
        }
        let mut bytes = vec![0u8; len as usize];
        if self.file.read_exact(&mut bytes).is_err() {
            return Some(Err(corrupt(self.at, "record cut short")));
        }
        if crc32fast::hash(&bytes) != crc {
            return Some(Err(corrupt(self.at, "checksum mismatch")));
        }
        self.at += 8 + u64::from(len);
        Some(Ok(bytes))
    }
}

impl Drop for Log {
    /// Lets the writer finish what was appended (and fsync it), then joins it.
    fn drop(&mut self) {
        self.queue.close();
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

/// The segment file under the writer's buffer. After a failed write, what the buffer still
/// holds is swallowed rather than written (see `Writer::recover`), so it never reaches the file
/// and no second descriptor is needed to get rid of it.
struct SegmentFile {
    file: File,
    swallow: bool,
}

impl Write for SegmentFile {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        if self.swallow {
            return Ok(buf.len());
        }
        self.file.write(buf)
    }

    fn flush(&mut self) -> io::Result<()> {
        if self.swallow {
            return Ok(());
        }
        self.file.flush()
    }
}

/// The segment being appended to.
struct Segment {
    seq: u64,
    out: BufWriter<SegmentFile>,
    /// Length of the file up to its last whole record.
    good: u64,
}

impl Segment {
    /// Opens segment `seq` to append after its records, which end at `end` (0: a new segment,
    /// whose header is written first), with the file allocated ahead to `size` bytes.
    fn open(dir: &Path, seq: u64, end: u64, size: u64) -> io::Result<Segment> {
        let path = dir.join(segment_name(seq));
        // Not truncated: its records stay (a new one is cut to nothing just below).
        let mut file = OpenOptions::new()
            .create(true)
            .truncate(false)
            .read(true)
            .write(true)
            .open(&path)?;
        let good = if end == 0 {
            file.set_len(0)?;
            file.write_all(MAGIC)?;
            allocate(&file, MAGIC.len() as u64, size);
            file.sync_all()?;
            // The new file's name must survive a crash too.
            File::open(dir)?.sync_all()?;
            MAGIC.len() as u64
        } else {
            if allocate(&file, end, size) {
                file.sync_all()?;
            }
            end
        };
        file.seek(SeekFrom::Start(good))?;
        Ok(Segment {
            seq,
            out: BufWriter::with_capacity(
                256 * 1024,
                SegmentFile {
                    file,
                    swallow: false,
                },
            ),
            good,
        })
    }

    /// Cuts the file back to its records (a closed segment, or the last one when the log is
    /// dropped), so it holds no allocation it will not use.
    fn close(&mut self) -> io::Result<()> {
        self.out.flush()?;
        self.out.get_ref().file.set_len(self.good)
    }
}

/// Allocates `file` ahead to `size` bytes of zeros (its records end at `good`), so appending
/// does not grow it and an fsync has no new size to commit. Returns whether the length changed.
/// A file system that cannot (no space, or no support) leaves the file as it was: it grows as
/// it is written.
fn allocate(file: &File, good: u64, size: u64) -> bool {
    let Ok(len) = file.metadata().map(|m| m.len()) else {
        return false;
    };
    if len >= size {
        return false;
    }
    match rustix::fs::fallocate(file, rustix::fs::FallocateFlags::empty(), 0, size) {
        Ok(()) => true,
        Err(e) => {
            tracing::debug!(error = %e, "journal: cannot allocate the segment ahead; it grows as it is written");
            // Whatever a failed allocation may have added is given back.
            let _ = file.set_len(len.max(good));
            false
        }
    }
}

struct Writer {
    dir: PathBuf,
    segment: Segment,
    segment_bytes: u64,
    fsync: Fsync,
    stats: Arc<LogStats>,
    /// When the last fsync was done (or, after one failed with nothing else to write, tried).
    last_sync: Instant,
    /// Written since the last fsync.
    dirty: bool,
    /// After a failed rotation: not tried again before then.
    rotate_after: Option<Instant>,
    /// A failed write could not be cut back (the file no longer ends where the writer thinks),
    /// or an fsync failed after its records were acknowledged ([`Writer::sync`]): the writer
    /// stops rather than acknowledge anything more.
    broken: bool,
}

impl Writer {
    fn run(mut self, queue: &Queue) {
        /// Tells the queue when the writer stops for good, however it stops.
        struct Gone<'a>(&'a Queue, Arc<LogStats>);
        impl Drop for Gone<'_> {
            fn drop(&mut self) {
                self.0.writer_gone(&self.1.backlog);
            }
        }
        let _gone = Gone(queue, self.stats.clone());
        loop {
            // Written records not yet fsynced are fsynced by the next batch, or after a while:
            // [`SYNC_RETRY`] with `Always` (after an fsync that failed), the interval with
            // `Interval`.
            let sync_by = match self.fsync {
                Fsync::Always if self.dirty => Instant::now().checked_add(SYNC_RETRY),
                Fsync::Interval(every) if self.dirty => self.last_sync.checked_add(every),
                _ => None,
            };
            let Some(appends) = queue.take(sync_by) else {
                break;
            };
            if appends.is_empty() {
                if !self.dirty {
                    continue; // hurried, with nothing left to take
                }
                if let Err(e) = self.sync() {
                    self.stats.failures.fetch_add(1, Relaxed);
                    if self.broken {
                        break;
                    }
                    // `Always` (the other modes broke): tried again after SYNC_RETRY.
                    tracing::error!(error = %e, "journal: fsync failed; it is tried again");
                }
                continue;
            }
            // One write and one fsync per batch of at most MAX_BATCH_BYTES.
            let mut appends = appends.into_iter().peekable();
            while !self.broken && appends.peek().is_some() {
                let (mut batch, mut bytes) = (Vec::new(), 0);
                while let Some(a) = appends.next_if(|_| bytes < MAX_BATCH_BYTES) {
                    bytes += a.bytes.len();
                    batch.push(a);
                }
                let result = self.write(&batch).map_err(Arc::new);
                self.stats.backlog.fetch_sub(bytes as u64, Relaxed);
                for a in batch {
                    if let Some(ack) = a.ack {
                        let _ = ack.send(result.clone());
                    }
                }
                if self.broken {
                    break;
                }
                // After the acks: the records are written (and fsynced as the mode promises),
                // so a failure here is the writer's own to retry, not theirs.
                self.housekeeping();
            }
            if self.broken {
                // Everything still waiting, and every later append, is refused (`Gone`), these
                // taken and not written too (their acks dropped with them).
                let left: Vec<Append> = appends.collect();
                self.stats.backlog.fetch_sub(unwritten(&left), Relaxed);
                break;
            }
        }
        if self.broken {
            // What the failed write left buffered is thrown away, not flushed, and the segment
            // is cut back to its records if it can be now. If it cannot, the next start reads
            // what follows them: a torn tail or corruption, or, when the failure was the fsync
            // of records already written whole, those records, whose messages were refused and
            // then run after the restart.
            let good = self.segment.good;
            let (out, _unwritten) = self.segment.out.into_parts();
            if out.file.set_len(good).is_ok() {
                let _ = out.file.sync_data();
            }
            return;
        }
        if self.dirty {
            let _ = self.sync();
        }
        if let Err(e) = self.segment.close() {
            tracing::warn!(error = %e, "journal: cannot cut the last segment back to its records");
        }
    }

    /// Writes a batch (and fsyncs it, as the mode says). On failure the segment is cut back to
    /// its last whole record.
    fn write(&mut self, batch: &[Append]) -> io::Result<()> {
        let attempt = (|| {
            let mut added = 0u64;
            let mut barrier = false;
            for a in batch {
                if a.bytes.is_empty() {
                    barrier = true;
                    continue;
                }
                let len = u32::try_from(a.bytes.len())
                    .ok()
                    .filter(|&l| l > 0 && l <= MAX_RECORD)
                    .ok_or_else(|| {
                        io::Error::new(io::ErrorKind::InvalidInput, "record empty or too long")
                    })?;
                self.segment.out.write_all(&len.to_le_bytes())?;
                self.segment
                    .out
                    .write_all(&crc32fast::hash(&a.bytes).to_le_bytes())?;
                self.segment.out.write_all(&a.bytes)?;
                added += 8 + u64::from(len);
            }
            #[cfg(test)]
            if self.stats.fail_write.swap(false, Relaxed) {
                return Err(io::Error::other("a write failure made by a test"));
            }
            self.segment.out.flush()?;
            self.dirty |= added > 0;
            if (self.fsync == Fsync::Always || barrier) && self.dirty {
                self.sync()?;
            }
            Ok(added)
        })();
        match attempt {
            Ok(added) => {
                self.segment.good += added;
                self.stats.disk_bytes.fetch_add(added, Relaxed);
                let records = batch.iter().filter(|a| !a.bytes.is_empty()).count();
                self.stats.records.fetch_add(records as u64, Relaxed);
                self.stats.batches.fetch_add(1, Relaxed);
                Ok(())
            }
            Err(e) => {
                self.stats.failures.fetch_add(1, Relaxed);
                tracing::error!(error = %e, records = batch.len(), "journal: write failed; the records were not accepted");
                if !self.recover() {
                    self.broken = true;
                }
                Err(e)
            }
        }
    }

    /// The interval fsync when it is due, and the next segment once this one is full. A
    /// failure is counted; a failed fsync stops the writer (see [`Writer::sync`]), a failed
    /// rotation is logged and tried again after [`ROTATE_RETRY`].
    fn housekeeping(&mut self) {
        if let Fsync::Interval(every) = self.fsync {
            if self.dirty && self.last_sync.elapsed() >= every && self.sync().is_err() {
                self.stats.failures.fetch_add(1, Relaxed);
                return;
            }
        }
        let due = self.rotate_after.is_none_or(|t| Instant::now() >= t);
        if self.segment.good >= self.segment_bytes && due {
            match self.rotate() {
                Ok(()) => self.rotate_after = None,
                Err(_) if self.broken => {
                    // Its fsync failed and stopped the writer (logged there).
                    self.stats.failures.fetch_add(1, Relaxed);
                }
                Err(e) => {
                    self.stats.failures.fetch_add(1, Relaxed);
                    self.rotate_after = Some(Instant::now() + ROTATE_RETRY);
                    tracing::error!(error = %e, "journal: cannot begin the next segment; writing on in this one, and trying again in a second");
                }
            }
        }
    }

    /// fsyncs the segment. With [`Fsync::Interval`] or [`Fsync::Never`], records written
    /// before were acknowledged already, and a failed fsync may have lost them for good: Linux
    /// marks the pages it could not write clean, so a second fsync would report success over
    /// them. The writer then stops, as PostgreSQL does after a failed fsync: every later record
    /// is refused (and `/readyz` fails) until a restart reads back what the disk really holds.
    /// With [`Fsync::Always`] nothing unsynced was acknowledged: the caller refuses the batch.
    fn sync(&mut self) -> io::Result<()> {
        let synced = self.segment.out.get_ref().file.sync_data();
        #[cfg(test)]
        let synced = match self.stats.fail_sync.swap(false, Relaxed) {
            true => Err(io::Error::other("an fsync failure made by a test")),
            false => synced,
        };
        if let Err(e) = synced {
            if self.fsync != Fsync::Always {
                self.broken = true;
                tracing::error!(error = %e, "journal: fsync failed after its records were acknowledged, and may have lost them; the journal stops and every later record is refused until the server is restarted");
            }
            return Err(e);
        }
        self.stats.fsyncs.fetch_add(1, Relaxed);
        self.last_sync = Instant::now();
        self.dirty = false;
        Ok(())
    }

    /// After a failed write: drops whatever of it is buffered or on disk, so the segment ends
    /// with its last whole record again. False if it could not.
    fn recover(&mut self) -> bool {
        let good = self.segment.good;
        #[cfg(test)]
        if self.stats.fail_cut.load(Relaxed) {
            tracing::error!("journal: cannot cut the segment back (a failure made by a test); the journal stops");
            return false;
        }
        // What the buffer still holds is swallowed, not written; then the file is cut back and
        // its position set through the descriptor already open (the folder may be gone, or no
        // descriptor left for another).
        let out = &mut self.segment.out;
        out.get_mut().swallow = true;
        let _ = out.flush();
        out.get_mut().swallow = false;
        let file = &out.get_ref().file;
        let cut = file.set_len(good).and_then(|()| {
            allocate(file, good, self.segment_bytes);
            (&*file).seek(SeekFrom::Start(good)).map(|_| ())
        });
        match cut {
            Ok(()) => true,
            Err(e) => {
                let file = self.dir.join(segment_name(self.segment.seq));
                tracing::error!(error = %e, file = %file.display(), "journal: cannot cut the segment back after a failed write; the journal stops, and every later record is refused");
                false
            }
        }
    }

    fn rotate(&mut self) -> io::Result<()> {
        self.sync()?;
        let seq = self.segment.seq + 1;
        let next = Segment::open(&self.dir, seq, 0, self.segment_bytes).inspect_err(|_| {
            // Not left behind half begun: as the last segment it would make the one written
            // on meanwhile an earlier one, where a torn tail is corruption.
            let _ = fs::remove_file(self.dir.join(segment_name(seq)));
        })?;
        let mut closed = std::mem::replace(&mut self.segment, next);
        if let Err(e) = closed.close() {
            // Its records are whole and fsynced; the zeros after them are read as their end.
            tracing::warn!(error = %e, "journal: cannot cut a closed segment back to its records");
        }
        self.stats.disk_bytes.fetch_add(MAGIC.len() as u64, Relaxed);
        self.stats.segment.store(self.segment.seq, Relaxed);
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn block_on(ack: Ack) -> Result<Result<(), Arc<io::Error>>, oneshot::error::RecvError> {
        ack.blocking_recv()
    }

    #[test]
    fn records_come_back_in_order_after_a_reopen() {
        let dir = tempfile::tempdir().unwrap();
        {
            let (log, scan) = Log::open(dir.path(), Fsync::Always).unwrap();
            assert!(scan.records.is_empty());
            let acks: Vec<Ack> = (0..100)
                .map(|i| log.append(format!("record {i}").into_bytes()))
                .collect();
            for a in acks {
                block_on(a).unwrap().unwrap();
            }
            let s = log.stats();
            assert_eq!(s.records.load(Relaxed), 100);
            assert!(s.fsyncs.load(Relaxed) >= 1);
            assert!(s.fsyncs.load(Relaxed) <= 100, "group commit shares fsyncs");
        }
        let (log, scan) = Log::open(dir.path(), Fsync::Never).unwrap();
        assert_eq!(scan.records.len(), 100);
        assert_eq!(scan.records[7], b"record 7");
        assert!(scan.torn.is_none());
        block_on(log.append(b"one more".to_vec())).unwrap().unwrap();
        drop(log);
        assert_eq!(scan_dir(dir.path()).records.last().unwrap(), b"one more");
    }

    fn scan_dir(dir: &Path) -> Scan {
        scan(dir).unwrap()
    }

    fn only_segment(dir: &Path) -> PathBuf {
        segments(dir).unwrap().pop().unwrap().1
    }

    #[test]
    fn a_torn_tail_is_dropped_and_writing_goes_on() {
        let dir = tempfile::tempdir().unwrap();
        {
            let (log, _) = Log::open(dir.path(), Fsync::Always).unwrap();
            for i in 0..3 {
                block_on(log.append(vec![i + 1; 100])).unwrap().unwrap();
            }
        }
        let seg = only_segment(dir.path());
        let whole = fs::metadata(&seg).unwrap().len();
        // Half of a fourth record, as a crash in the middle of its write would leave.
        let mut f = OpenOptions::new().append(true).open(&seg).unwrap();
        f.write_all(&100u32.to_le_bytes()).unwrap();
        f.write_all(&[0xAB; 30]).unwrap();
        drop(f);
        let found = scan_dir(dir.path());
        assert_eq!(found.records.len(), 3);
        assert_eq!(
            found.torn,
            Some(Torn {
                file: seg.clone(),
                offset: whole,
                bytes: 34
            })
        );
        let (log, scan) = Log::open(dir.path(), Fsync::Always).unwrap();
        assert_eq!(scan.records.len(), 3);
        block_on(log.append(vec![9; 10])).unwrap().unwrap();
        drop(log);
        assert_eq!(
            fs::metadata(&seg).unwrap().len(),
            whole + 8 + 10,
            "cut back"
        );
        let after = scan_dir(dir.path());
        assert_eq!(after.records.len(), 4);
        assert!(after.torn.is_none());
    }

    /// A log in `dir/live` (1 MiB segments) with `n` records of 100 bytes (1s, 2s, ...), and
    /// in `dir/crashed` a copy of its segment as a `kill -9` leaves it (the log is still open):
    /// its records, then the zeros it was allocated ahead with. Returns the log, the crashed
    /// folder, the copy and its bytes.
    fn after_a_crash(dir: &Path, n: u8) -> (Log, PathBuf, PathBuf, Vec<u8>) {
        let (log, _) = Log::open_with(&dir.join("live"), Fsync::Always, 1 << 20).unwrap();
        for i in 0..n {
            block_on(log.append(vec![i + 1; 100])).unwrap().unwrap();
        }
        let crashed = dir.join("crashed");
        fs::create_dir(&crashed).unwrap();
        let seg = only_segment(log.dir());
        let data = fs::read(&seg).unwrap();
        let copy = crashed.join(seg.file_name().unwrap());
        fs::write(&copy, &data).unwrap();
        (log, crashed, copy, data)
    }

    #[test]
    fn a_record_over_the_limit_is_refused_alone_and_its_batch_is_written() {
        let dir = tempfile::tempdir().unwrap();
        let (log, _) = Log::open(dir.path(), Fsync::Always).unwrap();
        let too_long = || vec![b'x'; MAX_RECORD as usize + 1];
        let before = log.append_lazy(b"before".to_vec());
        log.append_detached(too_long());
        let refused = log.append(too_long());
        let after = log.append(b"after".to_vec());
        let error = block_on(refused).unwrap().unwrap_err();
        assert_eq!(error.kind(), io::ErrorKind::InvalidInput);
        assert!(
            error.to_string().contains("over the journal's limit"),
            "{error}"
        );
        block_on(before).unwrap().unwrap();
        block_on(after).unwrap().unwrap();
        assert_eq!(log.stats().failures.load(Relaxed), 0);
        drop(log);
        assert_eq!(
            scan_dir(dir.path()).records,
            [b"before".to_vec(), b"after".to_vec()]
        );
    }

    #[test]
    fn records_in_no_hurry_are_committed_with_the_next_hurried_one_or_on_their_own() {
        let dir = tempfile::tempdir().unwrap();
        let (log, _) = Log::open(dir.path(), Fsync::Always).unwrap();
        // On their own: fsynced, and acknowledged, within `LAZY` (waited for with a deadline).
        let mut alone = log.append_lazy(b"alone".to_vec());
        let began = Instant::now();
        let acked = loop {
            match alone.try_recv() {
                Ok(r) => break r,
                Err(oneshot::error::TryRecvError::Empty) => {
                    assert!(
                        began.elapsed() < Duration::from_secs(10),
                        "never acknowledged"
                    );
                    std::thread::sleep(Duration::from_millis(1));
                }
                Err(e) => panic!("{e}"),
            }
        };
        acked.unwrap();
        assert_eq!(log.stats().fsyncs.load(Relaxed), 1);
        // With a hurried one: a sync takes every record appended before it.
        let lazy: Vec<Ack> = (0..100)
            .map(|i| log.append_lazy(format!("lazy {i}").into_bytes()))
            .collect();
        log.append_detached(b"detached".to_vec());
        block_on(log.sync()).unwrap().unwrap();
        for mut ack in lazy {
            assert!(
                matches!(ack.try_recv(), Ok(Ok(()))),
                "acknowledged by the sync"
            );
        }
        drop(log);
        let found = scan_dir(dir.path());
        assert_eq!(found.records.len(), 102);
        assert_eq!(found.records[101], b"detached");
    }

    #[test]
    fn the_open_segment_is_allocated_ahead_and_its_zeros_end_the_records() {
        let dir = tempfile::tempdir().unwrap();
        let (log, crashed, copy, data) = after_a_crash(dir.path(), 3);
        let records = 8 + 3 * (8 + 100);
        assert_eq!(log.stats().disk_bytes.load(Relaxed), records as u64);
        assert_eq!(data.len(), 1 << 20, "allocated ahead");
        assert!(data[records..].iter().all(|&b| b == 0));
        // After a crash: every record, nothing torn, and the next one goes after them.
        let found = scan_dir(&crashed);
        assert_eq!(found.records.len(), 3);
        assert_eq!((found.torn, found.ends), (None, vec![records as u64]));
        let (again, _) = Log::open_with(&crashed, Fsync::Always, 1 << 20).unwrap();
        assert_eq!(again.stats().disk_bytes.load(Relaxed), records as u64);
        block_on(again.append(vec![4; 10])).unwrap().unwrap();
        drop(again);
        assert_eq!(scan_dir(&crashed).records.last().unwrap(), &vec![4; 10]);
        // Dropped cleanly, a segment holds its records only.
        assert_eq!(fs::metadata(&copy).unwrap().len(), records as u64 + 8 + 10);
        drop(log);
    }

    #[test]
    fn a_write_torn_inside_the_allocation_is_dropped() {
        let dir = tempfile::tempdir().unwrap();
        let (log, crashed, copy, clean) = after_a_crash(dir.path(), 3);
        let records = 8 + 3 * (8 + 100);
        // Each way a crash can leave the write of a fourth record (100 bytes of 5s), followed
        // by the allocation's zeros: (the offset after the records and the bytes that reached
        // the disk, the torn bytes reported).
        let header = |len: u32| [len.to_le_bytes(), crc32fast::hash(&[5; 100]).to_le_bytes()];
        let cases: Vec<(usize, Vec<u8>, u64)> = vec![
            // Its header and half its bytes.
            (0, [header(100).concat(), vec![5; 50]].concat(), 58),
            // Its header only.
            (0, header(100).concat(), 8),
            // Only a later 512-byte block of the write: the one it begins in never got there.
            (512 - records, vec![5; 48], 512 - records as u64 + 48),
        ];
        for (at, written, bytes) in cases {
            let mut data = clean.clone();
            data[records + at..records + at + written.len()].copy_from_slice(&written);
            fs::write(&copy, &data).unwrap();
            let found = scan_dir(&crashed);
            assert_eq!(found.records.len(), 3, "{at} {written:?}");
            let torn = Torn {
                file: copy.clone(),
                offset: records as u64,
                bytes,
            };
            assert_eq!(found.torn, Some(torn), "{at} {written:?}");
            let (again, scan) = Log::open_with(&crashed, Fsync::Always, 1 << 20).unwrap();
            assert_eq!(scan.ends, vec![records as u64]);
            block_on(again.append(vec![9; 10])).unwrap().unwrap();
            drop(again);
            let after = scan_dir(&crashed);
            assert_eq!(after.records.len(), 4, "{at} {written:?}");
            assert_eq!(after.records[3], vec![9; 10]);
            assert!(after.torn.is_none());
        }
        drop(log);
    }

    #[test]
    fn a_closed_segment_is_cut_back_and_its_zeros_read_as_its_end() {
        let dir = tempfile::tempdir().unwrap();
        let (log, _) = Log::open_with(dir.path(), Fsync::Always, 4096).unwrap();
        // Five records fill the first segment; three stay in the second (after the fifth's
        // ack the writer closes the first, so its file is read only once the sixth is acked).
        for i in 0..8u8 {
            block_on(log.append(vec![i + 1; 1000])).unwrap().unwrap();
        }
        let closed = log.closed_segments().unwrap();
        assert!(!closed.is_empty());
        for path in &closed {
            let len = fs::metadata(path).unwrap().len();
            assert_eq!(
                (len - 8) % 1008,
                0,
                "{} holds whole records only",
                path.display()
            );
        }
        let open = segments(dir.path()).unwrap().pop().unwrap().1;
        assert_eq!(fs::metadata(&open).unwrap().len(), 4096, "allocated ahead");
        // A crash between closing a segment and cutting it back leaves its zeros.
        let first = &closed[0];
        let records = fs::read(first).unwrap();
        let mut zeros = records.clone();
        zeros.resize(records.len() + 3000, 0);
        fs::write(first, &zeros).unwrap();
        let read: Vec<_> = read_segment(first).unwrap().map(Result::unwrap).collect();
        assert_eq!(read.len(), (records.len() - 8) / 1008);
        drop(log);
        assert_eq!(scan_dir(dir.path()).records.len(), 8);
        // Opening cuts it back.
        drop(Log::open_with(dir.path(), Fsync::Always, 4096).unwrap());
        assert_eq!(fs::read(first).unwrap(), records);
        // Zeros and then something else are corruption in a closed segment.
        zeros[records.len() + 1000] = 1;
        fs::write(first, &zeros).unwrap();
        assert!(matches!(scan(dir.path()), Err(ScanError::Corrupt { .. })));
        let read: Vec<_> = read_segment(first).unwrap().collect();
        assert!(matches!(read.last(), Some(Err(ScanError::Corrupt { .. }))));
    }

    #[test]
    fn a_block_of_a_write_kept_from_the_disk_makes_a_torn_tail_a_flipped_bit_does_not() {
        let dir = tempfile::tempdir().unwrap();
        let (log, crashed, copy, clean) = after_a_crash(dir.path(), 1);
        let records = 8 + 8 + 100;
        drop(log);
        // A write of three records of 600 bytes that the crash cut: its second 512-byte block
        // never reached the disk, the blocks after it did.
        let record = |b: u8| {
            let bytes = vec![b; 600];
            [
                600u32.to_le_bytes().to_vec(),
                crc32fast::hash(&bytes).to_le_bytes().to_vec(),
                bytes,
            ]
            .concat()
        };
        let write = [record(2), record(3), record(4)].concat();
        let mut data = clean.clone();
        data[records..records + write.len()].copy_from_slice(&write);
        data[512..1024].fill(0);
        fs::write(&copy, &data).unwrap();
        let found = scan_dir(&crashed);
        assert_eq!(found.records, vec![vec![1; 100]]);
        let torn = Torn {
            file: copy.clone(),
            offset: records as u64,
            bytes: write.len() as u64,
        };
        assert_eq!(found.torn, Some(torn));
        // The same write whole but for one flipped bit: corruption, not a crash.
        let mut data = clean.clone();
        data[records..records + write.len()].copy_from_slice(&write);
        data[records + 700] ^= 0x10;
        fs::write(&copy, &data).unwrap();
        match scan(&crashed) {
            Err(ScanError::Corrupt { offset, reason, .. }) => {
                assert_eq!(
                    (offset, reason.as_str()),
                    (records as u64 + 608, "checksum mismatch")
                );
            }
            other => panic!("{other:?}"),
        }
    }

    #[test]
    fn corruption_in_the_middle_names_the_file_and_offset() {
        let dir = tempfile::tempdir().unwrap();
        {
            let (log, _) = Log::open(dir.path(), Fsync::Always).unwrap();
            for i in 0..3 {
                block_on(log.append(vec![i + 1; 100])).unwrap().unwrap();
            }
        }
        let seg = only_segment(dir.path());
        let mut data = fs::read(&seg).unwrap();
        let second = 8 + (8 + 100); // header, first record
        data[second + 8 + 50] ^= 0xFF; // a bit flip inside the second record's bytes
        fs::write(&seg, &data).unwrap();
        match scan(dir.path()) {
            Err(ScanError::Corrupt {
                file,
                offset,
                reason,
            }) => {
                assert_eq!((file, offset), (seg.clone(), second as u64));
                assert_eq!(reason, "checksum mismatch");
            }
            other => panic!("{other:?}"),
        }
        assert!(
            Log::open(dir.path(), Fsync::Always).is_err(),
            "nothing is opened"
        );
        let text = scan(dir.path()).unwrap_err().to_string();
        assert!(text.contains(&format!("at offset {second}")), "{text}");
    }

    #[test]
    fn a_failed_write_leaves_whole_records_only_and_writing_goes_on() {
        let dir = tempfile::tempdir().unwrap();
        let (log, _) = Log::open(dir.path(), Fsync::Always).unwrap();
        block_on(log.append(b"first".to_vec())).unwrap().unwrap();
        // The next batch's write fails once its records are buffered: its records are refused
        // (the second, and the third if it came in time to share the batch).
        log.stats().fail_write.store(true, Relaxed);
        let acks: Vec<(&[u8], Ack)> = [&b"second"[..], b"third"]
            .into_iter()
            .map(|r| (r, log.append(r.to_vec())))
            .collect();
        let written: Vec<&[u8]> = acks
            .into_iter()
            .filter_map(|(r, ack)| block_on(ack).unwrap().is_ok().then_some(r))
            .collect();
        assert!(!written.contains(&&b"second"[..]), "the failed batch");
        block_on(log.append(b"fourth".to_vec())).unwrap().unwrap();
        assert_eq!(log.stats().failures.load(Relaxed), 1);
        assert!(!log.is_stopped());
        drop(log);
        let found = scan_dir(dir.path());
        assert!(found.torn.is_none());
        let mut want: Vec<&[u8]> = vec![b"first"];
        want.extend(written);
        want.push(b"fourth");
        assert_eq!(
            found.records, want,
            "a record is on disk exactly when it was acknowledged"
        );
    }

    #[test]
    fn a_failed_write_that_cannot_be_cut_back_stops_the_writer() {
        let dir = tempfile::tempdir().unwrap();
        let (log, _) = Log::open(dir.path(), Fsync::Always).unwrap();
        block_on(log.append(b"first".to_vec())).unwrap().unwrap();
        log.stats().fail_cut.store(true, Relaxed);
        log.stats().fail_write.store(true, Relaxed);
        assert!(block_on(log.append(b"refused".to_vec())).unwrap().is_err());
        // Nothing is written after it: every later append is refused (its ack dropped).
        assert!(block_on(log.append(b"later".to_vec())).is_err());
        assert!(log.is_stopped());
        // Nothing dropped still counts as waiting to be written.
        assert_eq!(log.stats().backlog.load(Relaxed), 0);
        drop(log);
        let found = scan_dir(dir.path());
        assert_eq!(found.records, [b"first".to_vec()]);
        assert!(found.torn.is_none());
    }

    #[test]
    fn a_failed_fsync_stops_the_writer_only_when_it_had_acknowledged_its_records() {
        // With `Always`, the failed fsync's batch is refused and writing goes on.
        let dir = tempfile::tempdir().unwrap();
        let (log, _) = Log::open(dir.path(), Fsync::Always).unwrap();
        block_on(log.append(b"first".to_vec())).unwrap().unwrap();
        log.stats().fail_sync.store(true, Relaxed);
        assert!(block_on(log.append(b"refused".to_vec())).unwrap().is_err());
        block_on(log.append(b"third".to_vec())).unwrap().unwrap();
        assert!(!log.is_stopped());
        drop(log);
        assert_eq!(
            scan_dir(dir.path()).records,
            [b"first".to_vec(), b"third".to_vec()]
        );

        // With `Interval`, a record is acknowledged once written: after its fsync fails, no
        // later fsync can be trusted to cover it, so the writer stops.
        let dir = tempfile::tempdir().unwrap();
        let (log, _) = Log::open(dir.path(), Fsync::Interval(Duration::from_millis(1))).unwrap();
        log.stats().fail_sync.store(true, Relaxed);
        block_on(log.append(b"first".to_vec())).unwrap().unwrap();
        let deadline = Instant::now() + Duration::from_secs(30);
        while !log.is_stopped() {
            assert!(Instant::now() < deadline, "the writer did not stop");
            std::thread::sleep(Duration::from_millis(1));
        }
        assert!(block_on(log.append(b"later".to_vec())).is_err());
        assert_eq!(log.stats().failures.load(Relaxed), 1);
        drop(log);
        let found = scan_dir(dir.path());
        assert_eq!(found.records, [b"first".to_vec()]);
        assert!(found.torn.is_none());
    }

    #[test]
    fn a_segment_that_cannot_be_begun_is_tried_again_a_second_later_not_per_batch() {
        let dir = tempfile::tempdir().unwrap();
        let journal = dir.path().join("journal");
        // A few records fill a segment (at least 4 KiB), so nearly every batch ends full.
        let (log, _) = Log::open_with(&journal, Fsync::Always, 4096).unwrap();
        // The folder goes away: the writer writes on in the open (unlinked) segment, and the
        // next one cannot be created.
        fs::remove_dir_all(&journal).unwrap();
        let began = Instant::now();
        for i in 0..100u8 {
            block_on(log.append(vec![i + 1; 1000])).unwrap().unwrap();
        }
        let failures = log.stats().failures.load(Relaxed);
        let allowed = 1 + began.elapsed().as_secs();
        assert!(
            (1..=allowed).contains(&failures),
            "{failures} failed rotations in {:?} over 100 batches, most of them full",
            began.elapsed()
        );
        assert_eq!(
            log.stats().records.load(Relaxed),
            100,
            "every record was written"
        );
    }

    #[test]
    fn a_file_that_is_not_a_journal_is_refused() {
        let dir = tempfile::tempdir().unwrap();
        fs::write(dir.path().join(segment_name(1)), b"hello, world").unwrap();
        assert!(matches!(
            scan(dir.path()),
            Err(ScanError::Corrupt { offset: 0, .. })
        ));
        // Shorter than a header, and not the beginning of one.
        fs::write(dir.path().join(segment_name(1)), b"MRJX").unwrap();
        assert!(matches!(
            scan(dir.path()),
            Err(ScanError::Corrupt { offset: 0, .. })
        ));
    }
}
