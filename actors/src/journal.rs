//! The journal's log: records appended to segment files on disk, each with a checksum, written
//! by one thread that shares each fsync among every record waiting for it (group commit).
//!
//! A segment is `NNNNNNNNNNNNNNNN.log` (its sequence number) in the journal's folder: an 8-byte
//! header (`MRJRNL01`), then records, each `length (u32 LE) · crc32 of the bytes (u32 LE) ·
//! bytes`. Records are opaque bytes here; what they mean is the store's business.
//!
//! Failure: [`scan`] reads every segment in order. A record cut short at the very end of the
//! last segment — a crash in the middle of a write — is a *torn tail*: reported (file, offset,
//! bytes) and dropped by [`Log::open`], which truncates the file there and goes on. Anything
//! else that does not check out (a bad checksum with records after it, a short record in an
//! earlier segment, a bad header) is corruption: [`ScanError::Corrupt`] names the file and
//! offset, and nothing is opened. A write or fsync that fails is reported to every record of
//! its batch and the segment is cut back to its last good length, so a later write that
//! succeeds follows whole records only.

use std::fs::{self, File, OpenOptions};
use std::io::{self, BufWriter, Read, Seek, SeekFrom, Write};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering::Relaxed};
use std::sync::{mpsc, Arc};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use tokio::sync::oneshot;

/// The first bytes of every segment.
const MAGIC: &[u8; 8] = b"MRJRNL01";
/// Longest record accepted (a message is at most a megabyte or so; this leaves room).
pub const MAX_RECORD: u32 = 64 * 1024 * 1024;
/// By default a segment is closed and the next begun once it holds this many bytes.
pub const SEGMENT_BYTES: u64 = 64 * 1024 * 1024;
/// With [`Fsync::Always`], how long the writer waits idle before it fsyncs records that nobody
/// waited for.
const IDLE_SYNC: Duration = Duration::from_millis(20);
/// After the next segment could not be begun, how long the writer writes on in the full one
/// before it tries again (so a folder that is gone or a full disk costs one error a second, not
/// one per batch).
const ROTATE_RETRY: Duration = Duration::from_secs(1);
/// Most bytes written between two fsyncs of one batch.
const MAX_BATCH_BYTES: usize = 8 * 1024 * 1024;

/// When appended records reach the disk.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Fsync {
    /// Each record is acknowledged after an fsync that covers it (records waiting at the same
    /// time share one). Records appended without a waiter ([`Log::append_detached`], or whose
    /// [`Ack`] was dropped) ride the next fsync, or one after 20 ms idle.
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
    /// Bytes from there to the end of the file.
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

/// Reads every record of the journal in `dir` (which must exist), checking each checksum.
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
        if data.len() < MAGIC.len() {
            // A segment begun just before a crash may not even have its header yet.
            if is_last && MAGIC.starts_with(&data) {
                scan.torn = Some(Torn {
                    file: path.clone(),
                    offset: 0,
                    bytes: data.len() as u64,
                });
                scan.segments.push(path.clone());
                continue;
            }
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
            let torn_here = || Torn {
                file: path.clone(),
                offset: at as u64,
                bytes: rest as u64,
            };
            if rest < 8 {
                if is_last {
                    scan.torn = Some(torn_here());
                    break;
                }
                return Err(corrupt(
                    at,
                    format!("{rest} bytes, less than a record header"),
                ));
            }
            let len = u32::from_le_bytes(data[at..at + 4].try_into().expect("4 bytes"));
            let crc = u32::from_le_bytes(data[at + 4..at + 8].try_into().expect("4 bytes"));
            let end = at + 8 + len as usize;
            if len == 0 || len > MAX_RECORD {
                if is_last && data[at..].iter().all(|&b| b == 0) {
                    scan.torn = Some(torn_here()); // zeros where a record was being written
                    break;
                }
                return Err(corrupt(at, format!("record length {len} is not valid")));
            }
            if end > data.len() {
                if is_last {
                    scan.torn = Some(torn_here());
                    break;
                }
                return Err(corrupt(at, format!("record of {len} bytes cut short")));
            }
            let bytes = &data[at + 8..end];
            if crc32fast::hash(bytes) != crc {
                if is_last && end == data.len() {
                    scan.torn = Some(torn_here()); // the last write did not finish
                    break;
                }
                return Err(corrupt(at, "checksum mismatch".into()));
            }
            scan.records.push(bytes.to_vec());
            scan.positions.push((scan.segments.len() - 1, at as u64));
            scan.bytes += 8 + u64::from(len);
            at = end;
        }
    }
    Ok(scan)
}

