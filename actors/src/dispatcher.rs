//! The [`Dispatcher`]: the public handle to a running Mailroom, and its builder.
//!
//! Admission happens right here, synchronously, in the caller's thread: the kind is routed, the
//! timing fields and the payload are validated, and the route's place counter is taken with one
//! atomic operation. Only then is the message recorded in the store and handed to the mailbox of
//! the router on its route worker's thread, or, on a thread attached with
//! [`Dispatcher::attach_current_arbiter`] (each HTTP worker of the server), straight to its
//! route's worker on the caller's own thread when it may run at once. A refused message comes
//! back to the caller inside
//! [`Rejected`]; an accepted one always reaches exactly one terminal state (the store's
//! compare-and-set transitions guarantee it).
//!
//! Build a dispatcher inside a running actix `System`: it starts the I/O arbiters, one
//! supervised worker per route (async routes on the I/O arbiters, CPU routes on the System
//! arbiter, where actix forwards every message to a `SyncArbiter`), one router beside the
//! workers on each of those threads (so forwarding never costs a thread wake-up) and, when a
//! route needs it, the CPU `SyncArbiter` pool.

use std::collections::HashMap;
use std::future::poll_fn;
use std::sync::atomic::{AtomicU64, Ordering::Relaxed, Ordering::SeqCst};
use std::sync::{Arc, OnceLock};
use std::time::{Duration, Instant};

use actix::prelude::*;
use parking_lot::Mutex;

use crate::commit::{Commit, Setter};
use crate::dead_letters::{DeadLetter, DeadLetters};
use crate::envelope::{
    unix_ms, Envelope, ErrorClass, ErrorInfo, Kind, Message, MessageId, Outcome, Source, Status,
};
use crate::error::{BuildError, CancelError, Rejected, ReplayError};
use crate::ledger::{Drain, Ledger};
use crate::metrics::{LedgerSnapshot, RejectReason, RouteStats};
use crate::processor::cpu::CpuPool;
use crate::processor::worker::{Exec, Run, Station, Worker};
use crate::processor::{builtin, fetch, Make, Pool, Processor};
use crate::recovery::Recovered;
use crate::route::{Route, RouteInfo, Shares, Slots};
use crate::router::{push_batched, Dispatch, DispatchBatch, DropDelayedAfter, Forget, Router};
use crate::settings::{RouteSettings, Settings};
use crate::source::timer::{Schedule, ScheduleError, ScheduleHandle, TimerSource};
use crate::storage::{Memory, Receipt, Record, Storage, StorageError};
use crate::store::{Gathered, MemoryStore, NewRecord, Waiter};
use crate::watchdog::Watch;

/// The dispatcher's own state: admission (routing table and index through the ledger), the
/// routers to hand messages to, and its life. The runtime actors do not see it: routers get the
/// ledger, workers a `Station` (see `processor/worker.rs`), processors a [`Submitter`].
pub(crate) struct Core {
    pub settings: Settings,
    pub ledger: Arc<Ledger>,
    pub drain: Arc<Drain>,
    /// One router per thread that hosts route workers: one per I/O arbiter, then (when there
    /// are CPU routes) one on the System arbiter. A route's `router` indexes it.
    pub routers: Vec<Addr<Router>>,
    pub rejected_no_route: AtomicU64,
    pub rejected_malformed: AtomicU64,
    pub epoch: Instant,
    pub io_arbiters: Vec<ArbiterHandle>,
    pub timers: Mutex<Vec<Addr<TimerSource>>>,
    /// Each async route's processor factory (`None` for CPU routes), for the workers started on
    /// attached threads ([`Dispatcher::attach_current_arbiter`]).
    pub async_makes: Vec<Option<Make>>,
    /// The threads that run actors, watched for stalls.
    pub watch: Arc<Watch>,
}

/// What a thread attached to a dispatcher runs for it ([`Dispatcher::attach_current_arbiter`]):
/// per route, the route's worker on this thread and that worker's station (`None` for CPU
/// routes).
struct Attached {
    /// The dispatcher's `Core` address.
    core: usize,
    workers: Vec<Option<(Recipient<Run>, Arc<Station>)>>,
}

thread_local! {
    static ATTACHED: std::cell::RefCell<Vec<Attached>> = const { std::cell::RefCell::new(Vec::new()) };
}

/// Whether this thread is attached to any dispatcher.
fn attached_here() -> bool {
    ATTACHED.with(|a| !a.borrow().is_empty())
}

/// An admitted message whose `Accepted` record is on its way to disk. Dropped before it is
/// taken (the caller's future went away while waiting), it finishes as a task on its route's
/// I/O arbiter (a thread of its own if that has stopped): waits for the record, then hands the
/// message on, or withdraws it if the write failed. So a message is never left admitted and
/// undelivered, and callers that give up hold no thread each.
struct Pending {
    core: Arc<Core>,
    env: Option<Envelope>,
    receipt: Receipt,
}

impl Drop for Pending {
    fn drop(&mut self) {
        let Some(env) = self.env.take() else {
            return;
        };
        let core = self.core.clone();
        let receipt = std::mem::replace(&mut self.receipt, Receipt::ready(Ok(())));
        receipt.then_on(self.core.home(env.route), move |durable| match durable {
            Ok(()) => core.hand_off(env),
            Err(e) => {
                core.ledger.withdraw(env, e);
            }
        });
    }
}

/// Counts an admission in progress for as long as it lives.
pub(crate) struct Admitting<'a>(&'a AtomicU64);

impl<'a> Admitting<'a> {
    fn enter(counter: &'a AtomicU64) -> Admitting<'a> {
        counter.fetch_add(1, SeqCst);
        Admitting(counter)
    }
}

impl Drop for Admitting<'_> {
    fn drop(&mut self) {
        self.0.fetch_sub(1, SeqCst);
    }
}

impl Core {
    /// The router on the thread of `route`'s worker.
    fn router(&self, route: usize) -> &Addr<Router> {
        &self.routers[self.ledger.routes[route].router]
    }

    /// The I/O arbiter of `route`'s worker (the first one for a CPU route): where what a caller
    /// left behind finishes (see [`Receipt::then_on`]).
    fn home(&self, route: usize) -> Option<&ArbiterHandle> {
        let router = self.ledger.routes[route].router;
        self.io_arbiters.get(router).or(self.io_arbiters.first())
    }

    /// Hands a newly accepted envelope on: on a thread attached to this dispatcher, an async
    /// message that may run now goes to its route's worker on this very thread (no thread hop at
    /// all); everything else goes to the router on its route worker's thread (which forwards it
    /// at once, or holds it until its delay is over): one thread wake-up.
    fn hand_off(&self, env: Envelope) {
        // The check first: a thread that is not attached pays no allocation for the attempt.
        let env = if env.not_before.is_none() && attached_here() {
            match self.run_here(env.route, vec![env]) {
                Ok(()) => return,
                Err(mut envs) => envs.pop().expect("handed back whole"),
            }
        } else {
            env
        };
        let router = self.router(env.route);
        if router.connected() {
            router.do_send(Dispatch(env));
        } else {
            self.ledger.undeliverable(vec![env], "router");
        }
    }

