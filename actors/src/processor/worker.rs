//! The route worker: one supervised actor per route, plus, for an async route, one on each
//! thread attached to the dispatcher (`Dispatcher::attach_current_arbiter`, e.g. each HTTP
//! worker). It runs the route's messages with at most `concurrency` at once (one limit over all
//! the route's workers: see `route::Slots`), applies the run timeout, catches panics, and
//! settles each attempt (outcome, retry or dead letter) — for CPU routes, the pool thread that
//! ran the job settles it.
//!
//! It receives [`Run`] batches from the router on its own thread (on an attached thread, from
//! the dispatcher directly) and [`JobDone`] from its own async jobs. A worker on an attached
//! thread outlives nothing: if that thread stops while the dispatcher runs, the batches it had
//! not read and its backlog go to the route's own worker, and its running attempts end failed
//! (or are retried), through drop guards (`rescue`, `abandon`).
//!
//! **Async routes** live on an I/O arbiter (and on attached threads). Jobs run as separate local tasks (actix polls every
//! future spawned on an actor context at each wake-up, which would make many concurrent jobs
//! quadratic); a job that finishes on its first poll, like `echo`, completes inline with no task.
//! On a panic in an async processor the message fails (class `panic`, or is retried) and the
//! worker stops itself on purpose: its `Supervisor` restarts it, `restarting()` builds a fresh
//! processor from the factory, and waiting messages stay in the mailbox and backlog. The restart
//! is counted against the route's budget, which may mark the route degraded, and the worker
//! pauses for the budget's backoff before taking work again.
//!
//! **CPU routes** live on the System arbiter, the thread where actix forwards every message to a
//! `SyncArbiter`, so handing a job to the pool costs no extra thread wake-up. The pool thread
//! that runs a job also settles it (outcome, retry or dead letter) and gives its slot back through
//! the route's [`Lane`](crate::route::Lane) counters, so a result reaches its waiter without
//! coming back through this actor; the worker is woken only when it holds a backlog that a freed
//! slot lets it start. Run timeouts are kept here in one deadline heap with one timer; they count
//! from when a thread begins the job, not while it waits for one. At the deadline the message
//! ends as `timed_out` (published at once — for a pure message, once its record is durable —
//! whether or not the processor checks its cancel flag) and the job's cancel flag is raised;
//! whichever of the timer and the pool thread takes the envelope first settles it, exactly once.
//! The job keeps its slot until its thread returns.

use std::cmp::{Ordering, Reverse};
use std::collections::{BinaryHeap, VecDeque};
use std::panic::{catch_unwind, AssertUnwindSafe};
use std::sync::atomic::{AtomicUsize, Ordering::Relaxed, Ordering::SeqCst};
use std::sync::Arc;
use std::task::{Context as TaskContext, Poll, Waker};
use std::time::{Duration, Instant};

use actix::prelude::*;
use futures_util::FutureExt;

use super::cpu::{CpuPool, Expiry, Handoff, RunCpu};
use super::{AsyncProcessor, CancelToken, Job, ProcessError, ProcessResult};
use crate::alarm::Alarm;
use crate::commit::{standing, Standing};
use crate::dispatcher::Submitter;
use crate::envelope::{Envelope, ErrorClass, ErrorInfo, Status};
use crate::ledger::{Drain, Ledger};
use crate::route::Route;
use crate::router::{Dispatch, Router};
use crate::settings::RestartPolicy;
use crate::supervision::{panic_message, RestartDecision};

/// What a route's worker (and the CPU jobs it hands to the pool) needs, and nothing more: the
/// ledger to start and settle messages, its router for retries, the drain state, the restart
/// budget, and a submit-only handle for its processors' jobs.
pub(crate) struct Station {
    pub(crate) ledger: Arc<Ledger>,
    pub(crate) drain: Arc<Drain>,
    pub(crate) router: Addr<Router>,
    pub(crate) restart: RestartPolicy,
    pub(crate) epoch: Instant,
    pub(crate) submitter: Submitter,
    /// The route's index in the routing table.
    pub(crate) route: usize,
}

impl Station {
    /// The route this station serves.
    pub(crate) fn route(&self) -> &Route {
        &self.ledger.routes[self.route]
    }