/// Counts of what the writer has done, for metrics and benchmarks.
#[derive(Debug, Default)]
pub struct LogStats {
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
    /// Bytes of the segment files (kept up to date by the writer and by compaction, so reading
    /// it touches no file).
    pub disk_bytes: AtomicU64,
}

/// The answer to an append: `Ok` once the record is as durable as the [`Fsync`] mode promises.
pub type Ack = oneshot::Receiver<Result<(), Arc<io::Error>>>;

struct Append {
    bytes: Vec<u8>,
    ack: Option<oneshot::Sender<Result<(), Arc<io::Error>>>>,
}

/// An open journal: appends go to a writer thread.
pub struct Log {
    dir: PathBuf,
    tx: Option<mpsc::Sender<Append>>,
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
        let seq = segments(dir)?.last().map_or(1, |(seq, _)| *seq);
        let segment = Segment::open(dir, seq)?;
        let stats = Arc::new(LogStats::default());
        stats.segment.store(seq, Relaxed);
        let mut on_disk = 0;
        for (_, path) in segments(dir)? {
            on_disk += fs::metadata(&path)?.len();
        }
        stats.disk_bytes.store(on_disk, Relaxed);
        let (tx, rx) = mpsc::channel();
        let writer = Writer {
            dir: dir.to_owned(),
            segment,
            segment_bytes: segment_bytes.max(4096),
            fsync,
            stats: stats.clone(),
            last_sync: Instant::now(),
            rotate_after: None,
            dirty: false,
        };
        let thread = std::thread::Builder::new()
            .name("mailroom-journal".into())
            .spawn(move || writer.run(rx))?;
        Ok((
            Log {
                dir: dir.to_owned(),
                tx: Some(tx),
                thread: Some(thread),
                stats,
            },
            scan,
        ))
    }

    /// Appends a record; the returned [`Ack`] resolves when it is durable (see [`Fsync`]), or
    /// with the error that kept it from being written.
    pub fn append(&self, bytes: Vec<u8>) -> Ack {
        let (tx, rx) = oneshot::channel();
        if bytes.is_empty() {
            let e = io::Error::new(io::ErrorKind::InvalidInput, "an empty record");
            let _ = tx.send(Err(Arc::new(e)));
            return rx;
        }
        self.send(Append {
            bytes,
            ack: Some(tx),
        });
        rx
    }

    /// Resolves once every record appended before it is on disk (an fsync, whatever the mode).
    pub fn sync(&self) -> Ack {
        let (tx, rx) = oneshot::channel();
        // An empty append is a barrier: nothing is written, and its batch is fsynced.
        self.send(Append {
            bytes: Vec::new(),
            ack: Some(tx),
        });
        rx
    }

    /// Appends a record nobody waits for.
    pub fn append_detached(&self, bytes: Vec<u8>) {
        if bytes.is_empty() {
            return; // an empty record would be a barrier
        }
        self.send(Append { bytes, ack: None });
    }

    fn send(&self, append: Append) {
        self.stats
            .backlog
            .fetch_add(append.bytes.len() as u64, Relaxed);
        if let Some(tx) = &self.tx {
            // The writer only stops when the log is dropped; a failed send drops the ack,
            // which the waiter sees as an error.
            let _ = tx.send(append);
        }
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
        self.stats.disk_bytes.fetch_sub(len, Relaxed);
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
                Ok(0) if got == 0 => return None,
                Ok(0) => return Some(Err(corrupt(self.at, "less than a record header"))),
                Ok(n) => got += n,
                Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                Err(e) => return Some(Err(e.into())),
            }
        }
        let len = u32::from_le_bytes(header[..4].try_into().expect("4 bytes"));
        let crc = u32::from_le_bytes(header[4..].try_into().expect("4 bytes"));
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
        self.tx.take();
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