    /// Gives envelopes of `route` that may run now to the route's worker on this thread, if the
    /// thread is attached to this dispatcher and runs that route (an async one); else hands
    /// them back. On an attached thread this is the router's work for messages that run at
    /// once: the route was found at admission, and the worker is on this thread.
    fn run_here(&self, route: usize, envs: Vec<Envelope>) -> Result<(), Vec<Envelope>> {
        let key = self as *const Core as usize;
        ATTACHED.with(|attached| {
            let attached = attached.borrow();
            let here = attached
                .iter()
                .find(|a| a.core == key)
                .and_then(|a| a.workers[route].as_ref());
            match here {
                Some((worker, station)) if worker.connected() => {
                    worker.do_send(Run::attached(envs, station.clone()));
                    Ok(())
                }
                _ => Err(envs),
            }
        })
    }

    /// [`Core::hand_off`] for many: to this thread's workers if it is attached, else one
    /// `DispatchBatch` per router.
    pub(crate) fn hand_off_batch(&self, envs: Vec<Envelope>) {
        let mut local: Vec<Vec<Envelope>> = Vec::new();
        let mut per_router: Vec<Vec<Envelope>> = Vec::new();
        let attached = attached_here();
        let hint = envs.len();
        for env in envs {
            if attached && env.not_before.is_none() && self.async_makes[env.route].is_some() {
                push_batched(&mut local, env.route, env, hint);
                continue;
            }
            let r = self.ledger.routes[env.route].router;
            push_batched(&mut per_router, r, env, hint);
        }
        for (route, batch) in local.into_iter().enumerate() {
            if batch.is_empty() {
                continue;
            }
            if let Err(batch) = self.run_here(route, batch) {
                let r = self.ledger.routes[route].router;
                if per_router.len() <= r {
                    per_router.resize_with(r + 1, Vec::new);
                }
                per_router[r].extend(batch);
            }
        }
        for (r, batch) in per_router.into_iter().enumerate() {
            if batch.is_empty() {
                continue;
            }
            let router = &self.routers[r];
            if router.connected() {
                router.do_send(DispatchBatch(batch));
            } else {
                self.ledger.undeliverable(batch, "router");
            }
        }
    }

    /// Admits a message: checks it, registers it, and writes its `Accepted` record (with
    /// durable storage). `wait_durable` says whether the caller waits for the record before it
    /// hands the message on or answers; when it does not, or when the message is one that
    /// begins early and whose caller waits for its outcome anyway, the record is written
    /// lazily (in no hurry: it shares a commit with others).
    fn admit(
        &self,
        msg: Message,
        waiter: Option<Waiter>,
        wait_durable: bool,
    ) -> Result<Admitted, Rejected> {
        let Some(&index) = self.ledger.by_kind.get(&*msg.kind) else {
            self.rejected_no_route.fetch_add(1, Relaxed);
            return Err(Rejected::NoRoute(Box::new(msg)));
        };
        let route = &self.ledger.routes[index];
        if self.drain.draining.load(SeqCst) {
            route.stats.rejected(RejectReason::Draining);
            return Err(Rejected::ShuttingDown(Box::new(msg)));
        }
        if let Some(left) = route.degraded_for(|| self.epoch.elapsed()) {
            route.stats.rejected(RejectReason::Degraded);
            return Err(Rejected::Degraded {
                message: Box::new(msg),
                retry_after_ms: left.as_millis() as u64,
            });
        }
        if self.ledger.durable {
            if let Err(error) = self.ledger.storage.admitting() {
                route.stats.rejected(RejectReason::Storage);
                return Err(Rejected::Storage {
                    message: Box::new(msg),
                    error,
                });
            }
        }
        if let Err(reason) = self.check(route, &msg) {
            route.stats.rejected(RejectReason::Invalid);
            return Err(Rejected::Invalid {
                message: Box::new(msg),
                reason,
            });
        }
        // Decided once, before anything is taken or written (the check may be the
        // application's): a pure message with no delay, whose caller waits for its record,
        // begins before the record is on disk.
        let pure = wait_durable && msg.delay.is_none() && route.purity.of(&msg.payload);
        let share = match (&route.shares, &msg.client) {
            (Some(shares), Some(client)) => match shares.take(client) {
                Some(slot) => Some(slot),
                None => {
                    route.stats.rejected(RejectReason::ClientShare);
                    return Err(Rejected::ClientShareFull {
                        limit: shares.max(),
                        message: Box::new(msg),
                    });
                }
            },
            _ => None,
        };
        if !route.try_reserve() {
            route.stats.rejected(RejectReason::Full);
            return Err(Rejected::QueueFull {
                message: Box::new(msg),
                capacity: route.capacity as usize,
            });
        }
        let id = MessageId::next();
        let now = Instant::now();
        // A duplicate of this key is answered only once this message's record is durable, and
        // refused if it never is: the commit says which (set below, from the record's receipt).
        let keyed = (self.ledger.durable && msg.key.is_some()).then(Commit::new);
        let record = NewRecord {
            id,
            kind: route.kind,
            source: msg.source,
            key: msg.key.clone(),
            delayed: msg.delay.is_some(),
            replay_of: msg.replay_of,
            accepted_at_ms: id.timestamp_ms(),
            accepted: now,
            attempts: 0,
            commit: keyed.clone(),
        };
        let has_waiter = waiter.is_some();
        let ticket = match self.ledger.store.insert(record, waiter) {
            Ok(ticket) => ticket,
            Err((existing, waiter, first)) => {
                route.release();
                if let Some(w) = waiter {
                    if let Err(w) = self.ledger.store.watch(existing, w) {
                        w.notify(&Arc::new(lost_outcome(existing, route.kind)));
                    }
                }
                return Ok(Admitted::Duplicate(
                    existing,
                    route.kind,
                    Box::new(msg),
                    first,
                ));
            }
        };
        route.stats.accepted.fetch_add(1, Relaxed);
        let mut env = Envelope {
            id,
            kind: route.kind,
            payload: msg.payload,
            source: msg.source,
            attempt: 0,
            not_before: msg.delay.map(|d| now + d),
            timeout: msg.timeout,
            key: msg.key,
            replay_of: msg.replay_of,
            route: index,
            ticket,
            history: Vec::new(),
            _share: share,
            commit: None,
        };
        let lazy = !wait_durable || (pure && has_waiter);
        let receipt = self.ledger.durable.then(|| {
            let receipt = self.ledger.write_accepted(
                &mut env,
                msg.delay.map(|d| unix_ms() + crate::ledger::millis_u64(d)),
                lazy,
            );
            match keyed {
                None => receipt,
                // Set by a task of its own, so it is set whether or not this message's caller
                // waits for the receipt (a `submit` does not); the caller gets the result after.
                Some(commit) => {
                    let (after, settle) = Receipt::pending();
                    receipt.then_on(self.home(index), move |result| {
                        commit.set(result.clone());
                        settle.settle(result);
                    });
                    after
                }
            }
        });
        Ok(Admitted::New(env, receipt, pure))
    }