    /// Sends a failed attempt back through the router after its backoff.
    fn retry(&self, mut env: Envelope) {
        let route = self.route();
        if !self.ledger.requeue(&env.ticket) {
            return; // finished meanwhile (shutdown): nothing left to do
        }
        route.stats.retried.fetch_add(1, Relaxed);
        let n = env.history.len().max(1) as u32;
        let full = route.backoff.saturating_mul(1u32 << (n - 1).min(16));
        let half = full / 2;
        let jitter = Duration::from_nanos(fastrand::u64(
            0..=half.as_nanos().min(u64::MAX as u128) as u64,
        ));
        let due = Instant::now().checked_add(half + jitter);
        // While draining, a retry that cannot come due before the deadline ends now (or, with
        // durable storage, stays stored to run after the next start).
        let deadline = *self.drain.deadline.lock();
        if let (Some(deadline), Some(due)) = (deadline, due) {
            if due > deadline && self.ledger.durable {
                self.drain.kept.fetch_add(1, SeqCst);
                return;
            }
            if due > deadline {
                let error = ErrorInfo::new(
                    ErrorClass::Shutdown,
                    "the dispatcher shut down before the retry was due",
                );
                self.ledger
                    .finish(env.route, &env.ticket, Status::Cancelled, None, Some(error));
                return;
            }
        }
        env.not_before =
            Some(due.unwrap_or_else(|| Instant::now() + Duration::from_secs(86_400 * 365)));
        if self.router.connected() {
            self.router.do_send(Dispatch(env));
        } else {
            self.ledger.undeliverable(vec![env], "router");
        }
    }
}

/// Run these envelopes (all of this worker's route). An empty batch only asks the worker to
/// start what its backlog holds (a slot was freed, or handed to it).
///
/// Sent to a worker on an attached thread, it carries that worker's station: if the thread stops
/// before the worker takes the batch, the batch is dropped unread, and its envelopes go to their
/// route's own worker instead of being lost (see [`rescue`]).
#[derive(Message, Default)]
#[rtype(result = "()")]
pub struct Run {
    envs: Vec<Envelope>,
    rescue: Option<Arc<Station>>,
}

impl Run {
    pub(crate) fn new(envs: Vec<Envelope>) -> Run {
        Run { envs, rescue: None }
    }

    /// A batch for a worker on an attached thread (`station` is that worker's).
    pub(crate) fn attached(envs: Vec<Envelope>, station: Arc<Station>) -> Run {
        Run {
            envs,
            rescue: Some(station),
        }
    }
}

impl Drop for Run {
    fn drop(&mut self) {
        if let Some(station) = &self.rescue {
            rescue(station, std::mem::take(&mut self.envs));
        }
    }
}

/// Envelopes left on an attached thread that stopped (unread in its worker's mailbox, or in its
/// backlog) go to their route's own worker, on the route's I/O arbiter. While the dispatcher
/// drains they stay where they are: shutdown cancels them, or keeps them stored.
fn rescue(station: &Station, envs: Vec<Envelope>) {
    if envs.is_empty() || station.drain.draining.load(SeqCst) {
        return;
    }
    match station.route().worker.get() {
        Some(worker) if worker.connected() => worker.do_send(Run::new(envs)),
        _ => station.ledger.undeliverable(envs, "worker"),
    }
}

/// An attempt that was running on an attached thread when the thread stopped: its slot is given
/// back and it ends failed (class `error`), or is retried if the route retries. While the
/// dispatcher drains it is left to shutdown, which cancels it or keeps it stored.
fn abandon(station: &Arc<Station>, env: Envelope, result: Option<JobResult>) {
    if station.drain.draining.load(SeqCst) {
        return;
    }
    let route = station.route();
    route.stats.running.fetch_sub(1, Relaxed);
    route.slots.give_back();
    // The worker is gone with its thread: there is nothing to restart.
    let _ = settle(station, env, result.unwrap_or(JobResult::Abandoned));
}

/// Holds a running attempt's envelope inside its task; on an attached thread, if the task is
/// dropped before it finishes (the thread stopped), the attempt is abandoned.
struct Attempt {
    env: Option<Envelope>,
    rescue: Option<Arc<Station>>,
}

impl Drop for Attempt {
    fn drop(&mut self) {
        if let (Some(env), Some(station)) = (self.env.take(), &self.rescue) {
            abandon(station, env, None);
        }
    }
}

