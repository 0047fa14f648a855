//! Message state in memory: the index the dispatcher reads and changes. What must outlive the
//! process is written separately, as records, to [`crate::storage`]; this index is rebuilt
//! from them at start-up.
//!
//! The store is the single source of truth for a message's status. Every transition is a
//! compare-and-set under the record's shard lock, which is what makes "exactly one terminal
//! state" hold: whoever wins [`Store::finish`] or [`Store::cancel`] gets the outcome, every later
//! attempt gets `None`/an error and does nothing. Waiters are told the outcome once, by the winner.
//!
//! [`MemoryStore`], the default, keeps records in sharded hash maps. It is bounded by count, by
//! bytes of kept outcomes and by TTL, and evicts finished outcomes only, oldest first (per shard);
//! unfinished messages are never evicted (the route capacities bound them).

use std::any::Any;
use std::collections::{HashMap, VecDeque};
use std::hash::{BuildHasherDefault, Hasher};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, OnceLock};
use std::task::{Context, Poll};
use std::time::{Duration, Instant};

use futures_util::task::AtomicWaker;
use parking_lot::Mutex;
use serde_json::Value;
use tokio::sync::oneshot;

use crate::commit::Commit;
use crate::envelope::{
    approx_bytes, millis, ErrorInfo, Kind, MessageId, Outcome, Source, Status, Timings,
};
use crate::error::CancelError;

/// What the dispatcher records when it accepts a message.
#[derive(Debug, Clone)]
pub struct NewRecord {
    /// The new id.
    pub id: MessageId,
    /// Its kind.
    pub kind: Kind,
    /// Its source.
    pub source: Source,
    /// Its idempotency key.
    pub key: Option<String>,
    /// Whether it waits for a time before it may run.
    pub delayed: bool,
    /// The dead letter it replays.
    pub replay_of: Option<MessageId>,
    /// Acceptance time, Unix milliseconds.
    pub accepted_at_ms: u64,
    /// Acceptance time, monotonic.
    pub accepted: Instant,
    /// Attempts already started (a message recovered after a restart).
    pub attempts: u32,
    /// With a key and durable storage: set once its `Accepted` record is durable (or could not
    /// be written). A duplicate of the key is answered only after it (see [`Store::insert`]).
    pub commit: Option<Arc<Commit>>,
}

/// What [`Store::insert`] hands back for a key already held: the message that holds it, the
/// waiter, and that message's commit (`None` for one recovered at start, whose record is on
/// disk already).
pub type Held = (MessageId, Option<Waiter>, Option<Arc<Commit>>);

/// The message holding a key, and its commit.
type KeyHolder = (MessageId, Option<Arc<Commit>>);

/// Someone waiting for a message's outcome. Told exactly once, by the terminal transition.
#[derive(Debug)]
pub struct Waiter(WaiterKind);

#[derive(Debug)]
enum WaiterKind {
    Once(oneshot::Sender<Arc<Outcome>>),
    Slot(Arc<Gathered>, usize),
}

impl Waiter {
    /// A waiter that resolves `rx`.
    pub fn channel() -> (Waiter, oneshot::Receiver<Arc<Outcome>>) {
        let (tx, rx) = oneshot::channel();
        (Waiter(WaiterKind::Once(tx)), rx)
    }

    pub(crate) fn slot(g: &Arc<Gathered>, index: usize) -> Waiter {
        Waiter(WaiterKind::Slot(g.clone(), index))
    }

    /// Whether nobody is listening any more (a `wait` that timed out, a client that left).
    fn is_abandoned(&self) -> bool {
        match &self.0 {
            WaiterKind::Once(tx) => tx.is_closed(),
            WaiterKind::Slot(..) => false,
        }
    }

    /// Hands the outcome to the waiter (a waiter that went away is ignored).
    pub fn notify(self, outcome: &Arc<Outcome>) {
        match self.0 {
            WaiterKind::Once(tx) => {
                let _ = tx.send(outcome.clone());
            }
            WaiterKind::Slot(g, i) => g.fill(i, outcome.clone()),
        }
    }
}

/// The collector behind `gather`: one slot per message and one wake-up when all are filled.
#[derive(Debug)]
pub(crate) struct Gathered {
    slots: Vec<OnceLock<Arc<Outcome>>>,
    remaining: AtomicUsize,
    waker: AtomicWaker,
}