    pub(crate) fn check(&self, route: &Route, msg: &Message) -> Result<(), String> {
        if let Some(d) = msg.delay {
            if d > self.settings.max_delay {
                return Err(format!(
                    "delay of {} ms is over the limit of {} ms",
                    d.as_millis(),
                    self.settings.max_delay.as_millis()
                ));
            }
        }
        if let Some(t) = msg.timeout {
            if t.is_zero() || t > self.settings.max_timeout {
                return Err(format!(
                    "timeout must be between 1 and {} ms, got {} ms",
                    self.settings.max_timeout.as_millis(),
                    t.as_millis()
                ));
            }
        }
        if let Some(key) = &msg.key {
            if key.is_empty() || key.chars().count() > 256 {
                return Err("key must be 1 to 256 characters".to_owned());
            }
        }
        match &route.validate {
            Some(v) => {
                v(&msg.payload).map_err(|e| format!("invalid payload for {}: {e}", route.kind))
            }
            None => Ok(()),
        }
    }
}

enum Admitted {
    /// A new message, with the receipt of its `Accepted` record when storage is durable, and
    /// whether it begins before that record is on disk (pure, with no delay).
    New(Envelope, Option<Receipt>, bool),
    /// An idempotency key that is already known: the earlier message, and its commit (see
    /// [`NewRecord::commit`]).
    Duplicate(MessageId, Kind, Box<Message>, Option<Arc<Commit>>),
}

fn lost_outcome(id: MessageId, kind: Kind) -> Outcome {
    Outcome {
        id,
        kind,
        status: Status::Cancelled,
        result: None,
        error: Some(ErrorInfo::new(
            ErrorClass::Shutdown,
            "the outcome is no longer available (the dispatcher stopped or the record expired)",
        )),
        attempts: 0,
        source: Source::Library,
        accepted_at_ms: id.timestamp_ms(),
        timings: Default::default(),
        replay_of: None,
    }
}

/// The handle to a running Mailroom: submit messages, await outcomes, inspect and shut down.
/// Cheap to clone; every clone drives the same routes.
#[derive(Clone)]
pub struct Dispatcher {
    pub(crate) core: Arc<Core>,
}

impl std::fmt::Debug for Dispatcher {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Dispatcher")
            .field("routes", &self.core.ledger.routes.len())
            .finish()
    }
}

/// A submit-only handle to the dispatcher a processor runs in ([`Job::submitter`]): a processor
/// may submit further messages and await them (the seed's `await` chain), not shut the
/// dispatcher down, cancel others' messages or read its dead letters.
///
/// [`Job::submitter`]: crate::Job::submitter
#[derive(Clone, Debug)]
pub struct Submitter(pub(crate) Dispatcher);

impl Submitter {
    /// [`Dispatcher::submit`].
    pub fn submit(&self, msg: Message) -> Result<MessageId, Rejected> {
        self.0.submit(msg)
    }

    /// [`Dispatcher::accept`].
    pub async fn accept(&self, msg: Message) -> Result<MessageId, Rejected> {
        self.0.accept(msg).await
    }

    /// [`Dispatcher::send`].
    pub async fn send(&self, msg: Message) -> Result<Arc<Outcome>, Rejected> {
        self.0.send(msg).await
    }

    /// [`Dispatcher::send_timeout`].
    pub async fn send_timeout(
        &self,
        msg: Message,
        max: Duration,
    ) -> Result<Arc<Outcome>, Rejected> {
        self.0.send_timeout(msg, max).await
    }

    /// [`Dispatcher::call_later`].
    pub fn call_later(&self, delay: Duration, msg: Message) -> Result<MessageId, Rejected> {
        self.0.call_later(delay, msg)
    }

    /// [`Dispatcher::gather`].
    pub async fn gather(&self, msgs: Vec<Message>) -> Vec<Result<Arc<Outcome>, Rejected>> {
        self.0.gather(msgs).await
    }

    /// [`Dispatcher::status`].
    pub fn status(&self, id: MessageId) -> Option<Arc<Outcome>> {
        self.0.status(id)
    }

    /// [`Dispatcher::wait`].
    pub async fn wait(&self, id: MessageId, max: Duration) -> Option<Arc<Outcome>> {
        self.0.wait(id, max).await
    }
}

/// A dead letter being replayed: dropped before the replay ended, it ends it as refused (the
/// letter stays, and can be replayed again).
struct Replaying(Arc<Ledger>, Option<MessageId>);

impl Drop for Replaying {
    fn drop(&mut self) {
        if let Some(id) = self.1.take() {
            self.0.dead.end_replay(id, false);
        }
    }
}

/// What [`Dispatcher::shutdown`] did.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ShutdownReport {
    /// Messages that finished normally while draining.
    pub drained: u64,
    /// Messages cancelled because they could not finish in time (class `shutdown`); with
    /// durable storage, none: see `kept`.
    pub unfinished: Vec<MessageId>,
    /// With durable storage: messages that could not finish in time and stay stored, to run
    /// after the next start (delayed ones at their due time; running ones again).
    pub kept: Vec<MessageId>,
    /// How long the drain took.
    pub elapsed: Duration,
}

impl Dispatcher {
    /// A builder with the built-in processors registered (and no routes yet).
    pub fn builder(settings: Settings) -> DispatcherBuilder {
        let fetch = fetch::fetch(settings.fetch.clone());
        let mut b = DispatcherBuilder {
            settings,
            processors: HashMap::new(),
            routes: Vec::new(),
            storage: None,
        };
        for p in [
            builtin::echo(),
            builtin::sleep(),
            fetch,
            builtin::primes(),
            builtin::hash(),
            builtin::chaos(),
        ] {
            b = b.processor(p);
        }
        b
    }

    /// Admits a message and hands it to its route's router. The admission is counted while it
    /// is in progress, so `shutdown` cannot miss a message accepted just as draining begins.
    fn enqueue(&self, msg: Message, waiter: Option<Waiter>) -> Result<(MessageId, Kind), Rejected> {
        let _admitting = Admitting::enter(&self.core.drain.admitting);
        match self.core.admit(msg, waiter, false)? {
            Admitted::New(env, receipt, _) => {
                drop(receipt); // nobody waits: its record rides the next commit
                let (id, kind) = (env.id, env.kind);
                self.core.hand_off(env);
                Ok((id, kind))
            }
            Admitted::Duplicate(id, kind, ..) => Ok((id, kind)),
        }
    }