/// How one attempt ended.
#[derive(Debug)]
pub(crate) enum JobResult {
    Done(ProcessResult),
    Panicked(String),
    TimedOut(Duration),
    /// The CPU pool could not be reached.
    Lost(String),
    /// The attached thread it ran on stopped before it finished.
    Abandoned,
}

/// An async job finished (sent by the job's task to its worker).
#[derive(Message)]
#[rtype(result = "()")]
pub(crate) struct JobDone {
    env: Option<Envelope>,
    result: Option<JobResult>,
    /// On an attached thread: if the worker is gone before it reads this, the attempt is
    /// settled on drop.
    rescue: Option<Arc<Station>>,
}

impl Drop for JobDone {
    fn drop(&mut self) {
        if let (Some(env), Some(station)) = (self.env.take(), &self.rescue) {
            abandon(station, env, self.result.take());
        }
    }
}

type AsyncMake = Arc<dyn Fn() -> Box<dyn AsyncProcessor> + Send + Sync>;

pub(crate) enum Exec {
    Async(AsyncMake),
    Cpu(Addr<CpuPool>, usize),
}

/// A CPU job's run deadline, ordered by time (then by hand-off order).
struct Deadline {
    at: Instant,
    seq: u64,
    timeout: Duration,
    handoff: Arc<Handoff>,
}

impl PartialEq for Deadline {
    fn eq(&self, other: &Self) -> bool {
        (self.at, self.seq) == (other.at, other.seq)
    }
}
impl Eq for Deadline {}
impl PartialOrd for Deadline {
    fn partial_cmp(&self, other: &Self) -> Option<Ordering> {
        Some(self.cmp(other))
    }
}
impl Ord for Deadline {
    fn cmp(&self, other: &Self) -> Ordering {
        (self.at, self.seq).cmp(&(other.at, other.seq))
    }
}

/// Numbers the workers (see `Worker::id`).
static NEXT_WORKER: AtomicUsize = AtomicUsize::new(0);

pub(crate) struct Worker {
    station: Arc<Station>,
    exec: Exec,
    processor: Option<Box<dyn AsyncProcessor>>,
    backlog: VecDeque<Envelope>,
    /// This worker's number, for waiting on the route's `Slots` (an async route has a worker on
    /// each thread that runs it, and they share the route's concurrency).
    id: usize,
    /// Slots handed to this worker by others that gave them back while it waited.
    granted: Arc<AtomicUsize>,
    /// Whether it runs on an attached thread, which may stop before the dispatcher does.
    attached: bool,
    limit: usize,
    paused: bool,
    resume_after: Option<Duration>,
    /// Run deadlines of the CPU jobs handed to the pool (earliest first), and the armed timer.
    deadlines: BinaryHeap<Reverse<Deadline>>,
    handed: u64,
    timer: Alarm,
}

impl Worker {
    pub(crate) fn new(station: Arc<Station>, exec: Exec) -> Worker {
        let limit = station.route().concurrency;
        let processor = match &exec {
            Exec::Async(make) => Some(make()),
            Exec::Cpu(..) => None,
        };
        Worker {
            station,
            exec,
            processor,
            backlog: VecDeque::new(),
            id: NEXT_WORKER.fetch_add(1, Relaxed),
            granted: Default::default(),
            attached: false,
            limit,
            paused: false,
            resume_after: None,
            deadlines: BinaryHeap::new(),
            handed: 0,
            timer: Alarm::default(),
        }
    }

    /// A worker for an attached thread (see [`Dispatcher::attach_current_arbiter`]).
    ///
    /// [`Dispatcher::attach_current_arbiter`]: crate::Dispatcher::attach_current_arbiter
    pub(crate) fn attached(station: Arc<Station>, exec: Exec) -> Worker {
        let mut worker = Worker::new(station, exec);
        worker.attached = true;
        worker
    }

    fn can_start(&self, ctx: &Context<Self>) -> bool {
        !self.paused && ctx.state() == ActorState::Running
    }

    /// Takes a running slot for one more attempt: a CPU route counts what it has handed to the
    /// pool (in its `Lane`); an async route takes one of its `Slots`, shared with its workers on
    /// other threads, or waits in line for one to be handed over.
    fn take_slot(&self, ctx: &Context<Self>) -> bool {
        let route = self.station.route();
        match self.exec {
            Exec::Cpu(..) => route.lane.handed.load(SeqCst) < self.limit,
            Exec::Async(_) => route
                .slots
                .take(self.id, &self.granted, || ctx.address().recipient()),
        }
    }