impl Gathered {
    pub(crate) fn new(n: usize) -> Arc<Gathered> {
        Arc::new(Gathered {
            slots: (0..n).map(|_| OnceLock::new()).collect(),
            remaining: AtomicUsize::new(n),
            waker: AtomicWaker::new(),
        })
    }

    fn fill(&self, i: usize, outcome: Arc<Outcome>) {
        if self.slots[i].set(outcome).is_ok() && self.remaining.fetch_sub(1, Ordering::AcqRel) == 1
        {
            self.waker.wake();
        }
    }

    /// Marks a slot that will never be filled by the store (its message was rejected).
    pub(crate) fn skip(&self) {
        if self.remaining.fetch_sub(1, Ordering::AcqRel) == 1 {
            self.waker.wake();
        }
    }

    pub(crate) fn poll_done(&self, cx: &mut Context<'_>) -> Poll<()> {
        if self.remaining.load(Ordering::Acquire) == 0 {
            return Poll::Ready(());
        }
        self.waker.register(cx.waker());
        if self.remaining.load(Ordering::Acquire) == 0 {
            Poll::Ready(())
        } else {
            Poll::Pending
        }
    }

    pub(crate) fn take(&self, i: usize) -> Option<Arc<Outcome>> {
        self.slots[i].get().cloned()
    }
}

/// A handle to one message's record, returned by [`Store::insert`] and passed back to the
/// transitions, so the hot path never looks the id up again. A store keeps whatever it likes in
/// it (see [`Ticket::new`] and [`Ticket::handle`]).
#[derive(Clone)]
pub struct Ticket {
    /// The message's id.
    pub id: MessageId,
    handle: Arc<dyn Any + Send + Sync>,
}

impl std::fmt::Debug for Ticket {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "Ticket({})", self.id)
    }
}

impl Ticket {
    /// A ticket for `id` carrying a store's own handle.
    pub fn new(id: MessageId, handle: Arc<dyn Any + Send + Sync>) -> Ticket {
        Ticket { id, handle }
    }

    /// The store's handle, if it is a `T`.
    pub fn handle<T: Any>(&self) -> Option<&T> {
        self.handle.downcast_ref()
    }
}

/// A terminal transition that has happened but has not been announced yet: the caller records
/// it (e.g. in the ledger) and then [`Finished::publish`]es it to the waiters, so whoever is woken
/// by an outcome also sees it counted. Dropping it publishes too.
pub struct Finished {
    outcome: Arc<Outcome>,
    key: Option<String>,
    waiters: Option<Waiters>,
}

impl Finished {
    /// The outcome.
    pub fn outcome(&self) -> &Arc<Outcome> {
        &self.outcome
    }

    /// The message's idempotency key.
    pub fn key(&self) -> Option<&str> {
        self.key.as_deref()
    }

    /// Tells the waiters and returns the outcome.
    pub fn publish(mut self) -> Arc<Outcome> {
        self.tell();
        self.outcome.clone()
    }

    fn tell(&mut self) {
        if let Some(w) = self.waiters.take() {
            w.notify(&self.outcome);
        }
    }
}

impl Drop for Finished {
    fn drop(&mut self) {
        self.tell();
    }
}

impl std::fmt::Debug for Finished {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Finished")
            .field("outcome", &self.outcome)
            .finish()
    }
}