    /// [`Dispatcher::enqueue`] that, with durable storage, hands the message on only once its
    /// record is durable, and refuses it ([`Rejected::Storage`]) when the record cannot be
    /// written. A [pure](Processor::pure_when) message is handed on at once; it is
    /// answered, and its worker settles it, only once the record is durable.
    async fn enqueue_durably(
        &self,
        msg: Message,
        waiter: Option<Waiter>,
    ) -> Result<(MessageId, Kind), Rejected> {
        let _admitting = Admitting::enter(&self.core.drain.admitting);
        match self.core.admit(msg, waiter, true)? {
            Admitted::New(env, None, _) => {
                let (id, kind) = (env.id, env.kind);
                self.core.hand_off(env);
                Ok((id, kind))
            }
            Admitted::New(mut env, Some(receipt), true) => {
                // A pure message begins now; its worker settles it only once the
                // record is durable, and takes it back if the record could not be written. The
                // caller is answered after the record, as on the path below.
                let (id, kind, route, ticket) = (env.id, env.kind, env.route, env.ticket.clone());
                // Kept to hand back if the record fails: the envelope goes to the worker.
                let refused = env.message();
                let commit = Commit::new();
                env.commit = Some(commit.clone());
                let setter = Setter {
                    commit,
                    receipt: Some(receipt),
                    arbiter: self.core.home(route),
                };
                self.core.hand_off(env);
                match setter.resolve().await {
                    Ok(()) => Ok((id, kind)),
                    // Taken back now (a cancel or a duplicate key finds nothing); the worker,
                    // when it settles, finds it taken.
                    Err(error) => Err(self.core.ledger.refuse(route, &ticket, refused, error)),
                }
            }
            Admitted::New(env, Some(receipt), false) => {
                let (id, kind) = (env.id, env.kind);
                // Held by a guard: if this future is dropped while it waits (a caller that
                // timed out), the guard still hands the message on or withdraws it.
                let mut pending = Pending {
                    core: self.core.clone(),
                    env: Some(env),
                    receipt,
                };
                let durable = pending.receipt.wait().await;
                let env = pending.env.take().expect("taken only here or on drop");
                match durable {
                    Ok(()) => {
                        self.core.hand_off(env);
                        Ok((id, kind))
                    }
                    Err(e) => Err(self.core.ledger.withdraw(env, e)),
                }
            }
            Admitted::Duplicate(id, kind, msg, first) => {
                if self.core.ledger.durable {
                    // The first message's record may still be on its way to disk: answer once
                    // it is there (and refuse if it never got there). One recovered at start
                    // has no commit; its record is on disk, and a flush covers any record of it
                    // written since.
                    let durable = match first {
                        Some(commit) => {
                            if commit.is_pending() {
                                // Its record may be held to share a commit: not now.
                                self.core.ledger.hurry();
                            }
                            commit.settled().await;
                            commit.get().unwrap_or(Err(StorageError::Closed))
                        }
                        None => self.core.ledger.storage.flush().durable().await,
                    };
                    if let Err(error) = durable {
                        return Err(Rejected::Storage {
                            message: msg,
                            error,
                        });
                    }
                    if self.core.ledger.store.get(id).is_none() {
                        return Err(Rejected::Storage {
                            message: msg,
                            error: StorageError::Closed,
                        });
                    }
                }
                Ok((id, kind))
            }
        }
    }

    /// Runs this dispatcher's async routes on the calling thread's actix arbiter too: from now
    /// on, a message submitted on this thread that may run at once (no delay) goes straight to a
    /// supervised worker of its route started here, so it is admitted, run and answered on this
    /// thread, with no hand-off to another. Call it once on each thread that submits much, e.g.
    /// in an actix-web `App` factory, which runs on every HTTP worker.
    ///
    /// - A route's `concurrency` stays one limit over all the threads that run it; threads
    ///   waiting for a slot get the freed ones in turn.
    /// - Delayed messages and retries wait on the route's own router and run on its I/O
    ///   arbiter, as do messages submitted on threads that are not attached; CPU routes run on
    ///   their pool as always.
    /// - Each attached thread builds its own instance of each async processor (as a restart
    ///   does): state kept inside a processor, such as `fetch`'s connection pool and its
    ///   `max_connections`, is per thread.
    /// - An async processor that blocks its thread now blocks this one too (on an HTTP worker,
    ///   its requests): blocking work belongs on a CPU route. The watchdog reports such a thread
    ///   ([`IoSettings::stall_warn`](crate::IoSettings::stall_warn)).
    /// - If the thread's arbiter stops while the dispatcher runs, what it had not started goes
    ///   to the routes' own workers, and what it was running ends failed (class `error`), or is
    ///   retried if the route retries. Once shutdown has begun, shutdown settles them.
    ///
    /// Returns `false` and does nothing outside an actix arbiter, when the thread is attached
    /// already, or when there is no async route.
    pub fn attach_current_arbiter(&self) -> bool {
        let core = &self.core;
        let key = Arc::as_ptr(core) as usize;
        let live = |a: &Attached| {
            a.workers
                .iter()
                .flatten()
                .any(|(worker, _)| worker.connected())
        };
        if actix_rt::Arbiter::try_current().is_none()
            || core.async_makes.iter().all(Option::is_none)
            || ATTACHED.with(|a| a.borrow().iter().any(|a| a.core == key && live(a)))
        {
            return false;
        }
        let thread = std::thread::current();
        let name = thread.name().unwrap_or("unnamed").to_owned();
        let mut workers = Vec::with_capacity(core.async_makes.len());
        for (i, make) in core.async_makes.iter().enumerate() {
            let Some(Make::Async(make)) = make else {
                workers.push(None);
                continue;
            };
            // Retries go back through the route's own router, where cancels find them.
            let station = Arc::new(Station {
                ledger: core.ledger.clone(),
                drain: core.drain.clone(),
                router: core.router(i).clone(),
                restart: core.settings.restart.clone(),
                epoch: core.epoch,
                submitter: Submitter(self.clone()),
                route: i,
            });
            let exec = Exec::Async(make.clone());
            let st = station.clone();
            let addr = Supervisor::start(move |_| Worker::attached(st, exec));
            workers.push(Some((addr.recipient(), station)));
        }
        if let Some(beat) = core.watch.heartbeat(name.clone()) {
            // Ends with the thread's runtime; the watchdog then stops watching it.
            actix_rt::spawn(async move {
                loop {
                    beat.stamp();
                    actix_rt::time::sleep(crate::watchdog::BEAT).await;
                }
            });
        }
        ATTACHED.with(|a| {
            let mut a = a.borrow_mut();
            a.retain(|a| a.core != key);
            a.push(Attached { core: key, workers });
        });
        tracing::debug!(thread = %name, "thread attached: it runs the async routes too");
        true
    }

    /// Submits a message and returns its id once it is accepted. With an idempotency key that is
    /// already known, returns the earlier message's id.
    ///
    /// With durable storage (a journal), the message's record is on its way to disk but may not
    /// be there yet when this returns (a journal holds it up to 5 ms to write it with others):
    /// use [`Dispatcher::accept`] for a promise that survives a crash.
    pub fn submit(&self, msg: Message) -> Result<MessageId, Rejected> {
        self.enqueue(msg, None).map(|(id, _)| id)
    }