    /// Gives back slots handed to this worker when it has nothing to use them for, or cannot
    /// use them now (paused after a panic, or stopping for its restart): others may.
    fn return_unused(&self, ctx: &Context<Self>) {
        if self.backlog.is_empty() || !self.can_start(ctx) {
            self.return_granted();
        }
    }

    /// Gives back (or on to the next waiting worker) every slot handed to this worker.
    fn return_granted(&self) {
        let slots = &self.station.route().slots;
        while self
            .granted
            .fetch_update(SeqCst, SeqCst, |n| n.checked_sub(1))
            .is_ok()
        {
            slots.give_back();
        }
    }

    /// Starts backlog messages while there is room. Jobs that finish on their first poll are
    /// completed right here (in a loop, not by recursion: a long backlog of `echo` must not
    /// grow the stack).
    fn pump(&mut self, ctx: &mut Context<Self>) {
        loop {
            while self.can_start(ctx) && !self.backlog.is_empty() && self.take_slot(ctx) {
                let Some(env) = self.backlog.pop_front() else {
                    break;
                };
                if let Some((env, result)) = self.start(env, ctx) {
                    self.complete(env, result, ctx);
                }
            }
            let Exec::Cpu(..) = self.exec else {
                self.return_unused(ctx);
                return;
            };
            self.arm(ctx);
            // Tell the pool threads whether a freed slot should wake us. A thread that frees
            // its slot after our check above either sees this count or its slot is seen below.
            let lane = &self.station.route().lane;
            lane.waiting.store(self.backlog.len(), SeqCst);
            if self.backlog.is_empty()
                || !self.can_start(ctx)
                || lane.handed.load(SeqCst) >= self.limit
            {
                return;
            }
        }
    }