/// The segment being appended to.
struct Segment {
    seq: u64,
    out: BufWriter<File>,
    /// Length of the file up to its last whole record.
    good: u64,
}

impl Segment {
    fn open(dir: &Path, seq: u64) -> io::Result<Segment> {
        let path = dir.join(segment_name(seq));
        let mut file = OpenOptions::new()
            .create(true)
            .read(true)
            .append(true)
            .open(&path)?;
        let mut good = file.seek(SeekFrom::End(0))?;
        if good == 0 {
            file.write_all(MAGIC)?;
            file.sync_all()?;
            // The new file's name must survive a crash too.
            File::open(dir)?.sync_all()?;
            good = MAGIC.len() as u64;
        }
        Ok(Segment {
            seq,
            out: BufWriter::with_capacity(256 * 1024, file),
            good,
        })
    }
}

struct Writer {
    dir: PathBuf,
    segment: Segment,
    segment_bytes: u64,
    fsync: Fsync,
    stats: Arc<LogStats>,
    last_sync: Instant,
    /// Written since the last fsync.
    dirty: bool,
    /// After a failed rotation: not tried again before then.
    rotate_after: Option<Instant>,
}

impl Writer {
    fn run(mut self, rx: mpsc::Receiver<Append>) {
        loop {
            let first = match self.fsync {
                // Records nobody waits for are fsynced by the next batch that has a waiter, or
                // once the writer has been idle this long.
                Fsync::Always if self.dirty => match rx.recv_timeout(IDLE_SYNC) {
                    Ok(a) => a,
                    Err(mpsc::RecvTimeoutError::Timeout) => {
                        let _ = self.sync();
                        continue;
                    }
                    Err(mpsc::RecvTimeoutError::Disconnected) => break,
                },
                Fsync::Interval(every) if self.dirty => {
                    match rx.recv_timeout(every.saturating_sub(self.last_sync.elapsed())) {
                        Ok(a) => a,
                        Err(mpsc::RecvTimeoutError::Timeout) => {
                            let _ = self.sync();
                            continue;
                        }
                        Err(mpsc::RecvTimeoutError::Disconnected) => break,
                    }
                }
                _ => match rx.recv() {
                    Ok(a) => a,
                    Err(_) => break,
                },
            };
            // Everything already waiting joins this batch: one write, one fsync.
            let mut batch = vec![first];
            let mut bytes = batch[0].bytes.len();
            while bytes < MAX_BATCH_BYTES {
                match rx.try_recv() {
                    Ok(a) => {
                        bytes += a.bytes.len();
                        batch.push(a);
                    }
                    Err(_) => break,
                }
            }
            let result = self.write(&batch).map_err(Arc::new);
            self.stats.backlog.fetch_sub(bytes as u64, Relaxed);
            for a in batch {
                if let Some(ack) = a.ack {
                    let _ = ack.send(result.clone());
                }
            }
            // After the acks: the records are written (and fsynced as the mode promises), so a
            // failure here is the writer's own to retry, not theirs.
            self.housekeeping();
        }
        if self.dirty {
            let _ = self.sync();
        }
    }