    /// Submits a message and returns its id once it is accepted and, with durable storage, once
    /// its record is on disk (as durable as the storage's fsync mode promises): an `Ok` here
    /// survives a crash. Concurrent calls share one fsync. A record that cannot be written
    /// refuses the message with [`Rejected::Storage`]; nothing of it is kept.
    pub async fn accept(&self, msg: Message) -> Result<MessageId, Rejected> {
        self.enqueue_durably(msg, None).await.map(|(id, _)| id)
    }

    /// Submits a message and waits for its outcome (asyncio's `await`).
    pub async fn send(&self, msg: Message) -> Result<Arc<Outcome>, Rejected> {
        let (waiter, rx) = Waiter::channel();
        let (id, kind) = self.enqueue_durably(msg, Some(waiter)).await?;
        Ok(rx
            .await
            .unwrap_or_else(|_| Arc::new(lost_outcome(id, kind))))
    }

    /// Submits a message and waits up to `max` for its outcome; when `max` elapses first, returns
    /// its state at that moment (queued, delayed or running). Used by `?wait=true`.
    pub async fn send_timeout(
        &self,
        msg: Message,
        max: Duration,
    ) -> Result<Arc<Outcome>, Rejected> {
        let (waiter, rx) = Waiter::channel();
        let (id, kind) = self.enqueue_durably(msg, Some(waiter)).await?;
        Ok(match actix_rt::time::timeout(max, rx).await {
            Ok(Ok(outcome)) => outcome,
            Ok(Err(_)) => Arc::new(lost_outcome(id, kind)),
            Err(_) => self
                .core
                .ledger
                .store
                .get(id)
                .unwrap_or_else(|| Arc::new(lost_outcome(id, kind))),
        })
    }

    /// Submits `delay` from now (asyncio's `call_later`).
    pub fn call_later(&self, delay: Duration, msg: Message) -> Result<MessageId, Rejected> {
        self.submit(msg.delay(delay))
    }

    /// Submits many messages at once and waits for all their outcomes, in the order given
    /// (asyncio's `gather`). A rejected or failed message does not sink the others.
    pub async fn gather(&self, msgs: Vec<Message>) -> Vec<Result<Arc<Outcome>, Rejected>> {
        let n = msgs.len();
        let gathered = Gathered::new(n);
        // Rejections are rare: kept aside by index rather than in a slot per message.
        let mut rejected: Vec<(usize, Rejected)> = Vec::new();
        // Hand envelopes on in chunks as they are admitted, so the workers start while admission
        // is still going (pipelining across threads). On an attached thread the chunks wait in
        // this thread's workers' mailboxes until admission is done.
        const CHUNK: usize = crate::router::ROOM;
        let mut batch = Vec::with_capacity(CHUNK.min(n));
        let admitting = Admitting::enter(&self.core.drain.admitting);
        for (i, msg) in msgs.into_iter().enumerate() {
            match self
                .core
                .admit(msg, Some(Waiter::slot(&gathered, i)), false)
            {
                // Not waited for: the outcomes are the answer, and a message that ran needs no
                // promise that it will run.
                Ok(Admitted::New(env, receipt, _)) => {
                    drop(receipt); // nobody waits: its record rides the next commit
                    batch.push(env);
                    if batch.len() == CHUNK {
                        let full = std::mem::replace(&mut batch, Vec::with_capacity(CHUNK));
                        self.core.hand_off_batch(full);
                    }
                }
                Ok(Admitted::Duplicate(..)) => {}
                Err(r) => {
                    gathered.skip();
                    rejected.push((i, r));
                }
            }
        }
        if !batch.is_empty() {
            self.core.hand_off_batch(batch);
        }
        drop(admitting);
        poll_fn(|cx| gathered.poll_done(cx)).await;
        let mut rejected = rejected.into_iter().peekable();
        (0..n)
            .map(|i| match rejected.next_if(|(at, _)| *at == i) {
                Some((_, r)) => Err(r),
                None => Ok(gathered.take(i).expect("every accepted slot is filled")),
            })
            .collect()
    }

    /// The message's current state (`None` if unknown or evicted).
    pub fn status(&self, id: MessageId) -> Option<Arc<Outcome>> {
        self.core.ledger.store.get(id)
    }

    /// Waits up to `max` for the message to finish and returns its state at that point
    /// (finished, or still unfinished when `max` elapsed); `None` if unknown.
    pub async fn wait(&self, id: MessageId, max: Duration) -> Option<Arc<Outcome>> {
        let (waiter, rx) = Waiter::channel();
        if self.core.ledger.store.watch(id, waiter).is_err() {
            return None;
        }
        match actix_rt::time::timeout(max, rx).await {
            Ok(Ok(outcome)) => Some(outcome),
            _ => self.core.ledger.store.get(id),
        }
    }

    /// Cancels a queued or delayed message. Running and finished messages cannot be cancelled.
    pub fn cancel(&self, id: MessageId) -> Result<Arc<Outcome>, CancelError> {
        let outcome = self.core.ledger.cancel(
            id,
            ErrorInfo::new(ErrorClass::Cancelled, "cancelled before it ran"),
        )?;
        // Its router frees the waiting envelope now rather than at its due time.
        if let Some(&route) = self.core.ledger.by_kind.get(outcome.kind.as_str()) {
            self.core.router(route).do_send(Forget(id));
        }
        Ok(outcome)
    }

    /// The routing table with live queue depths and restart counts.
    pub fn routes(&self) -> Vec<RouteInfo> {
        let since = self.core.epoch.elapsed();
        self.core
            .ledger
            .routes
            .iter()
            .map(|r| {
                let s = r.stats.snapshot(r.kind, &r.processor);
                RouteInfo {
                    kind: r.kind,
                    processor: r.processor.clone(),
                    pool: r.pool,
                    capacity: r.capacity,
                    concurrency: r.concurrency,
                    timeout_ms: r.timeout.map(|t| t.as_millis() as u64),
                    retries: r.retries,
                    backoff_ms: r.backoff.as_millis() as u64,
                    queue_depth: s.queue_depth,
                    delayed: s.delayed,
                    running: s.running,
                    restarts: s.restarts,
                    degraded: r.degraded_for(|| since).is_some(),
                    payload_schema: r.schema.clone().unwrap_or_else(|| serde_json::json!({})),
                }
            })
            .collect()
    }

    /// Messages accepted and not finished, over every route (atomics only).
    fn in_flight(&self) -> u64 {
        self.core
            .ledger
            .routes
            .iter()
            .map(|r| r.stats.in_flight.load(Relaxed))
            .sum()
    }

    /// Counts a submission a source refused before it could be admitted (malformed JSON, a
    /// missing or mistyped field): it shows in [`LedgerSnapshot::rejected_malformed`].
    pub fn refused_malformed(&self) {
        self.core.rejected_malformed.fetch_add(1, Relaxed);
    }

