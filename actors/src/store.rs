//! Message state behind one trait, [`Store`], so a durable journal or an external broker can
//! replace the default without touching the router or the processors.
//!
//! The store is the single source of truth for a message's status. Every transition is a
//! compare-and-set under the record's shard lock, which is what makes "exactly one terminal
//! state" hold: whoever wins [`Store::finish`] or [`Store::cancel`] gets the outcome, every later
//! attempt gets `None`/an error and does nothing. Waiters are told the outcome once, by the winner.
//!
//! [`MemoryStore`], the default, keeps records in sharded hash maps. It is bounded by count and
//! TTL and evicts finished outcomes only, oldest first (per shard); unfinished messages are never
//! evicted (the route capacities bound them).

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

use crate::envelope::{millis, ErrorInfo, Kind, MessageId, Outcome, Source, Status, Timings};
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
}

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

/// Where message state lives. Implementations must make each transition atomic per message.
pub trait Store: Send + Sync + 'static {
    /// Records a newly accepted message (queued, or delayed), with an optional first waiter.
    /// If it has a key and a message of the same kind with that key is remembered, nothing is
    /// recorded and that message's id is returned as the error, with the waiter handed back.
    fn insert(
        &self,
        rec: NewRecord,
        waiter: Option<Waiter>,
    ) -> Result<(), (MessageId, Option<Waiter>)>;
    /// queued | delayed → running. Returns the attempt number now starting, or the status that
    /// stops it (`None` if the message is unknown).
    fn start(&self, id: MessageId) -> Result<u32, Option<Status>>;
    /// running → delayed, for a retry. Returns false if the message is no longer running.
    fn requeue(&self, id: MessageId) -> bool;
    /// Any unfinished state → `status` (terminal). Returns the outcome if this call made the
    /// transition, `None` if the message was already finished or is unknown.
    fn finish(
        &self,
        id: MessageId,
        status: Status,
        result: Option<Value>,
        error: Option<ErrorInfo>,
    ) -> Option<Arc<Outcome>>;
    /// queued | delayed → cancelled. Running and finished messages cannot be cancelled.
    fn cancel(&self, id: MessageId, error: ErrorInfo) -> Result<Arc<Outcome>, CancelError>;
    /// The message's current state.
    fn get(&self, id: MessageId) -> Option<Arc<Outcome>>;
    /// Adds a waiter to a message: told at once if it has finished, else when it finishes.
    /// Hands the waiter back if the message is unknown.
    fn watch(&self, id: MessageId, waiter: Waiter) -> Result<(), Waiter>;
    /// Ids of every unfinished message.
    fn unfinished(&self) -> Vec<MessageId>;
    /// Records held (finished and not).
    fn len(&self) -> usize;
    /// Whether no record is held.
    fn is_empty(&self) -> bool {
        self.len() == 0
    }
    /// Evicts finished outcomes older than the TTL.
    fn sweep(&self);
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
    fn add(&mut self, w: Waiter) {
        *self = match std::mem::replace(self, Waiters::None) {
            Waiters::None => Waiters::One(w),
            Waiters::One(a) => Waiters::Many(vec![a, w]),
            Waiters::Many(mut v) => {
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

struct Record {
    kind: Kind,
    source: Source,
    status: Status,
    attempts: u32,
    accepted_at_ms: u64,
    accepted: Instant,
    started: Option<Instant>,
    key: Option<String>,
    replay_of: Option<MessageId>,
    outcome: Option<Arc<Outcome>>,
    waiters: Waiters,
}

impl Record {
    fn outcome(
        &self,
        id: MessageId,
        now: Instant,
        result: Option<Value>,
        error: Option<ErrorInfo>,
    ) -> Outcome {
        let started = self.started.unwrap_or(now);
        Outcome {
            id,
            kind: self.kind,
            status: self.status,
            result,
            error,
            attempts: self.attempts,
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
}

#[derive(Default)]
struct Shard {
    records: IdMap<Record>,
    finished: VecDeque<(Instant, MessageId)>,
}

const SHARDS: usize = 32;

/// The default store: in memory, bounded by count and TTL.
pub struct MemoryStore {
    shards: Box<[Mutex<Shard>]>,
    keys: Mutex<HashMap<(Kind, String), MessageId>>,
    ttl: Duration,
    per_shard_max: usize,
}

impl MemoryStore {
    /// A store that keeps finished outcomes for `ttl`, and at most about `max_results` of them.
    pub fn new(ttl: Duration, max_results: usize) -> MemoryStore {
        MemoryStore {
            shards: (0..SHARDS).map(|_| Mutex::new(Shard::default())).collect(),
            keys: Mutex::new(HashMap::new()),
            ttl,
            per_shard_max: max_results.div_ceil(SHARDS).max(1),
        }
    }

    fn shard(&self, id: MessageId) -> &Mutex<Shard> {
        &self.shards[(id.spread() >> 59) as usize % SHARDS]
    }

    /// Drops finished records past the TTL or the count bound; returns their keys to forget.
    fn evict(
        &self,
        shard: &mut Shard,
        now: Instant,
        evicted: &mut Vec<((Kind, String), MessageId)>,
    ) {
        while let Some(&(at, id)) = shard.finished.front() {
            if now.saturating_duration_since(at) < self.ttl
                && shard.finished.len() <= self.per_shard_max
            {
                break;
            }
            shard.finished.pop_front();
            if let Some(rec) = shard.records.remove(&id) {
                if let Some(key) = rec.key {
                    evicted.push(((rec.kind, key), id));
                }
            }
        }
    }

    fn forget_keys(&self, evicted: Vec<((Kind, String), MessageId)>) {
        if evicted.is_empty() {
            return;
        }
        let mut keys = self.keys.lock();
        for (k, id) in evicted {
            if keys.get(&k) == Some(&id) {
                keys.remove(&k);
            }
        }
    }
}

impl Store for MemoryStore {
    fn insert(
        &self,
        rec: NewRecord,
        waiter: Option<Waiter>,
    ) -> Result<(), (MessageId, Option<Waiter>)> {
        if let Some(key) = &rec.key {
            let mut keys = self.keys.lock();
            let k = (rec.kind, key.clone());
            if let Some(&existing) = keys.get(&k) {
                // A key whose record was just evicted no longer counts.
                if self.shard(existing).lock().records.contains_key(&existing) {
                    return Err((existing, waiter));
                }
            }
            keys.insert(k, rec.id);
        }
        let record = Record {
            kind: rec.kind,
            source: rec.source,
            status: if rec.delayed {
                Status::Delayed
            } else {
                Status::Queued
            },
            attempts: 0,
            accepted_at_ms: rec.accepted_at_ms,
            accepted: rec.accepted,
            started: None,
            key: rec.key,
            replay_of: rec.replay_of,
            outcome: None,
            waiters: waiter.map_or(Waiters::None, Waiters::One),
        };
        self.shard(rec.id).lock().records.insert(rec.id, record);
        Ok(())
    }

    fn start(&self, id: MessageId) -> Result<u32, Option<Status>> {
        let mut shard = self.shard(id).lock();
        let rec = shard.records.get_mut(&id).ok_or(None)?;
        match rec.status {
            Status::Queued | Status::Delayed => {
                rec.status = Status::Running;
                rec.attempts += 1;
                rec.started = Some(Instant::now());
                Ok(rec.attempts)
            }
            other => Err(Some(other)),
        }
    }

    fn requeue(&self, id: MessageId) -> bool {
        let mut shard = self.shard(id).lock();
        match shard.records.get_mut(&id) {
            Some(rec) if rec.status == Status::Running => {
                rec.status = Status::Delayed;
                true
            }
            _ => false,
        }
    }

    fn finish(
        &self,
        id: MessageId,
        status: Status,
        result: Option<Value>,
        error: Option<ErrorInfo>,
    ) -> Option<Arc<Outcome>> {
        debug_assert!(status.is_terminal());
        let now = Instant::now();
        let mut evicted = Vec::new();
        let (outcome, waiters) = {
            let mut guard = self.shard(id).lock();
            let shard = &mut *guard;
            let rec = shard.records.get_mut(&id)?;
            if rec.status.is_terminal() {
                return None;
            }
            rec.status = status;
            let outcome = Arc::new(rec.outcome(id, now, result, error));
            rec.outcome = Some(outcome.clone());
            let waiters = std::mem::replace(&mut rec.waiters, Waiters::None);
            shard.finished.push_back((now, id));
            self.evict(shard, now, &mut evicted);
            (outcome, waiters)
        };
        self.forget_keys(evicted);
        waiters.notify(&outcome);
        Some(outcome)
    }

    fn cancel(&self, id: MessageId, error: ErrorInfo) -> Result<Arc<Outcome>, CancelError> {
        {
            let shard = self.shard(id).lock();
            let rec = shard.records.get(&id).ok_or(CancelError::Unknown(id))?;
            if !matches!(rec.status, Status::Queued | Status::Delayed) {
                return Err(CancelError::TooLate {
                    id,
                    status: rec.status,
                });
            }
        }
        // Between the check and the transition the message may have started; `finish` only
        // succeeds from an unfinished state, so re-check under the same lock instead.
        let now = Instant::now();
        let mut evicted = Vec::new();
        let (outcome, waiters) = {
            let mut guard = self.shard(id).lock();
            let shard = &mut *guard;
            let rec = shard.records.get_mut(&id).ok_or(CancelError::Unknown(id))?;
            if !matches!(rec.status, Status::Queued | Status::Delayed) {
                return Err(CancelError::TooLate {
                    id,
                    status: rec.status,
                });
            }
            rec.status = Status::Cancelled;
            let outcome = Arc::new(rec.outcome(id, now, None, Some(error)));
            rec.outcome = Some(outcome.clone());
            let waiters = std::mem::replace(&mut rec.waiters, Waiters::None);
            shard.finished.push_back((now, id));
            self.evict(shard, now, &mut evicted);
            (outcome, waiters)
        };
        self.forget_keys(evicted);
        waiters.notify(&outcome);
        Ok(outcome)
    }

    fn get(&self, id: MessageId) -> Option<Arc<Outcome>> {
        let shard = self.shard(id).lock();
        let rec = shard.records.get(&id)?;
        Some(match &rec.outcome {
            Some(o) => o.clone(),
            None => Arc::new(rec.outcome(id, Instant::now(), None, None)),
        })
    }

    fn watch(&self, id: MessageId, waiter: Waiter) -> Result<(), Waiter> {
        let mut shard = self.shard(id).lock();
        let Some(rec) = shard.records.get_mut(&id) else {
            return Err(waiter);
        };
        match &rec.outcome {
            Some(o) => {
                let o = o.clone();
                drop(shard);
                waiter.notify(&o);
            }
            None => rec.waiters.add(waiter),
        }
        Ok(())
    }

    fn unfinished(&self) -> Vec<MessageId> {
        let mut out = Vec::new();
        for shard in self.shards.iter() {
            let shard = shard.lock();
            out.extend(
                shard
                    .records
                    .iter()
                    .filter(|(_, r)| !r.status.is_terminal())
                    .map(|(id, _)| *id),
            );
        }
        out.sort_unstable();
        out
    }

    fn len(&self) -> usize {
        self.shards.iter().map(|s| s.lock().records.len()).sum()
    }

    fn sweep(&self) {
        let now = Instant::now();
        for shard in self.shards.iter() {
            let mut evicted = Vec::new();
            self.evict(&mut shard.lock(), now, &mut evicted);
            self.forget_keys(evicted);
        }
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
        }
    }

    #[test]
    fn only_the_first_terminal_transition_wins() {
        let store = MemoryStore::new(Duration::from_secs(60), 100);
        let r = rec("echo", None);
        let id = r.id;
        let (w, mut rx) = Waiter::channel();
        store.insert(r, Some(w)).unwrap();
        assert_eq!(store.start(id), Ok(1));
        assert_eq!(store.start(id), Err(Some(Status::Running)));
        let o = store
            .finish(id, Status::Completed, Some(Value::from(1)), None)
            .expect("first finish wins");
        assert_eq!(o.status, Status::Completed);
        assert!(store.finish(id, Status::Failed, None, None).is_none());
        assert_eq!(
            store.cancel(id, ErrorInfo::new(crate::ErrorClass::Cancelled, "x")),
            Err(CancelError::TooLate {
                id,
                status: Status::Completed
            })
        );
        assert_eq!(rx.try_recv().unwrap().result, Some(Value::from(1)));
    }

    #[test]
    fn evicts_oldest_finished_beyond_the_bound_and_forgets_their_keys() {
        let store = MemoryStore::new(Duration::from_secs(60), SHARDS);
        let mut ids = Vec::new();
        for i in 0..(SHARDS * 4) {
            let r = rec("echo", Some(&format!("k{i}")));
            ids.push(r.id);
            store.insert(r, None).unwrap();
            store.start(ids[i]).unwrap();
            store.finish(ids[i], Status::Completed, None, None).unwrap();
        }
        // One per shard is kept; with ids spread over shards, far fewer than all remain.
        assert!(store.len() < SHARDS * 4, "held {}", store.len());
        assert!(store.get(*ids.last().unwrap()).is_some(), "newest is kept");
        let gone = ids.iter().position(|id| store.get(*id).is_none()).unwrap();
        let kind = Kind::new("echo").unwrap();
        assert!(!store.keys.lock().contains_key(&(kind, format!("k{gone}"))));
    }

    #[test]
    fn a_duplicate_key_returns_the_first_id() {
        let store = MemoryStore::new(Duration::from_secs(60), 100);
        let a = rec("echo", Some("same"));
        let first = a.id;
        store.insert(a, None).unwrap();
        assert_eq!(
            store
                .insert(rec("echo", Some("same")), None)
                .map_err(|e| e.0),
            Err(first)
        );
        assert!(store.insert(rec("other", Some("same")), None).is_ok());
    }
}
