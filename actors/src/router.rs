//! The router actor: forwards each accepted envelope to its route's worker, and holds the ones
//! that must wait (delayed messages and retries in backoff) until their time.
//!
//! There is one router on each thread that hosts the routes' own workers (each I/O arbiter, and
//! the System arbiter when there are CPU routes), serving the workers beside it, so forwarding a
//! message to its worker is a mailbox hop on the same thread, never a thread wake-up. (On a thread
//! attached to the dispatcher, a message that runs at once goes straight to the route's worker on
//! that thread: there is nothing to hold, and the route was found at admission. Everything that
//! waits comes here.) It receives
//! `Dispatch` and `DispatchBatch` from the dispatcher (after admission) and from settling
//! attempts (retries); `Forget` when a delayed message is cancelled; `DropDelayedAfter` at
//! shutdown. Waiting envelopes sit in a min-heap keyed by `(not_before, arrival)`, with one timer
//! armed for the earliest, so they fire in order and never early. A cancelled envelope is freed at
//! once; its heap entry is skipped when its time comes, and the heap is pruned whenever stale
//! entries outnumber live ones. The first router
//! also sweeps expired outcomes from the store once a second.
//!
//! A router holds no state that a crash could corrupt beyond
//! the waiting envelopes, and it runs no user code, so it is not supervised.

use std::cmp::Reverse;
use std::collections::{BinaryHeap, HashMap};
use std::sync::atomic::Ordering::Relaxed;
use std::sync::Arc;
use std::time::{Duration, Instant};

use actix::prelude::*;

use crate::alarm::Alarm;
use crate::envelope::{Envelope, ErrorClass, ErrorInfo, MessageId, Status};
use crate::ledger::{Drain, Ledger};
use crate::processor::worker::Run;
use crate::watchdog::Heartbeat;

/// Route one envelope (now, or at its `not_before`).
#[derive(Message)]
#[rtype(result = "()")]
pub(crate) struct Dispatch(pub Envelope);

/// Route many envelopes at once (from `gather`).
#[derive(Message)]
#[rtype(result = "()")]
pub(crate) struct DispatchBatch(pub Vec<Envelope>);

/// A delayed message was cancelled: drop its envelope.
#[derive(Message)]
#[rtype(result = "()")]
pub(crate) struct Forget(pub MessageId);

/// Shutdown: cancel (class `shutdown`) every waiting envelope due after the deadline and
/// return their ids; with `keep` (durable storage), drop them without ending them (they stay
/// stored, to run after the next start) and return nothing.
#[derive(Message)]
#[rtype(result = "Vec<MessageId>")]
pub(crate) struct DropDelayedAfter {
    pub deadline: Instant,
    pub keep: bool,
}

pub(crate) struct Router {
    ledger: Arc<Ledger>,
    drain: Arc<Drain>,
    /// Boxed: a waiting envelope costs one pointer in the map, not its full size plus the map's
    /// growth slack (this is most of the memory of 100,000 delayed messages).
    waiting: HashMap<MessageId, Box<Envelope>>,
    heap: BinaryHeap<Reverse<(Instant, u64, MessageId)>>,
    arrivals: u64,
    timer: Alarm,
    /// Whether this router sweeps expired outcomes from the store (the first one does).
    sweeps: bool,
    /// Stamped on this router's thread, when the watchdog is on: it reports a thread that stops
    /// stamping.
    beat: Option<Arc<Heartbeat>>,
}

impl Router {
    pub(crate) fn new(
        ledger: Arc<Ledger>,
        drain: Arc<Drain>,
        sweeps: bool,
        beat: Option<Arc<Heartbeat>>,
    ) -> Router {
        Router {
            ledger,
            drain,
            sweeps,
            beat,
            waiting: HashMap::new(),
            heap: BinaryHeap::new(),
            arrivals: 0,
            timer: Alarm::default(),
        }
    }

    /// Holds `env` until its time, or adds it to its route's batch in `ready` (see
    /// [`push_batched`] for `hint`).
    fn route(&mut self, env: Envelope, now: Instant, ready: &mut Vec<Vec<Envelope>>, hint: usize) {
        match env.not_before {
            Some(at) if at > now => {
                self.arrivals += 1;
                self.heap.push(Reverse((at, self.arrivals, env.id)));
                self.ledger.routes[env.route]
                    .stats
                    .delayed
                    .fetch_add(1, Relaxed);
                self.waiting.insert(env.id, Box::new(env));
            }
            _ => {
                let r = env.route;
                push_batched(ready, r, env, hint);
            }
        }
    }

    /// Takes a waiting envelope out (it is due, cancelled or dropped at shutdown).
    fn unwait(&mut self, id: &MessageId) -> Option<Box<Envelope>> {
        let env = self.waiting.remove(id)?;
        self.ledger.routes[env.route]
            .stats
            .delayed
            .fetch_sub(1, Relaxed);
        Some(env)
    }

    fn forward(&self, ready: Vec<Vec<Envelope>>) {
        for batch in ready.into_iter().filter(|b| !b.is_empty()) {
            self.send(batch[0].route, batch);
        }
    }