/// Where message state lives. Implementations must make each transition atomic per message.
pub trait Store: Send + Sync + 'static {
    /// Records a newly accepted message (queued, or delayed), with an optional first waiter.
    /// If it has a key and a message of the same kind with that key is remembered, nothing is
    /// recorded and that message's id and commit are returned as the error, with the waiter
    /// handed back.
    fn insert(&self, rec: NewRecord, waiter: Option<Waiter>) -> Result<Ticket, Held>;
    /// queued | delayed → running. Returns the attempt number now starting, or the status that
    /// stops it.
    fn start(&self, ticket: &Ticket) -> Result<u32, Status>;
    /// running → delayed, for a retry. Returns false if the message is no longer running.
    fn requeue(&self, ticket: &Ticket) -> bool;
    /// Any unfinished state → `status` (terminal). Returns the transition, to be published, if
    /// this call made it; `None` if the message had already finished.
    fn finish(
        &self,
        ticket: &Ticket,
        status: Status,
        result: Option<Value>,
        error: Option<ErrorInfo>,
    ) -> Option<Finished>;
    /// Whether the message has reached its terminal state.
    fn is_finished(&self, ticket: &Ticket) -> bool {
        self.get(ticket.id).is_none_or(|o| o.status.is_terminal())
    }
    /// The ticket of a message that is still held (`None` if unknown or evicted).
    fn ticket(&self, id: MessageId) -> Option<Ticket>;
    /// queued | delayed → cancelled. Running and finished messages cannot be cancelled.
    fn cancel(&self, id: MessageId, error: ErrorInfo) -> Result<Finished, CancelError>;
    /// The message's current state.
    fn get(&self, id: MessageId) -> Option<Arc<Outcome>>;
    /// The message's idempotency key, while it is held.
    fn key(&self, id: MessageId) -> Option<String>;
    /// Adds a waiter to a message: told at once if it has finished, else when it finishes.
    /// Hands the waiter back if the message is unknown.
    fn watch(&self, id: MessageId, waiter: Waiter) -> Result<(), Waiter>;
    /// Ids of every unfinished message.
    fn unfinished(&self) -> Vec<MessageId>;
    /// Records held (finished and not).
    fn len(&self) -> usize;
    /// Evicts finished outcomes older than the TTL.
    fn sweep(&self);
    /// Forgets a message that was never acknowledged (its record could not be stored), with
    /// its key.
    fn remove(&self, ticket: &Ticket);
    /// Puts back the outcome of a message that finished before a restart, `age` ago, and
    /// remembers its key.
    fn restore(&self, outcome: Outcome, key: Option<String>, age: Duration);
}

#[derive(Default, Clone, Copy)]
struct IdHasher(u64);

impl Hasher for IdHasher {
    fn finish(&self) -> u64 {
        self.0
    }
    fn write(&mut self, bytes: &[u8]) {
        for chunk in bytes.chunks(8) {
            let mut b = [0u8; 8];
            b[..chunk.len()].copy_from_slice(chunk);
            self.0 = (self.0 ^ u64::from_le_bytes(b)).wrapping_mul(0x9E37_79B9_7F4A_7C15);
        }
    }
    fn write_u128(&mut self, v: u128) {
        self.0 = MessageId::from_u128(v).spread();
    }
}

type IdMap<V> = HashMap<MessageId, V, BuildHasherDefault<IdHasher>>;

enum Waiters {
    None,
    One(Waiter),
    Many(Vec<Waiter>),
}

impl Waiters {
    /// Adds a waiter, first dropping the ones nobody listens to any more, so repeated
    /// long-polls of a slow message do not pile up.
    fn add(&mut self, w: Waiter) {
        *self = match std::mem::replace(self, Waiters::None) {
            Waiters::None => Waiters::One(w),
            Waiters::One(a) if a.is_abandoned() => Waiters::One(w),
            Waiters::One(a) => Waiters::Many(vec![a, w]),
            Waiters::Many(mut v) => {
                v.retain(|x| !x.is_abandoned());
                v.push(w);
                Waiters::Many(v)
            }
        }
    }

    fn notify(self, outcome: &Arc<Outcome>) {
        match self {
            Waiters::None => {}
            Waiters::One(w) => w.notify(outcome),
            Waiters::Many(v) => v.into_iter().for_each(|w| w.notify(outcome)),
        }
    }
}

/// One message's record: fixed facts, and its changing state under its own lock.
struct Cell {
    id: MessageId,
    kind: Kind,
    source: Source,
    accepted_at_ms: u64,
    accepted: Instant,
    key: Option<String>,
    replay_of: Option<MessageId>,
    state: Mutex<CellState>,
}

struct CellState {
    status: Status,
    attempts: u32,
    started: Option<Instant>,
    outcome: Option<Arc<Outcome>>,
    waiters: Waiters,
}

impl Cell {
    fn outcome(
        &self,
        st: &CellState,
        now: Instant,
        result: Option<Value>,
        error: Option<ErrorInfo>,
    ) -> Outcome {
        let started = st.started.unwrap_or(now);
        Outcome {
            id: self.id,
            kind: self.kind,
            status: st.status,
            result,
            error,
            attempts: st.attempts,
            source: self.source,
            accepted_at_ms: self.accepted_at_ms,
            timings: Timings {
                queued_ms: millis(started.saturating_duration_since(self.accepted)),
                run_ms: millis(now.saturating_duration_since(started)),
                total_ms: millis(now.saturating_duration_since(self.accepted)),
            },
            replay_of: self.replay_of,
        }
    }

