//! The routing table's entries. A `Route` is shared (behind the dispatcher's `Arc`) by the
//! admission path, the router and the route's worker: its limits are fixed at build time, its
//! counters are atomics, and its own worker's address is set once when that worker starts (the
//! workers of attached threads are known to those threads only; they share the route's
//! [`Slots`]).

use std::collections::HashMap;
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering::Relaxed, Ordering::SeqCst};
use std::sync::{Arc, OnceLock};
use std::time::{Duration, Instant};

use actix::Recipient;
use parking_lot::Mutex;
use serde::Serialize;

use crate::envelope::{ClientId, Kind};
use crate::metrics::RouteStats;
use crate::processor::worker::Run;
use crate::processor::Purity;
use crate::processor::{Pool, Validator};
use crate::settings::RestartPolicy;
use crate::supervision::{RestartDecision, RestartWindow};

pub(crate) struct Route {
    pub kind: Kind,
    pub processor: String,
    pub pool: Pool,
    pub capacity: u64,
    pub concurrency: usize,
    pub timeout: Option<Duration>,
    pub retries: u32,
    pub backoff: Duration,
    pub validate: Option<Validator>,
    pub schema: Option<serde_json::Value>,
    /// Which of the route's messages are pure: with durable storage, those begin before
    /// their `Accepted` record is on disk (see `commit`).
    pub purity: Purity,
    pub stats: RouteStats,
    /// Milliseconds since the dispatcher's epoch until which the route rejects new messages.
    pub degraded_until: AtomicU64,
    pub restarts: Mutex<RestartWindow>,
    pub worker: OnceLock<Recipient<Run>>,
    /// Index of the router (and thread) that serves this route's worker.
    pub router: usize,
    /// A CPU route's hand-off counters (unused by async routes).
    pub lane: Lane,
    /// An async route's running slots, shared by all its workers (unused by CPU routes).
    pub slots: Slots,
    /// Per-client limits, when the route has `max_per_client`.
    pub shares: Option<Shares>,
}

/// Each client's count of unfinished messages in a route, against the route's `max_per_client`.
/// A client's entry is shared with the [`ShareSlot`]s of its messages; entries back at zero are
/// pruned whenever the map has doubled since the last pruning, so the map follows the clients
/// that have messages in flight.
#[derive(Debug)]
pub(crate) struct Shares {
    max: u64,
    clients: Mutex<HashMap<ClientId, Arc<AtomicU64>>>,
    prune_at: AtomicUsize,
}

/// One message's place in its client's share; given back on drop.
#[derive(Debug)]
pub(crate) struct ShareSlot(Arc<AtomicU64>);

impl Drop for ShareSlot {
    fn drop(&mut self) {
        self.0.fetch_sub(1, Relaxed);
    }
}

impl Shares {
    pub(crate) fn new(max: usize) -> Shares {
        Shares {
            max: max as u64,
            clients: Mutex::new(HashMap::new()),
            prune_at: AtomicUsize::new(1024),
        }
    }

    /// The route's limit.
    pub(crate) fn max(&self) -> u64 {
        self.max
    }

    /// A place for one more message of `client`, or `None` when it holds its share already.
    pub(crate) fn take(&self, client: &ClientId) -> Option<ShareSlot> {
        let mut clients = self.clients.lock();
        if clients.len() >= self.prune_at.load(Relaxed) {
            clients.retain(|_, n| n.load(Relaxed) > 0);
            self.prune_at.store((clients.len() * 2).max(1024), Relaxed);
        }
        let n = clients.entry(client.clone()).or_default();
        n.fetch_update(Relaxed, Relaxed, |c| (c < self.max).then_some(c + 1))
            .ok()
            .map(|_| ShareSlot(n.clone()))
    }
}

/// How a CPU route's worker and the pool threads share its concurrency limit without a message
/// per finished job: the worker counts a job in `handed` when it gives it to the pool, the pool
/// thread counts it out when done, and sends the worker a wake-up only when `waiting` says it
/// holds a backlog (and no wake-up is pending already).
#[derive(Debug, Default)]
pub(crate) struct Lane {
    /// Jobs given to the pool and not yet given back.
    pub handed: AtomicUsize,
    /// Messages in the worker's backlog, as of its last look.
    pub waiting: AtomicUsize,
    /// A wake-up has been sent and not yet handled.
    pub pump_pending: AtomicBool,
}

/// How an async route's workers share its `concurrency`: the route's own worker on an I/O
/// arbiter, and one on each thread that runs the dispatcher's async routes too
/// ([`Dispatcher::attach_current_arbiter`](crate::Dispatcher::attach_current_arbiter)). A worker
/// takes a slot before it starts an attempt and gives it back when the attempt ends. A worker
/// that finds none free queues up here (once); a slot given back while workers wait is handed
/// to the first of them (its `granted` count goes up and it gets an empty [`Run`] to wake it),
/// so the threads take turns in the order they asked, and a busy thread cannot keep the route
/// to itself by taking its slot back before the others hear of it.
pub(crate) struct Slots {
    limit: usize,
    used: AtomicUsize,
    any_waiting: AtomicBool,
    waiting: Mutex<std::collections::VecDeque<Waiting>>,
}

/// A worker waiting for a slot.
struct Waiting {
    worker: usize,
    granted: Arc<AtomicUsize>,
    wake: Recipient<Run>,
}

impl std::fmt::Debug for Slots {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Slots")
            .field("limit", &self.limit)
            .field("used", &self.used.load(Relaxed))
            .finish()
    }
}