    /// Writes a batch (and fsyncs it, as the mode says). On failure the segment is cut back to
    /// its last whole record.
    fn write(&mut self, batch: &[Append]) -> io::Result<()> {
        let attempt = (|| {
            let mut added = 0u64;
            let mut barrier = false;
            let mut waited_for = false;
            for a in batch {
                waited_for |= a.ack.as_ref().is_some_and(|t| !t.is_closed());
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
            self.segment.out.flush()?;
            self.dirty |= added > 0;
            if ((self.fsync == Fsync::Always && waited_for) || barrier) && self.dirty {
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
                self.recover();
                Err(e)
            }
        }
    }

    /// The interval fsync when it is due, and the next segment once this one is full. A
    /// failure is logged and counted; a failed fsync is tried again after the next batch, a
    /// failed rotation after [`ROTATE_RETRY`].
    fn housekeeping(&mut self) {
        if let Fsync::Interval(every) = self.fsync {
            if self.dirty && self.last_sync.elapsed() >= every {
                if let Err(e) = self.sync() {
                    self.stats.failures.fetch_add(1, Relaxed);
                    tracing::error!(error = %e, "journal: fsync failed; it is tried again");
                }
            }
        }
        let due = self.rotate_after.is_none_or(|t| Instant::now() >= t);
        if self.segment.good >= self.segment_bytes && due {
            match self.rotate() {
                Ok(()) => self.rotate_after = None,
                Err(e) => {
                    self.stats.failures.fetch_add(1, Relaxed);
                    self.rotate_after = Some(Instant::now() + ROTATE_RETRY);
                    tracing::error!(error = %e, "journal: cannot begin the next segment; writing on in this one, and trying again in a second");
                }
            }
        }
    }

    fn sync(&mut self) -> io::Result<()> {
        self.segment.out.get_ref().sync_data()?;
        self.stats.fsyncs.fetch_add(1, Relaxed);
        self.last_sync = Instant::now();
        self.dirty = false;
        Ok(())
    }

    /// After a failed write: drops whatever of it is buffered or on disk, so the segment ends
    /// with its last whole record again.
    fn recover(&mut self) {
        let path = self.dir.join(segment_name(self.segment.seq));
        let reopened = OpenOptions::new()
            .read(true)
            .append(true)
            .open(&path)
            .and_then(|f| {
                f.set_len(self.segment.good)?;
                Ok(f)
            });
        match reopened {
            // The old writer (and what it buffered) is dropped without flushing into the file.
            Ok(f) => {
                let old = std::mem::replace(&mut self.segment.out, BufWriter::new(f));
                let _ = old.into_parts();
            }
            Err(e) => {
                tracing::error!(error = %e, file = %path.display(), "journal: cannot cut the segment back after a failed write");
            }
        }
    }

    fn rotate(&mut self) -> io::Result<()> {
        self.sync()?;
        self.segment = Segment::open(&self.dir, self.segment.seq + 1)?;
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
        assert_eq!(fs::metadata(&seg).unwrap().len(), whole, "cut back");
        block_on(log.append(vec![9; 10])).unwrap().unwrap();
        drop(log);
        let after = scan_dir(dir.path());
        assert_eq!(after.records.len(), 4);
        assert!(after.torn.is_none());
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
        // A record over the limit cannot be written: its batch fails (whatever else was in it).
        let maybe = log.append(b"second".to_vec());
        let bad = log.append(vec![0; MAX_RECORD as usize + 1]);
        assert!(block_on(bad).unwrap().is_err());
        let second_ok = block_on(maybe).unwrap().is_ok();
        block_on(log.append(b"third".to_vec())).unwrap().unwrap();
        assert!(log.stats().failures.load(Relaxed) >= 1);
        drop(log);
        let found = scan_dir(dir.path());
        assert!(found.torn.is_none());
        let mut want: Vec<&[u8]> = vec![b"first"];
        if second_ok {
            want.push(b"second");
        }
        want.push(b"third");
        assert_eq!(
            found.records, want,
            "a record is on disk exactly when it was acknowledged"
        );
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
    }
}