    /// Moves the cell to a terminal state if `allowed(status)`; returns the outcome and the
    /// waiters to tell, or the status that refused it.
    fn end(
        &self,
        status: Status,
        result: Option<Value>,
        error: Option<ErrorInfo>,
        allowed: impl Fn(Status) -> bool,
        now: Instant,
    ) -> Result<(Arc<Outcome>, Waiters), Status> {
        let mut st = self.state.lock();
        if !allowed(st.status) {
            return Err(st.status);
        }
        st.status = status;
        let outcome = Arc::new(self.outcome(&st, now, result, error));
        st.outcome = Some(outcome.clone());
        let waiters = std::mem::replace(&mut st.waiters, Waiters::None);
        Ok((outcome, waiters))
    }
}

#[derive(Default)]
struct Shard {
    cells: IdMap<Arc<Cell>>,
    /// Finished ids in the order they finished, with when and about how many bytes they hold.
    finished: VecDeque<(Instant, MessageId, usize)>,
    /// The bytes of the outcomes in `finished`.
    bytes: usize,
}

/// About how many bytes a finished outcome holds (its result and error, and the record).
fn outcome_bytes(o: &Outcome) -> usize {
    256 + o.result.as_ref().map_or(0, approx_bytes)
        + o.error.as_ref().map_or(0, |e| e.message.len())
}

const SHARDS: usize = 32;

/// The default store: in memory, bounded by count and TTL.
///
/// The id index holds only `id → Arc<Cell>` (24 bytes an entry), so it stays cache-friendly at
/// a hundred thousand records; each cell has its own lock, so transitions of different messages
/// never contend.
pub struct MemoryStore {
    shards: Box<[Mutex<Shard>]>,
    /// The message holding each key, and its commit (see [`NewRecord::commit`]).
    keys: Mutex<HashMap<(Kind, String), KeyHolder>>,
    ttl: Duration,
    per_shard_max: usize,
    per_shard_bytes: usize,
}

impl MemoryStore {
    /// A store that keeps finished outcomes for `ttl`, and at most about `max_results` of them
    /// holding at most about `max_bytes` (results and errors, as counted by their JSON text).
    pub fn new(ttl: Duration, max_results: usize, max_bytes: usize) -> MemoryStore {
        MemoryStore {
            shards: (0..SHARDS).map(|_| Mutex::new(Shard::default())).collect(),
            keys: Mutex::new(HashMap::new()),
            ttl,
            per_shard_max: max_results.div_ceil(SHARDS).max(1),
            per_shard_bytes: (max_bytes / SHARDS).max(1),
        }
    }

    /// The shard of `id`, picked by bits 32 to 36 of the id's hash: the shard's hash map uses
    /// the same hash, its lowest bits for the bucket and its top 7 as each entry's tag, so a
    /// shard picked by either would leave its map with few buckets or few tags in use (the top
    /// 5 bits, used before, left 4 tags of 128, and every lookup compared many keys).
    fn shard(&self, id: MessageId) -> &Mutex<Shard> {
        &self.shards[(id.spread() >> 32) as usize % SHARDS]
    }

    fn cell(&self, id: MessageId) -> Option<Arc<Cell>> {
        self.shard(id).lock().cells.get(&id).cloned()
    }