    /// Hands envelopes of one route to its worker; if the worker has stopped for good (a bug
    /// outside the processor's panic guard), they fail at once instead of waiting for shutdown.
    fn send(&self, route: usize, batch: Vec<Envelope>) {
        let worker = self.ledger.routes[route]
            .worker
            .get()
            .expect("workers are started in build()");
        if worker.connected() {
            worker.do_send(Run::new(batch));
        } else {
            self.ledger.undeliverable(batch, "worker");
        }
    }

    /// Arms the timer for the earliest waiting envelope, if it is earlier than the armed one.
    fn arm(&mut self, ctx: &mut Context<Self>) {
        if let Some(Reverse((at, _, _))) = self.heap.peek().copied() {
            self.timer.arm(at, ctx, |r| &mut r.timer, Self::fire);
        }
    }

    fn fire(&mut self, ctx: &mut Context<Self>) {
        let now = Instant::now();
        let mut ready = Vec::new();
        while let Some(Reverse((at, _, id))) = self.heap.peek().copied() {
            if at > now {
                break;
            }
            self.heap.pop();
            if let Some(env) = self.unwait(&id) {
                self.route(*env, now, &mut ready, 0);
            }
        }
        self.forward(ready);
        self.arm(ctx);
    }
}

/// Adds `env` to `batches[i]`, making the batches up to `i`. A batch is made with room for
/// `hint` envelopes (the most it can get, as far as [`ROOM`]), so a hand-off of up to [`ROOM`]
/// (`gather`'s chunks) does not grow its batches by copying envelopes.
#[inline]
pub(crate) fn push_batched(batches: &mut Vec<Vec<Envelope>>, i: usize, env: Envelope, hint: usize) {
    if batches.len() <= i {
        batches.resize_with(i + 1, Vec::new);
    }
    if batches[i].capacity() == 0 {
        batches[i].reserve_exact(hint.min(ROOM));
    }
    batches[i].push(env);
}

/// The most room a batch is made with, and the size of `gather`'s hand-offs: a larger hand-off
/// (recovery hands on everything it found at once) grows its batches as any `Vec` grows,
/// rather than each route's batch taking room for all of it.
pub(crate) const ROOM: usize = 256;

impl Actor for Router {
    type Context = Context<Self>;

    fn started(&mut self, ctx: &mut Self::Context) {
        if self.sweeps {
            ctx.run_interval(Duration::from_secs(1), |act, _| act.ledger.store.sweep());
        }
        if let Some(beat) = &self.beat {
            beat.stamp();
            ctx.run_interval(crate::watchdog::BEAT, |act, _| {
                if let Some(b) = &act.beat {
                    b.stamp();
                }
            });
        }
    }
}

impl Handler<Dispatch> for Router {
    type Result = ();
    fn handle(&mut self, msg: Dispatch, ctx: &mut Context<Self>) {
        let now = Instant::now();
        if msg.0.not_before.is_none_or(|at| at <= now) {
            // The common case, one message that may run now: straight on, one allocation.
            self.send(msg.0.route, vec![msg.0]);
            return;
        }
        let mut ready = Vec::new();
        self.route(msg.0, now, &mut ready, 1);
        self.forward(ready);
        self.arm(ctx);
    }
}

impl Handler<DispatchBatch> for Router {
    type Result = ();
    fn handle(&mut self, msg: DispatchBatch, ctx: &mut Context<Self>) {
        let now = Instant::now();
        let mut ready = Vec::new();
        let hint = msg.0.len();
        for env in msg.0 {
            self.route(env, now, &mut ready, hint);
        }
        self.forward(ready);
        self.arm(ctx);
    }
}

impl Handler<Forget> for Router {
    type Result = ();
    fn handle(&mut self, msg: Forget, _: &mut Context<Self>) {
        self.unwait(&msg.0);
        // The heap entry of a cancelled envelope would stay until its due time (up to the
        // longest delay): rebuild the heap once it holds as many stale entries as live ones, so
        // memory follows what is still waiting (amortised O(1) per cancel).
        if self.heap.len() > 2 * self.waiting.len() + 64 {
            let waiting = &self.waiting;
            self.heap
                .retain(|Reverse((_, _, id))| waiting.contains_key(id));
        }
    }
}

impl Handler<DropDelayedAfter> for Router {
    type Result = MessageResult<DropDelayedAfter>;
    fn handle(&mut self, msg: DropDelayedAfter, _: &mut Context<Self>) -> Self::Result {
        let late: Vec<MessageId> = self
            .waiting
            .iter()
            .filter(|(_, env)| env.not_before.is_some_and(|at| at > msg.deadline))
            .map(|(id, _)| *id)
            .collect();
        let mut dropped = Vec::with_capacity(late.len());
        for id in late {
            let env = self.unwait(&id).expect("listed above");
            if msg.keep {
                self.drain
                    .kept
                    .fetch_add(1, std::sync::atomic::Ordering::SeqCst);
                continue;
            }
            let error = ErrorInfo::new(
                ErrorClass::Shutdown,
                "the dispatcher shut down before the message was due",
            );
            if self
                .ledger
                .finish(env.route, &env.ticket, Status::Cancelled, None, Some(error))
                .is_some()
            {
                dropped.push(id);
            }
        }
        MessageResult(dropped)
    }
}