    /// The ledger: per-kind counters, gauges and latency histograms.
    pub fn stats(&self) -> LedgerSnapshot {
        LedgerSnapshot {
            kinds: self
                .core
                .ledger
                .routes
                .iter()
                .map(|r| r.stats.snapshot(r.kind, &r.processor))
                .collect(),
            rejected_no_route: self.core.rejected_no_route.load(Relaxed),
            rejected_malformed: self.core.rejected_malformed.load(Relaxed),
            stored: self.core.ledger.store.len() as u64,
            dead_letters: self.core.ledger.dead.len() as u64,
            storage: self.core.ledger.storage.stats(),
            stalls: self.core.watch.stalls(),
        }
    }

    /// Up to `limit` dead letters, oldest first, starting after the id `after` (from the
    /// oldest when `None`): pass the last id of a page to get the next.
    pub fn dead_letters(&self, after: Option<MessageId>, limit: usize) -> Vec<Arc<DeadLetter>> {
        self.core.ledger.dead.page(after, limit)
    }

    /// One dead letter, whole.
    pub fn dead_letter(&self, id: MessageId) -> Option<Arc<DeadLetter>> {
        self.core.ledger.dead.get(id)
    }

    /// Replays a dead letter as a new message (new id, `replay_of` naming the original) and
    /// removes it from the dead letters. If the replay is refused, the dead letter stays. Like
    /// [`Dispatcher::accept`], returns once the new message is durable; until then the dead
    /// letter stays listed (and in the storage), and a second replay of it is
    /// [`ReplayError::InProgress`]. The replay goes on if this future is dropped; if the task
    /// it runs in is dropped instead (its arbiter stopping), the letter stays, and the new
    /// message, if it was admitted, runs as well (at least once).
    pub async fn replay(&self, id: MessageId) -> Result<MessageId, ReplayError> {
        let ledger = &self.core.ledger;
        let dl = ledger.dead.begin_replay(id)?;
        let replaying = Replaying(ledger.clone(), Some(id));
        // A task of its own, so a caller that goes away (an HTTP client that hangs up) does not
        // leave the letter marked as being replayed; if the task is dropped (its arbiter
        // stopping), `replaying` ends the replay as refused.
        let (tx, rx) = tokio::sync::oneshot::channel();
        let (d, letter) = (self.clone(), dl.clone());
        self.core.io_arbiters[0].spawn(async move {
            let _ = tx.send(d.replay_letter(letter, replaying).await);
        });
        rx.await.unwrap_or_else(|_| {
            let msg = Message::new(dl.kind.as_str(), dl.payload.clone()).source(Source::Replay);
            Err(ReplayError::Rejected(Rejected::ShuttingDown(Box::new(msg))))
        })
    }

    /// [`Dispatcher::replay`] of a letter marked as being replayed.
    async fn replay_letter(
        &self,
        dl: Arc<DeadLetter>,
        mut replaying: Replaying,
    ) -> Result<MessageId, ReplayError> {
        let mut msg = Message::new(dl.kind.as_str(), dl.payload.clone()).source(Source::Replay);
        msg.replay_of = Some(dl.id);
        let accepted = self.accept(msg).await;
        // Removed only now: compaction keeps a dead letter's record while it is held, so a
        // crash before the replay is durable leaves the dead letter, and one after it leaves
        // the replay (and the dead letter too if the `Replayed` record below was not yet
        // written: at least once, never lost).
        replaying.1 = None;
        let ledger = &self.core.ledger;
        ledger.dead.end_replay(dl.id, accepted.is_ok());
        let new = accepted?;
        if ledger.durable {
            // A copy of the dead letter's record that a compaction made meanwhile may land
            // after this; recovery lets this record win wherever the copy is, and compaction
            // keeps it as long as the copy (`DeadLetters::keeps_replayed`).
            ledger.storage.write(&Record::Replayed { id: dl.id });
        }
        tracing::info!(id = %new, replay_of = %dl.id, kind = %dl.kind, "dead letter replayed");
        Ok(new)
    }

    /// Runs `schedule` from a timer source actor: every interval, or once after a delay.
    pub fn schedule(&self, schedule: Schedule) -> Result<ScheduleHandle, ScheduleError> {
        let handle = TimerSource::start(self.clone(), schedule, &self.core.io_arbiters[0])?;
        self.core.timers.lock().push(handle.addr.clone());
        Ok(handle)
    }

    /// Checks a schedule as [`Dispatcher::schedule`] would (a routed kind, a non-zero interval,
    /// a payload the route accepts) without starting it.
    pub fn check_schedule(&self, schedule: &Schedule) -> Result<(), ScheduleError> {
        crate::source::timer::check(self, schedule).map(|_| ())
    }

    /// Checks `msg` as admission would (timing fields, key, payload) without submitting it;
    /// `None` if its kind has no route.
    pub(crate) fn validate(&self, msg: &Message) -> Option<Result<(), String>> {
        let route = self.core.ledger.route_of(Kind::new(msg.kind()).ok()?)?;
        Some(self.core.check(route, msg))
    }

    /// Checks `msg` as admission would (a route, a route that is not degraded, timing fields,
    /// key, payload) without admitting it: hands it back with its route's index, or the
    /// rejection (counted in the route's figures).
    #[cfg(feature = "cluster")]
    pub(crate) fn admissible(&self, msg: Message) -> Result<(Message, usize), Rejected> {
        let core = &self.core;
        let Some(&index) = core.ledger.by_kind.get(&*msg.kind) else {
            core.rejected_no_route.fetch_add(1, Relaxed);
            return Err(Rejected::NoRoute(Box::new(msg)));
        };
        let route = &core.ledger.routes[index];
        if let Some(left) = route.degraded_for(|| core.epoch.elapsed()) {
            route.stats.rejected(RejectReason::Degraded);
            return Err(Rejected::Degraded {
                message: Box::new(msg),
                retry_after_ms: left.as_millis() as u64,
            });
        }
        if let Err(reason) = core.check(route, &msg) {
            route.stats.rejected(RejectReason::Invalid);
            return Err(Rejected::Invalid {
                message: Box::new(msg),
                reason,
            });
        }
        Ok((msg, index))
    }

    /// Whether the dispatcher has stopped accepting (shutdown has begun).
    pub fn is_draining(&self) -> bool {
        self.core.drain.draining.load(Relaxed)
    }

    /// Whether the storage can write nothing any more (a journal whose writer stopped after a
    /// failed write it could not cut back): every new message is then refused until the process
    /// restarts, so a readiness check should fail. A storage that is only behind is not closed.
    pub fn is_storage_closed(&self) -> bool {
        matches!(
            self.core.ledger.storage.admitting(),
            Err(StorageError::Closed)
        )
    }