    fn cell_of<'t>(&self, ticket: &'t Ticket) -> &'t Cell {
        ticket
            .handle::<Cell>()
            .expect("a MemoryStore is only handed its own tickets")
    }

    /// Files a finished id for eviction. Eviction itself happens on the admission side (in
    /// `insert`) and in `sweep`, so the thread that finishes messages does not also pay for
    /// freeing old ones. The waiters are told by the returned [`Finished`].
    fn ended(
        &self,
        cell: &Cell,
        outcome: Arc<Outcome>,
        waiters: Waiters,
        now: Instant,
    ) -> Finished {
        let id = cell.id;
        let bytes = outcome_bytes(&outcome);
        {
            let mut shard = self.shard(id).lock();
            shard.finished.push_back((now, id, bytes));
            shard.bytes += bytes;
        }
        Finished {
            outcome,
            key: cell.key.clone(),
            waiters: Some(waiters),
        }
    }

    /// Takes finished cells past the TTL or the count bound out of the index. They are dropped
    /// by the caller after the shard lock is released.
    fn evict(&self, shard: &mut Shard, now: Instant, evicted: &mut Vec<Arc<Cell>>) {
        // Every evicted cell is pushed here so it is dropped (freed) after the shard lock.
        while let Some(&(at, id, bytes)) = shard.finished.front() {
            // Over the byte budget, the newest outcome of a shard stays even when it alone is
            // over: so a large result can always be read once it is announced.
            if now.saturating_duration_since(at) < self.ttl
                && shard.finished.len() <= self.per_shard_max
                && (shard.bytes <= self.per_shard_bytes || shard.finished.len() == 1)
            {
                break;
            }
            shard.finished.pop_front();
            shard.bytes -= bytes;
            if let Some(cell) = shard.cells.remove(&id) {
                evicted.push(cell);
            }
        }
    }

    /// Forgets the idempotency keys of evicted cells, and drops the cells.
    fn forget(&self, evicted: Vec<Arc<Cell>>) {
        let mut keys = None;
        for cell in evicted {
            if let Some(key) = &cell.key {
                let keys = keys.get_or_insert_with(|| self.keys.lock());
                let k = (cell.kind, key.clone());
                if keys.get(&k).is_some_and(|(id, _)| *id == cell.id) {
                    keys.remove(&k);
                }
            }
        }
    }
}

impl Store for MemoryStore {
    fn insert(&self, rec: NewRecord, waiter: Option<Waiter>) -> Result<Ticket, Held> {
        // The keys lock is held until the record is in its shard, so two submissions with the
        // same key cannot both be accepted (lock order: keys, then shard).
        let mut keys = rec.key.as_ref().map(|_| self.keys.lock());
        if let (Some(keys), Some(key)) = (keys.as_mut(), &rec.key) {
            let k = (rec.kind, key.clone());
            if let Some((existing, commit)) = keys.get(&k) {
                // A key whose record was just evicted no longer counts.
                if self.shard(*existing).lock().cells.contains_key(existing) {
                    return Err((*existing, waiter, commit.clone()));
                }
            }
            keys.insert(k, (rec.id, rec.commit.clone()));
        }
        let cell = Arc::new(Cell {
            id: rec.id,
            kind: rec.kind,
            source: rec.source,
            accepted_at_ms: rec.accepted_at_ms,
            accepted: rec.accepted,
            key: rec.key,
            replay_of: rec.replay_of,
            state: Mutex::new(CellState {
                status: if rec.delayed {
                    Status::Delayed
                } else {
                    Status::Queued
                },
                attempts: rec.attempts,
                started: None,
                outcome: None,
                waiters: waiter.map_or(Waiters::None, Waiters::One),
            }),
        });
        let mut evicted = Vec::new();
        {
            let mut shard = self.shard(rec.id).lock();
            shard.cells.insert(rec.id, cell.clone());
            self.evict(&mut shard, rec.accepted, &mut evicted);
        }
        drop(keys);
        self.forget(evicted);
        Ok(Ticket::new(rec.id, cell))
    }

    fn start(&self, ticket: &Ticket) -> Result<u32, Status> {
        let mut st = self.cell_of(ticket).state.lock();
        match st.status {
            Status::Queued | Status::Delayed => {
                st.status = Status::Running;
                st.attempts += 1;
                st.started = Some(Instant::now());
                Ok(st.attempts)
            }
            other => Err(other),
        }
    }

    fn requeue(&self, ticket: &Ticket) -> bool {
        let mut st = self.cell_of(ticket).state.lock();
        if st.status == Status::Running {
            st.status = Status::Delayed;
            true
        } else {
            false
        }
    }

    fn finish(
        &self,
        ticket: &Ticket,
        status: Status,
        result: Option<Value>,
        error: Option<ErrorInfo>,
    ) -> Option<Finished> {
        debug_assert!(status.is_terminal());
        let now = Instant::now();
        let cell = self.cell_of(ticket);
        let (outcome, waiters) = cell
            .end(status, result, error, |s| !s.is_terminal(), now)
            .ok()?;
        Some(self.ended(cell, outcome, waiters, now))
    }

    fn ticket(&self, id: MessageId) -> Option<Ticket> {
        self.cell(id).map(|c| Ticket::new(id, c))
    }

    fn is_finished(&self, ticket: &Ticket) -> bool {
        self.cell_of(ticket).state.lock().status.is_terminal()
    }