    /// Starts one attempt. Returns the envelope and result if it finished on the spot.
    fn start(
        &mut self,
        mut env: Envelope,
        ctx: &mut Context<Self>,
    ) -> Option<(Envelope, JobResult)> {
        let station = self.station.clone();
        let route = station.route();
        match &self.exec {
            // A CPU message stays queued until a pool thread begins it (see `cpu.rs`).
            Exec::Cpu(pool, _) if !pool.connected() => {
                // The attempt fails without ever running (its `Started` record written only for
                // a message whose record is known durable: `settle` takes back a refused one).
                env.attempt = match standing(&env.commit) {
                    Standing::Durable => station.ledger.start(&env.ticket).ok()?,
                    Standing::Pending(_) | Standing::Failed => {
                        station.ledger.start_unwritten(&env.ticket).ok()?
                    }
                };
                return Some((env, JobResult::Lost("its threads are gone".into())));
            }
            Exec::Cpu(..) => {}
            Exec::Async(_) => {
                // Its `Started` record is written below, unless it completes on the spot.
                match station.ledger.start_unwritten(&env.ticket) {
                    Ok(attempt) => env.attempt = attempt,
                    Err(_) => {
                        // Cancelled while it waited (already counted), or shut down.
                        route.slots.give_back();
                        return None;
                    }
                }
                route.stats.running.fetch_add(1, Relaxed);
            }
        }
        // Keep the payload only when a retry or a dead letter may need it again.
        let payload = if route.retries > 0 {
            env.payload.clone()
        } else {
            std::mem::take(&mut env.payload)
        };
        let cancel = match self.exec {
            Exec::Cpu(..) => CancelToken::new(),
            Exec::Async(_) => CancelToken::default(),
        };
        let job = Job {
            id: env.id,
            kind: env.kind,
            attempt: env.attempt,
            submitter: station.submitter.clone(),
            cancel: cancel.clone(),
        };
        let timeout = env.timeout.or(route.timeout);
        match &self.exec {
            Exec::Async(_) => {
                let processor = self
                    .processor
                    .as_ref()
                    .expect("async worker has a processor");
                // An attempt that completes on its first poll writes no `Started` record: its
                // `Finished` record follows at once and says all it would. Any other attempt
                // (it fails, panics, or goes on) has it written before it is settled or
                // spawned, so a retry or a restart counts it.
                let started = |env: &Envelope| station.ledger.write_started(env.id, env.attempt);
                // A message that began before its record was durable has its `Started` record
                // written, and is settled, only once the record is durable (steps on its
                // commit, below and in `settle`). One whose record has failed already is not
                // run: settling it takes it back, and nothing of it is written.
                let commit = match standing(&env.commit) {
                    Standing::Failed => return Some((env, JobResult::Abandoned)),
                    Standing::Pending(c) => Some(c.clone()),
                    Standing::Durable => None,
                };
                let fut = match catch_unwind(AssertUnwindSafe(|| processor.process(job, payload))) {
                    Ok(fut) => fut,
                    Err(panic) => {
                        if commit.is_none() {
                            started(&env);
                        }
                        let text = panic_message(&*panic);
                        return Some((env, JobResult::Panicked(text)));
                    }
                };
                let mut fut = fut;
                if commit.is_none() {
                    // Fast path: most quick processors finish on their first poll. A future
                    // that returns Pending registers this no-op waker, and is polled again
                    // (with the task's real waker) as soon as it is spawned below.
                    let mut noop = TaskContext::from_waker(Waker::noop());
                    match catch_unwind(AssertUnwindSafe(|| fut.as_mut().poll(&mut noop))) {
                        Ok(Poll::Ready(r)) => {
                            if r.is_err() {
                                started(&env);
                            }
                            return Some((env, JobResult::Done(r)));
                        }
                        Ok(Poll::Pending) => started(&env),
                        Err(panic) => {
                            started(&env);
                            return Some((env, JobResult::Panicked(panic_message(&*panic))));
                        }
                    }
                }
                let fut = AssertUnwindSafe(fut).catch_unwind();
                let addr = ctx.address();
                let rescue = self.attached.then(|| station.clone());
                let (id, number) = (env.id, env.attempt);
                let mut attempt = Attempt {
                    env: Some(env),
                    rescue: rescue.clone(),
                };
                // Its `Started` record follows the commit, written by whoever sets it, as a step
                // added when the task begins (an attempt never begun writes none), so before its
                // settlement's (steps run in the order they were added). Its record may be held
                // to share a commit while the attempt runs (see `Ledger::write_accepted`); an
                // attempt that ends first hurries it.
                let hurry = commit.map(|commit| (commit, station.clone()));
                actix_rt::spawn(async move {
                    if let Some((commit, station)) = &hurry {
                        let ledger = station.ledger.clone();
                        commit.then(move |committed| {
                            if committed.is_ok() {
                                ledger.write_started(id, number);
                            }
                        });
                    }
                    let result = match timeout {
                        Some(t) => match actix_rt::time::timeout(t, fut).await {
                            Ok(r) => caught(r),
                            Err(_) => JobResult::TimedOut(t),
                        },
                        None => caught(fut.await),
                    };
                    if let Some((commit, station)) = hurry {
                        if commit.is_pending() {
                            station.ledger.hurry();
                        }
                    }
                    addr.do_send(JobDone {
                        env: attempt.env.take(),
                        result: Some(result),
                        rescue,
                    });
                });
            }
            Exec::Cpu(pool, index) => {
                route.lane.handed.fetch_add(1, SeqCst);
                let handoff = Arc::new(Handoff::new(env, cancel));
                if let Some(t) = timeout {
                    self.handed += 1;
                    self.deadlines.push(Reverse(Deadline {
                        at: Instant::now() + t,
                        seq: self.handed,
                        timeout: t,
                        handoff: handoff.clone(),
                    }));
                    // The timer is armed by `pump` once the batch is handed over.
                }
                // The System arbiter (this thread) forwards it to a pool thread; that thread
                // settles it and gives the slot back (see `cpu.rs`). `do_send` can only fail
                // once the System is stopping, when the pool is gone and nothing runs anyway.
                pool.do_send(RunCpu {
                    processor: *index,
                    station: station.clone(),
                    job,
                    payload,
                    handoff,
                });
            }
        }
        None
    }

    /// Records how an async attempt (or a CPU attempt that never reached the pool) ended. After
    /// a panic in an async processor it stops the actor so the Supervisor restarts it.
    fn complete(&mut self, env: Envelope, result: JobResult, ctx: &mut Context<Self>) {
        if let Exec::Async(_) = self.exec {
            let route = self.station.route();
            route.stats.running.fetch_sub(1, Relaxed);
            route.slots.give_back();
        }
        let restart = settle(&self.station, env, result);
        if let (Some(decision), Exec::Async(_)) = (restart, &self.exec) {
            self.resume_after = Some(decision.backoff);
            ctx.stop(); // the Supervisor restarts us with a fresh processor
        }
    }