    /// Stops intake and lets queued and running messages finish within `deadline`. What could
    /// not finish depends on the storage:
    /// - durable storage keeps it: delayed messages due after the deadline, and whatever is
    ///   still queued or running when it passes, stay stored (their records flushed) and run
    ///   after the next start;
    /// - in memory, it is cancelled (class `shutdown`): delayed messages due after the deadline
    ///   at once, everything else when the deadline passes, so afterwards every accepted
    ///   message is in a terminal state.
    pub async fn shutdown(&self, deadline: Duration) -> ShutdownReport {
        let started = Instant::now();
        *self.core.drain.deadline.lock() = Some(started + deadline);
        self.core.drain.draining.store(true, SeqCst);
        // Admissions that passed the draining check before it was set finish handing their
        // message on; after this no new message can be accepted.
        while self.core.drain.admitting.load(SeqCst) > 0 {
            actix_rt::time::sleep(Duration::from_millis(1)).await;
        }
        for timer in self.core.timers.lock().drain(..) {
            timer.do_send(crate::source::timer::StopTimer);
        }
        let keep = self.core.ledger.durable;
        let before = self.in_flight();
        let mut unfinished = Vec::new();
        for router in &self.core.routers {
            let dropped = router
                .send(DropDelayedAfter {
                    deadline: started + deadline,
                    keep,
                })
                .await;
            unfinished.extend(dropped.unwrap_or_default());
        }
        // The routes' counters only (no store lock), every 10 ms. Kept messages stay counted.
        while self
            .in_flight()
            .saturating_sub(self.core.drain.kept.load(SeqCst))
            > 0
            && started.elapsed() < deadline
        {
            actix_rt::time::sleep(Duration::from_millis(10)).await;
        }
        let mut kept = Vec::new();
        if keep {
            // Whatever has not finished stays stored; the running ones are interrupted when the
            // process exits and run again after the next start.
            kept = self.core.ledger.store.unfinished();
            unfinished.clear();
            let flushed = self.core.ledger.storage.flush().durable().await;
            if let Err(e) = flushed {
                tracing::error!(error = %e, "storage: the last records could not be flushed");
            }
        } else {
            for id in self.core.ledger.store.unfinished() {
                let error = ErrorInfo::new(
                    ErrorClass::Shutdown,
                    "the dispatcher shut down before the message could finish",
                );
                let Some(ticket) = self.core.ledger.store.ticket(id) else {
                    continue;
                };
                if let Some(f) =
                    self.core
                        .ledger
                        .store
                        .finish(&ticket, Status::Cancelled, None, Some(error))
                {
                    self.core.ledger.ended(None, f);
                    unfinished.push(id);
                }
            }
        }
        unfinished.sort_unstable();
        let report = ShutdownReport {
            drained: before.saturating_sub((unfinished.len() + kept.len()) as u64),
            unfinished,
            kept,
            elapsed: started.elapsed(),
        };
        tracing::info!(
            drained = report.drained,
            unfinished = report.unfinished.len(),
            kept = report.kept.len(),
            elapsed_ms = report.elapsed.as_millis() as u64,
            "dispatcher drained"
        );
        report
    }
}

/// Registers processors and routes, then starts everything with [`DispatcherBuilder::build`].
pub struct DispatcherBuilder {
    settings: Settings,
    processors: HashMap<String, Processor>,
    routes: Vec<(String, RouteSettings)>,
    storage: Option<Arc<dyn Storage>>,
}

impl std::fmt::Debug for DispatcherBuilder {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("DispatcherBuilder")
            .field("settings", &self.settings)
            .field("routes", &self.routes)
            .finish()
    }
}

impl DispatcherBuilder {
    /// Registers a processor (replacing any of the same name).
    pub fn processor(mut self, p: Processor) -> Self {
        self.processors.insert(p.name.clone(), p);
        self
    }

    /// Routes `kind` to a processor.
    pub fn route(mut self, kind: impl Into<String>, route: RouteSettings) -> Self {
        self.routes.push((kind.into(), route));
        self
    }

    /// Routes each built-in kind except `chaos` to the processor of the same name.
    pub fn builtin_routes(mut self) -> Self {
        for name in ["echo", "sleep", "fetch", "primes", "hash"] {
            self = self.route(name, RouteSettings::new(name));
        }
        self
    }

    /// Where accepted work is written so that it survives the process (by default
    /// [`Memory`]: nowhere). With a durable storage such as a
    /// [`Journal`](crate::storage::Journal), `build` first recovers what it holds.
    pub fn storage(mut self, storage: Arc<dyn Storage>) -> Self {
        self.storage = Some(storage);
        self
    }

    /// The settings it builds with.
    #[cfg(feature = "cluster")]
    pub(crate) fn settings(&self) -> &Settings {
        &self.settings
    }

    /// Each route's retries and backoff, by kind.
    #[cfg(feature = "cluster")]
    pub(crate) fn retries(&self) -> HashMap<String, (u32, Duration)> {
        self.routes
            .iter()
            .map(|(k, r)| (k.clone(), (r.retries, r.backoff)))
            .collect()
    }

    /// Every route runs each message once (a cluster node: JetStream redelivers for retries).
    #[cfg(feature = "cluster")]
    pub(crate) fn one_attempt_per_run(mut self) -> Self {
        for (_, r) in &mut self.routes {
            r.retries = 0;
        }
        self
    }

    fn check_settings(s: &Settings) -> Result<(), BuildError> {
        let bad = |name: &str, reason: &str| {
            Err(BuildError::Setting {
                name: name.to_owned(),
                reason: reason.to_owned(),
            })
        };
        if s.capacity == 0 {
            return bad("capacity", "must be at least 1");
        }
        if !(1..=64).contains(&s.io.arbiters) {
            return bad("io.arbiters", "must be between 1 and 64");
        }
        if s.io.concurrency == 0 {
            return bad("io.concurrency", "must be at least 1");
        }
        if s.cpu.threads > 1024 {
            return bad("cpu.threads", "must be between 0 (one per core) and 1024");
        }
        if s.max_results == 0 {
            return bad("max_results", "must be at least 1");
        }
        if s.restart.max_restarts == 0 {
            return bad("restart.max_restarts", "must be at least 1");
        }
        if let Err(reason) = s.restart.check() {
            return Err(BuildError::Setting {
                name: "restart.max_restarts".to_owned(),
                reason,
            });
        }
        for (name, d) in [("max_delay", s.max_delay), ("max_timeout", s.max_timeout)] {
            if d > Duration::from_secs(365 * 86_400) {
                return bad(name, "must be at most a year");
            }
        }
        Ok(())
    }