    fn cancel(&self, id: MessageId, error: ErrorInfo) -> Result<Finished, CancelError> {
        let cell = self.cell(id).ok_or(CancelError::Unknown(id))?;
        let now = Instant::now();
        let (outcome, waiters) = cell
            .end(
                Status::Cancelled,
                None,
                Some(error),
                |s| matches!(s, Status::Queued | Status::Delayed),
                now,
            )
            .map_err(|status| CancelError::TooLate { id, status })?;
        Ok(self.ended(&cell, outcome, waiters, now))
    }

    fn get(&self, id: MessageId) -> Option<Arc<Outcome>> {
        let cell = self.cell(id)?;
        let st = cell.state.lock();
        Some(match &st.outcome {
            Some(o) => o.clone(),
            None => Arc::new(cell.outcome(&st, Instant::now(), None, None)),
        })
    }

    fn key(&self, id: MessageId) -> Option<String> {
        self.cell(id)?.key.clone()
    }

    fn watch(&self, id: MessageId, waiter: Waiter) -> Result<(), Waiter> {
        let Some(cell) = self.cell(id) else {
            return Err(waiter);
        };
        let mut st = cell.state.lock();
        match &st.outcome {
            Some(o) => {
                let o = o.clone();
                drop(st);
                waiter.notify(&o);
            }
            None => st.waiters.add(waiter),
        }
        Ok(())
    }

    fn unfinished(&self) -> Vec<MessageId> {
        let mut out = Vec::new();
        for shard in self.shards.iter() {
            let cells: Vec<Arc<Cell>> = shard.lock().cells.values().cloned().collect();
            out.extend(
                cells
                    .iter()
                    .filter(|c| !c.state.lock().status.is_terminal())
                    .map(|c| c.id),
            );
        }
        out.sort_unstable();
        out
    }

    fn len(&self) -> usize {
        self.shards.iter().map(|s| s.lock().cells.len()).sum()
    }

    fn sweep(&self) {
        let now = Instant::now();
        for shard in self.shards.iter() {
            let mut evicted = Vec::new();
            self.evict(&mut shard.lock(), now, &mut evicted);
            self.forget(evicted);
        }
    }

    fn remove(&self, ticket: &Ticket) {
        let removed = self.shard(ticket.id).lock().cells.remove(&ticket.id);
        self.forget(removed.into_iter().collect());
    }