impl Slots {
    /// Slots for a route that runs at most `limit` attempts at once.
    pub(crate) fn new(limit: usize) -> Slots {
        Slots {
            limit,
            used: AtomicUsize::new(0),
            any_waiting: AtomicBool::new(false),
            waiting: Mutex::new(Default::default()),
        }
    }

    fn try_take(&self) -> bool {
        self.used
            .fetch_update(SeqCst, SeqCst, |n| (n < self.limit).then_some(n + 1))
            .is_ok()
    }

    /// Takes a slot for `worker`: one handed to it (`granted`), else a free one; else queues
    /// the worker to be handed the next slot given back, and says no. A slot given back between
    /// the try and the queueing is seen by the second try (the giver decrements before it looks
    /// for waiting workers; the waiter announces itself before it tries again).
    pub(crate) fn take(
        &self,
        worker: usize,
        granted: &Arc<AtomicUsize>,
        wake: impl FnOnce() -> Recipient<Run>,
    ) -> bool {
        let handed = || {
            granted
                .fetch_update(SeqCst, SeqCst, |n| n.checked_sub(1))
                .is_ok()
        };
        if handed() || self.try_take() {
            return true;
        }
        {
            let mut waiting = self.waiting.lock();
            if !waiting.iter().any(|w| w.worker == worker) {
                waiting.push_back(Waiting {
                    worker,
                    granted: granted.clone(),
                    wake: wake(),
                });
            }
            self.any_waiting.store(true, SeqCst);
        }
        self.try_take() || handed()
    }

    /// Takes `worker` out of the line (it is going away): no slot can be handed to it after
    /// this returns, so the caller can give back what was handed to it before.
    pub(crate) fn leave(&self, worker: usize) {
        self.waiting.lock().retain(|w| w.worker != worker);
    }

    /// Gives a slot back; if workers wait, takes it again at once for the first of them (one
    /// whose thread has stopped is skipped) and wakes it.
    pub(crate) fn give_back(&self) {
        self.used.fetch_sub(1, SeqCst);
        if !self.any_waiting.load(SeqCst) {
            return;
        }
        let mut waiting = self.waiting.lock();
        while let Some(w) = waiting.pop_front() {
            if !w.wake.connected() {
                continue;
            }
            if !self.try_take() {
                // Taken meanwhile: this worker stays first for the next slot given back.
                waiting.push_front(w);
                break;
            }
            w.granted.fetch_add(1, SeqCst);
            w.wake.do_send(Run::default());
            break;
        }
        if waiting.is_empty() {
            self.any_waiting.store(false, SeqCst);
        }
    }
}

impl Route {
    /// Takes a place in the route if it has one free.
    pub(crate) fn try_reserve(&self) -> bool {
        self.stats
            .in_flight
            .fetch_update(Relaxed, Relaxed, |n| (n < self.capacity).then_some(n + 1))
            .is_ok()
    }

    /// Gives back a place taken by [`Route::try_reserve`] for a message that was not accepted.
    pub(crate) fn release(&self) {
        self.stats.in_flight.fetch_sub(1, Relaxed);
    }

    /// How long the route stays degraded, or `None` if it is not. `since_epoch` is asked
    /// only of a route that has been degraded at some time: admission reads no clock for it.
    pub(crate) fn degraded_for(&self, since_epoch: impl FnOnce() -> Duration) -> Option<Duration> {
        let until = self.degraded_until.load(Relaxed);
        if until == 0 {
            return None;
        }
        let now = since_epoch().as_millis() as u64;
        (until > now).then(|| Duration::from_millis(until - now))
    }

    /// Counts a processor restart against the budget; degrades the route when it is over.
    pub(crate) fn record_restart(&self, epoch: Instant, policy: &RestartPolicy) -> RestartDecision {
        self.stats.restarts.fetch_add(1, Relaxed);
        let now = Instant::now();
        let decision = self.restarts.lock().record(now, policy);
        if decision.degrade {
            let until = (now - epoch + policy.window).as_millis() as u64;
            self.degraded_until.fetch_max(until, Relaxed);
            tracing::warn!(
                kind = %self.kind,
                processor = %self.processor,
                window_ms = policy.window.as_millis() as u64,
                "processor is crash-looping: route degraded, new messages are rejected for one window"
            );
        }
        decision
    }
}

/// A route as reported by [`Dispatcher::routes`](crate::Dispatcher::routes).
#[derive(Debug, Clone, PartialEq, Serialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub struct RouteInfo {
    /// The route key.
    #[cfg_attr(feature = "openapi", schema(value_type = String))]
    pub kind: Kind,
    /// The processor's registered name.
    pub processor: String,
    /// The pool it runs on.
    pub pool: Pool,
    /// Bound on queued + delayed + running.
    pub capacity: u64,
    /// Cap on messages running at once; on a CPU route, on messages given to the pool (running
    /// or waiting for a thread), which is the route's capacity unless it was set.
    pub concurrency: usize,
    /// Run timeout of one attempt, if any.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub timeout_ms: Option<u64>,
    /// Retries after a failed attempt.
    pub retries: u32,
    /// First retry delay.
    pub backoff_ms: u64,
    /// Waiting messages (queued + delayed).
    pub queue_depth: u64,
    /// Of those, the ones waiting for their time (delayed, or a retry in backoff).
    pub delayed: u64,
    /// Running messages.
    pub running: u64,
    /// Processor restarts after panics.
    pub restarts: u64,
    /// Whether the route is rejecting new messages because its processor keeps crashing.
    pub degraded: bool,
    /// The payloads its processor accepts, as a JSON Schema (`{}`: any JSON).
    #[cfg_attr(feature = "openapi", schema(value_type = Object))]
    pub payload_schema: serde_json::Value,
}