    /// Starts the arbiters, the router, the workers and the CPU pool. Must run inside an actix
    /// `System`.
    pub fn build(self) -> Result<Dispatcher, BuildError> {
        if actix::System::try_current().is_none() {
            return Err(BuildError::NoSystem);
        }
        Self::check_settings(&self.settings)?;
        let s = &self.settings;
        let mut routes = Vec::with_capacity(self.routes.len());
        let mut by_kind = foldhash::HashMap::default();
        let mut makes = Vec::with_capacity(self.routes.len());
        let mut cpu_makes = Vec::new();
        let cpu_threads = s.cpu.resolved_threads();
        for (name, rs) in &self.routes {
            let kind = Kind::new(name)?;
            let p =
                self.processors
                    .get(&rs.processor)
                    .ok_or_else(|| BuildError::UnknownProcessor {
                        kind: name.clone(),
                        processor: rs.processor.clone(),
                        known: {
                            let mut k: Vec<_> = self.processors.keys().cloned().collect();
                            k.sort();
                            k.join(", ")
                        },
                    })?;
            if by_kind.insert(kind.as_str(), routes.len()).is_some() {
                return Err(BuildError::DuplicateRoute(name.clone()));
            }
            let capacity = rs.capacity.unwrap_or(s.capacity);
            let concurrency = rs.concurrency.unwrap_or(match p.pool() {
                Pool::Io => s.io.concurrency,
                // No cap of its own: the pool's queue holds what its threads cannot start yet
                // (each message stays `queued` until a thread begins it), and the worker hands
                // jobs over as they come, with no wake-up per finished job.
                Pool::Cpu => capacity,
            });
            if rs
                .timeout
                .is_some_and(|t| t.is_zero() || t > Duration::from_secs(365 * 86_400))
                || rs.backoff > Duration::from_secs(365 * 86_400)
            {
                return Err(BuildError::Setting {
                    name: format!("routes.{name}"),
                    reason: "timeout must be between 1 ms and a year, backoff at most a year"
                        .into(),
                });
            }
            if concurrency == 0 || rs.capacity == Some(0) || rs.max_per_client == Some(0) {
                return Err(BuildError::Setting {
                    name: format!("routes.{name}"),
                    reason: "capacity, concurrency and max_per_client must be at least 1".into(),
                });
            }
            makes.push(match &p.make {
                Make::Async(m) => Make::Async(m.clone()),
                Make::Cpu(m) => {
                    cpu_makes.push(m.clone());
                    Make::Cpu(m.clone())
                }
            });
            routes.push(Route {
                kind,
                processor: rs.processor.clone(),
                pool: p.pool(),
                capacity: capacity as u64,
                concurrency,
                timeout: rs.timeout,
                retries: rs.retries,
                backoff: rs.backoff,
                validate: p.validate.clone(),
                schema: p.schema.clone(),
                purity: p.pure.clone(),
                stats: RouteStats::default(),
                degraded_until: AtomicU64::new(0),
                restarts: Default::default(),
                worker: OnceLock::new(),
                // Async routes are spread over the I/O arbiters; CPU routes live on the System
                // arbiter (the router after the I/O arbiters' ones).
                router: match p.pool() {
                    Pool::Io => routes.len() % s.io.arbiters,
                    Pool::Cpu => s.io.arbiters,
                },
                lane: Default::default(),
                slots: Slots::new(concurrency),
                shares: rs.max_per_client.map(Shares::new),
            });
        }
        let io_arbiters: Vec<ArbiterHandle> = (0..s.io.arbiters)
            .map(|_| {
                let arbiter = Arbiter::new();
                let handle = arbiter.handle();
                // The arbiter thread lives until the System stops; its handle is enough.
                std::mem::forget(arbiter);
                handle
            })
            .collect();
        let storage = self.storage.unwrap_or_else(|| Arc::new(Memory));
        let durable = storage.is_durable();
        let recovered = if durable {
            let records = storage
                .load()
                .map_err(|e| BuildError::Storage(e.to_string()))?;
            Some(Recovered::fold(records))
        } else {
            None
        };
        let ledger = Arc::new(Ledger {
            routes,
            by_kind,
            store: Box::new(MemoryStore::new(
                s.result_ttl,
                s.max_results,
                s.max_result_bytes,
            )),
            storage,
            durable,
            dead: DeadLetters::new(s.max_dead_letters, s.max_dead_letter_bytes),
        });
        let drain = Arc::new(Drain::default());
        // actix forwards every message to a SyncArbiter through a future on the System arbiter;
        // the CPU routes' workers live there too (below), so a hand-off wakes one thread.
        let pool = if cpu_makes.is_empty() {
            None
        } else {
            let cpu_makes = Arc::new(cpu_makes);
            // Named, so `top -H` and profilers tell the pool's threads apart.
            let mut n = 0;
            let name = move || {
                n += 1;
                std::thread::Builder::new().name(format!("mailroom-cpu-{n}"))
            };
            Some(SyncArbiter::start_with_thread_builder(
                cpu_threads,
                name,
                move || CpuPool::new(cpu_makes.clone()),
            ))
        };
        // One router per worker thread (the first also sweeps expired outcomes). Routers see
        // the ledger and the drain state only.
        let mut homes = io_arbiters.clone();
        if pool.is_some() {
            homes.push(System::current().arbiter().clone());
        }
        let watch = Watch::new(s.io.stall_warn);
        let routers = homes
            .iter()
            .enumerate()
            .map(|(n, home)| {
                let (ledger, drain) = (ledger.clone(), drain.clone());
                let thread = if n < io_arbiters.len() {
                    format!("I/O arbiter {n}")
                } else {
                    "the System arbiter (CPU routes)".to_owned()
                };
                let beat = watch.heartbeat(thread);
                Router::start_in_arbiter(home, move |_| Router::new(ledger, drain, n == 0, beat))
            })
            .collect();
        let async_makes = makes
            .iter()
            .map(|m| matches!(m, Make::Async(_)).then(|| m.clone()))
            .collect();
        let core = Arc::new(Core {
            settings: self.settings.clone(),
            ledger: ledger.clone(),
            drain: drain.clone(),
            routers,
            rejected_no_route: AtomicU64::new(0),
            rejected_malformed: AtomicU64::new(0),
            epoch: Instant::now(),
            io_arbiters,
            timers: Mutex::new(Vec::new()),
            async_makes,
            watch,
        });
        // Each worker gets its station: the ledger, its router, the drain state, the restart
        // policy, and a submit-only handle for its processors' jobs.
        let mut cpu_index = 0;
        for (i, make) in makes.into_iter().enumerate() {
            let exec = match make {
                Make::Async(m) => Exec::Async(m),
                Make::Cpu(_) => {
                    cpu_index += 1;
                    Exec::Cpu(
                        pool.clone().expect("a CPU route starts the pool"),
                        cpu_index - 1,
                    )
                }
            };
            let home = ledger.routes[i].router;
            let station = Arc::new(Station {
                ledger: ledger.clone(),
                drain: drain.clone(),
                router: core.routers[home].clone(),
                restart: self.settings.restart.clone(),
                epoch: core.epoch,
                submitter: Submitter(Dispatcher { core: core.clone() }),
                route: i,
            });
            let addr =
                Supervisor::start_in_arbiter(&homes[home], move |_| Worker::new(station, exec));
            let _ = ledger.routes[i].worker.set(addr.recipient());
        }
        if let Some(recovered) = recovered {
            crate::recovery::restore(&core, recovered);
            crate::recovery::start_compactor(&core);
        }
        tracing::info!(
            routes = ledger.routes.len(),
            io_arbiters = core.io_arbiters.len(),
            cpu_threads = if pool.is_some() { cpu_threads } else { 0 },
            "dispatcher started"
        );
        Ok(Dispatcher { core })
    }
}