    fn restore(&self, outcome: Outcome, key: Option<String>, age: Duration) {
        let now = Instant::now();
        let finished = now.checked_sub(age).unwrap_or(now);
        let accepted = finished
            .checked_sub(Duration::from_secs_f64(
                outcome.timings.total_ms.max(0.0) / 1000.0,
            ))
            .unwrap_or(finished);
        let id = outcome.id;
        let bytes = outcome_bytes(&outcome);
        let cell = Arc::new(Cell {
            id,
            kind: outcome.kind,
            source: outcome.source,
            accepted_at_ms: outcome.accepted_at_ms,
            accepted,
            key: key.clone(),
            replay_of: outcome.replay_of,
            state: Mutex::new(CellState {
                status: outcome.status,
                attempts: outcome.attempts,
                started: None,
                outcome: Some(Arc::new(outcome)),
                waiters: Waiters::None,
            }),
        });
        if let Some(key) = key {
            self.keys.lock().insert((cell.kind, key), (id, None));
        }
        let mut evicted = Vec::new();
        {
            let mut shard = self.shard(id).lock();
            shard.cells.insert(id, cell);
            shard.finished.push_back((finished, id, bytes));
            shard.bytes += bytes;
            self.evict(&mut shard, now, &mut evicted);
        }
        self.forget(evicted);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn rec(kind: &str, key: Option<&str>) -> NewRecord {
        NewRecord {
            id: MessageId::next(),
            kind: Kind::new(kind).unwrap(),
            source: Source::Library,
            key: key.map(str::to_owned),
            delayed: false,
            replay_of: None,
            accepted_at_ms: 0,
            accepted: Instant::now(),
            attempts: 0,
            commit: None,
        }
    }

    #[test]
    fn only_the_first_terminal_transition_wins() {
        let store = MemoryStore::new(Duration::from_secs(60), 100, usize::MAX);
        let r = rec("echo", None);
        let id = r.id;
        let (w, mut rx) = Waiter::channel();
        let t = store.insert(r, Some(w)).unwrap();
        assert_eq!(store.start(&t), Ok(1));
        assert_eq!(store.start(&t), Err(Status::Running));
        let o = store
            .finish(&t, Status::Completed, Some(Value::from(1)), None)
            .expect("first finish wins")
            .publish();
        assert_eq!(o.status, Status::Completed);
        assert!(store.finish(&t, Status::Failed, None, None).is_none());
        assert_eq!(
            store
                .cancel(id, ErrorInfo::new(crate::ErrorClass::Cancelled, "x"))
                .map(|f| f.publish()),
            Err(CancelError::TooLate {
                id,
                status: Status::Completed
            })
        );
        assert_eq!(rx.try_recv().unwrap().result, Some(Value::from(1)));
    }

    #[test]
    fn evicts_oldest_finished_beyond_the_bound_and_forgets_their_keys() {
        let store = MemoryStore::new(Duration::from_secs(60), SHARDS, usize::MAX);
        let mut ids = Vec::new();
        for i in 0..(SHARDS * 4) {
            let r = rec("echo", Some(&format!("k{i}")));
            ids.push(r.id);
            let t = store.insert(r, None).unwrap();
            store.start(&t).unwrap();
            store.finish(&t, Status::Completed, None, None).unwrap();
        }
        // One per shard is kept; with ids spread over shards, far fewer than all remain.
        assert!(store.len() < SHARDS * 4, "held {}", store.len());
        assert!(store.get(*ids.last().unwrap()).is_some(), "newest is kept");
        let gone = ids.iter().position(|id| store.get(*id).is_none()).unwrap();
        let kind = Kind::new("echo").unwrap();
        assert!(!store.keys.lock().contains_key(&(kind, format!("k{gone}"))));
    }

    #[test]
    fn evicts_oldest_finished_beyond_the_byte_budget() {
        // 64 KiB over 32 shards: 2 KiB a shard, so one 1 KiB result fits a shard and two do not.
        let store = MemoryStore::new(Duration::from_secs(60), 1_000_000, 64 * 1024);
        let mut ids = Vec::new();
        for _ in 0..(SHARDS * 8) {
            let r = rec("echo", None);
            ids.push(r.id);
            let t = store.insert(r, None).unwrap();
            store.start(&t).unwrap();
            let big = Value::String("x".repeat(1024));
            store
                .finish(&t, Status::Completed, Some(big), None)
                .unwrap();
        }
        store.sweep();
        let bytes: usize = store.shards.iter().map(|s| s.lock().bytes).sum();
        assert!(bytes <= 64 * 1024, "{bytes} bytes kept");
        assert!(store.len() <= SHARDS * 2, "held {}", store.len());
        assert!(store.get(*ids.last().unwrap()).is_some(), "newest is kept");
    }

    #[test]
    fn abandoned_waiters_do_not_pile_up() {
        let store = MemoryStore::new(Duration::from_secs(60), 100, usize::MAX);
        let r = rec("sleep", None);
        let id = r.id;
        store.insert(r, None).unwrap();
        let (keep, mut kept) = Waiter::channel();
        store.watch(id, keep).unwrap();
        for _ in 0..1000 {
            let (w, rx) = Waiter::channel();
            store.watch(id, w).unwrap();
            drop(rx); // a long-poll that timed out
        }
        let cell = store.cell(id).unwrap();
        let held = match &cell.state.lock().waiters {
            Waiters::None => 0,
            Waiters::One(_) => 1,
            Waiters::Many(v) => v.len(),
        };
        assert!(held <= 2, "{held} waiters held");
        store
            .cancel(id, ErrorInfo::new(crate::ErrorClass::Cancelled, "x"))
            .unwrap();
        assert_eq!(
            kept.try_recv().unwrap().status,
            Status::Cancelled,
            "the live waiter is told"
        );
    }

    #[test]
    fn a_duplicate_key_returns_the_first_id() {
        let store = MemoryStore::new(Duration::from_secs(60), 100, usize::MAX);
        let a = rec("echo", Some("same"));
        let first = a.id;
        store.insert(a, None).unwrap();
        assert_eq!(
            store
                .insert(rec("echo", Some("same")), None)
                .map(|t| t.id)
                .map_err(|e| e.0),
            Err(first)
        );
        assert!(store.insert(rec("other", Some("same")), None).is_ok());
    }
}