    /// Arms the timer for the earliest CPU deadline, if it is earlier than the armed one.
    fn arm(&mut self, ctx: &mut Context<Self>) {
        if let Some(Reverse(d)) = self.deadlines.peek() {
            let at = d.at;
            self.timer.arm(at, ctx, |w| &mut w.timer, Self::expire);
        }
    }

    /// Drops deadlines whose jobs are already settled: from the top of the heap (jobs mostly
    /// finish in the order they were handed over), and from the whole heap when one long job
    /// at the top holds many finished ones behind it.
    fn prune(&mut self) {
        while self
            .deadlines
            .peek()
            .is_some_and(|Reverse(d)| d.handoff.is_settled())
        {
            self.deadlines.pop();
        }
        let handed = self.station.route().lane.handed.load(Relaxed);
        if self.deadlines.len() > 2 * handed + 64 {
            self.deadlines.retain(|Reverse(d)| !d.handoff.is_settled());
        }
    }

    /// Visits every CPU deadline that has come: a job that has run for its whole timeout ends
    /// as `timed_out` (its cancel flag raised); one that began later gets its real deadline
    /// (`began + timeout`); one still waiting for a thread is looked at again a timeout later.
    fn expire(&mut self, ctx: &mut Context<Self>) {
        let now = Instant::now();
        while let Some(Reverse(d)) = self.deadlines.peek() {
            if d.at > now {
                break;
            }
            let Some(Reverse(mut d)) = self.deadlines.pop() else {
                break;
            };
            let next = match d.handoff.expiry() {
                Expiry::Settled => continue,
                Expiry::Waiting => now + d.timeout,
                Expiry::Running(began) if began + d.timeout > now => began + d.timeout,
                Expiry::Running(_) => {
                    let retries = self.station.route().retries;
                    let will_retry = |env: &Envelope| retries > 0 && env.attempt <= retries;
                    let Some(env) = d.handoff.time_out(d.timeout, will_retry) else {
                        // Settled by the pool thread just now, or parked for it to retry
                        // when it returns.
                        continue;
                    };
                    // It had begun, so its thread counted it as running.
                    self.station.route().stats.running.fetch_sub(1, Relaxed);
                    settle(&self.station, env, JobResult::TimedOut(d.timeout));
                    continue;
                }
            };
            d.at = next;
            self.deadlines.push(Reverse(d));
        }
        self.prune();
        self.arm(ctx);
    }
}

/// Settles an attempt: records the outcome, or sends the message to a retry or the dead
/// letters. Runs on the worker's thread or on the CPU pool thread that ran the job; for a
/// message that began before its record was durable and ended first, on the thread that learns
/// the record's fate (see [`crate::commit`]). After a panic, returns the restart decision (the
/// restart is already counted against the budget).
pub(crate) fn settle(
    station: &Arc<Station>,
    mut env: Envelope,
    result: JobResult,
) -> Option<RestartDecision> {
    // Counted first, before the outcome is published, so whoever sees the failure also sees
    // the restart (and a degraded route); and whatever becomes of the message, a panicked
    // processor is restarted.
    let restart = matches!(result, JobResult::Panicked(_)).then(|| {
        station
            .route()
            .record_restart(station.epoch, &station.restart)
    });
    match env.commit.take() {
        None => settle_committed(station, env, result),
        // Settled once the record is known durable: at once when it is (the usual case), else
        // when the commit is set, after the attempt's `Started` step. A record that was never
        // written means the message was refused: it leaves no trace.
        Some(commit) => {
            if commit.is_pending() {
                station.ledger.hurry(); // its record may be held to share a commit: not now
            }
            let station = station.clone();
            commit.then(move |committed| match committed {
                Ok(()) => settle_committed(&station, env, result),
                Err(error) => {
                    tracing::debug!(id = %env.id, kind = %env.kind, %error, "taken back: its record could not be written");
                    station.ledger.take_back(env.route, &env.ticket);
                }
            });
        }
    }
    restart
}

/// [`settle`] once the message's record is known to be durable.
fn settle_committed(station: &Arc<Station>, mut env: Envelope, result: JobResult) {
    let ledger = &station.ledger;
    let route = station.route();
    let (error, final_status) = match result {
        JobResult::Done(Ok(value)) => {
            ledger.finish(env.route, &env.ticket, Status::Completed, Some(value), None);
            return;
        }
        JobResult::Done(Err(ProcessError { class, message })) => {
            (ErrorInfo::new(class, message), Status::Failed)
        }
        JobResult::Panicked(text) => (
            ErrorInfo::new(ErrorClass::Panic, format!("processor panicked: {text}")),
            Status::Failed,
        ),
        JobResult::TimedOut(t) => (
            ErrorInfo::new(
                ErrorClass::Timeout,
                format!("timed out after {} ms", t.as_millis()),
            ),
            Status::TimedOut,
        ),
        JobResult::Lost(why) => (
            ErrorInfo::new(
                ErrorClass::Error,
                format!("the CPU pool is unavailable: {why}"),
            ),
            Status::Failed,
        ),
        JobResult::Abandoned => (
            ErrorInfo::new(
                ErrorClass::Error,
                "the thread running it stopped before it finished",
            ),
            Status::Failed,
        ),
    };
    tracing::debug!(id = %env.id, kind = %env.kind, attempt = env.attempt, class = error.class.as_str(), error = %error.message, "attempt failed");
    if route.retries > 0 {
        env.history.push(error.clone());
        if env.attempt <= route.retries {
            station.retry(env);
        } else {
            ledger.bury(env, error);
        }
    } else {
        ledger.finish(env.route, &env.ticket, final_status, None, Some(error));
    }
}

fn caught(r: Result<ProcessResult, Box<dyn std::any::Any + Send>>) -> JobResult {
    match r {
        Ok(result) => JobResult::Done(result),
        Err(panic) => JobResult::Panicked(panic_message(&*panic)),
    }
}

impl Actor for Worker {
    type Context = Context<Self>;

    fn started(&mut self, ctx: &mut Self::Context) {
        if let Some(backoff) = self.resume_after.take() {
            self.paused = true;
            ctx.run_later(backoff, |act, ctx| {
                act.paused = false;
                act.pump(ctx);
            });
        }
        // A restart drops the context's timers: re-arm the deadline timer.
        self.timer.reset();
        self.arm(ctx);
    }
}

impl Drop for Worker {
    /// The worker is dropped with its thread: on an attached thread that stopped, its backlog
    /// goes to the route's own worker, and slots handed to it are passed on.
    fn drop(&mut self) {
        if !self.attached {
            return;
        }
        rescue(&self.station, self.backlog.drain(..).collect());
        // Out of the line first: its mailbox still looks open while it is dropped, and a slot
        // handed to it after this point would never be used nor given back.
        self.station.route().slots.leave(self.id);
        self.return_granted();
    }
}

impl Supervised for Worker {
    fn restarting(&mut self, _: &mut Self::Context) {
        let route = &self.station.route();
        tracing::info!(kind = %route.kind, processor = %route.processor, "restarting processor with fresh state");
        if let Exec::Async(make) = &self.exec {
            self.processor = Some(make());
        }
    }
}

impl Handler<Run> for Worker {
    type Result = ();
    fn handle(&mut self, mut msg: Run, ctx: &mut Context<Self>) {
        if let Exec::Cpu(..) = self.exec {
            self.station.route().lane.pump_pending.store(false, SeqCst);
            self.prune();
        }
        self.backlog.extend(std::mem::take(&mut msg.envs));
        msg.rescue = None;
        // Only cancelled messages can take the backlog past the route's capacity (a cancel
        // frees its place at once, its envelope stays here until reached): drop them then, so
        // submitting and cancelling behind a busy route does not grow it.
        let capacity = self.station.route().capacity as usize;
        if self.backlog.len() > capacity {
            let store = &self.station.ledger.store;
            self.backlog.retain(|env| !store.is_finished(&env.ticket));
        }
        self.pump(ctx);
    }
}

impl Handler<JobDone> for Worker {
    type Result = ();
    fn handle(&mut self, mut msg: JobDone, ctx: &mut Context<Self>) {
        let (Some(env), Some(result)) = (msg.env.take(), msg.result.take()) else {
            return;
        };
        self.complete(env, result, ctx);
        self.pump(ctx);
    }
}
