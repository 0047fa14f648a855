//! The route worker: one supervised actor per route, on an I/O arbiter. It runs the route's
//! messages with at most `concurrency` at once, applies the run timeout, catches panics, decides
//! retries and dead letters, and records each outcome.
//!
//! It receives [`Run`] batches from the router and [`JobDone`] from its own jobs. Async jobs run
//! as separate local tasks (actix polls every future spawned on an actor context at each wake-up,
//! which would make many concurrent jobs quadratic); a job that finishes on its first poll, like
//! `echo`, completes inline with no task at all. CPU jobs are sent to the `SyncArbiter` pool and
//! awaited from a local task, so a timeout can also raise the job's cancel flag.
//!
//! On a panic in an async processor the message fails (class `panic`, or is retried) and the
//! worker stops itself on purpose: its `Supervisor` restarts it, `restarting()` builds a fresh
//! processor from the factory, and waiting messages stay in the mailbox and backlog. The restart
//! is counted against the route's budget, which may mark the route degraded, and the worker
//! pauses for the budget's backoff before taking work again.

use std::collections::VecDeque;
use std::panic::{catch_unwind, AssertUnwindSafe};
use std::sync::atomic::Ordering::Relaxed;
use std::sync::Arc;
use std::task::{Context as TaskContext, Poll, Waker};
use std::time::Duration;

use actix::prelude::*;
use futures_util::FutureExt;

use super::cpu::{CpuPool, RunCpu};
use super::{AsyncProcessor, CancelToken, Job, ProcessError, ProcessResult};
use crate::dispatcher::{Core, Dispatcher};
use crate::envelope::{Envelope, ErrorClass, ErrorInfo, Status};
use crate::supervision::panic_message;

/// Run these envelopes (all of this worker's route).
#[derive(Message)]
#[rtype(result = "()")]
pub struct Run(pub Vec<Envelope>);

/// How one attempt ended.
#[derive(Debug)]
pub(crate) enum JobResult {
    Done(ProcessResult),
    Panicked(String),
    TimedOut(Duration),
    /// The CPU job was dropped before it ran because its timeout had already elapsed.
    Abandoned,
    /// The CPU pool could not be reached.
    Lost(String),
}

/// A job finished (sent by the job's task to its worker).
#[derive(Message)]
#[rtype(result = "()")]
pub(crate) struct JobDone {
    env: Envelope,
    result: JobResult,
}

type AsyncMake = Arc<dyn Fn() -> Box<dyn AsyncProcessor> + Send + Sync>;

pub(crate) enum Exec {
    Async(AsyncMake),
    Cpu(Addr<CpuPool>, usize),
}

pub(crate) struct Worker {
    core: Arc<Core>,
    route: usize,
    exec: Exec,
    processor: Option<Box<dyn AsyncProcessor>>,
    backlog: VecDeque<Envelope>,
    running: usize,
    limit: usize,
    paused: bool,
    resume_after: Option<Duration>,
}

impl Worker {
    pub(crate) fn new(core: Arc<Core>, route: usize, exec: Exec) -> Worker {
        let limit = core.routes[route].concurrency;
        let processor = match &exec {
            Exec::Async(make) => Some(make()),
            Exec::Cpu(..) => None,
        };
        Worker {
            core,
            route,
            exec,
            processor,
            backlog: VecDeque::new(),
            running: 0,
            limit,
            paused: false,
            resume_after: None,
        }
    }

    /// Starts backlog messages while there is room. Jobs that finish on their first poll are
    /// completed right here (in a loop, not by recursion: a long backlog of `echo` must not
    /// grow the stack).
    fn pump(&mut self, ctx: &mut Context<Self>) {
        while !self.paused && self.running < self.limit && ctx.state() == ActorState::Running {
            let Some(env) = self.backlog.pop_front() else {
                break;
            };
            if let Some((env, result)) = self.start(env, ctx) {
                self.complete(env, result, ctx);
            }
        }
    }

    /// Starts one attempt. Returns the envelope and result if it finished on the spot.
    fn start(
        &mut self,
        mut env: Envelope,
        ctx: &mut Context<Self>,
    ) -> Option<(Envelope, JobResult)> {
        let core = &self.core;
        let route = &core.routes[self.route];
        match core.store.start(&env.ticket) {
            Ok(attempt) => env.attempt = attempt,
            Err(_) => return None, // cancelled while it waited (already counted), or shut down
        }
        self.running += 1;
        route.stats.running.fetch_add(1, Relaxed);
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
            dispatcher: Dispatcher { core: core.clone() },
            cancel: cancel.clone(),
        };
        let timeout = env.timeout.or(route.timeout);
        match &self.exec {
            Exec::Async(_) => {
                let processor = self
                    .processor
                    .as_ref()
                    .expect("async worker has a processor");
                let fut = match catch_unwind(AssertUnwindSafe(|| processor.process(job, payload))) {
                    Ok(fut) => fut,
                    Err(panic) => {
                        let text = panic_message(&*panic);
                        return Some((env, JobResult::Panicked(text)));
                    }
                };
                let mut fut = fut;
                // Fast path: most quick processors finish on their first poll. A future that
                // returns Pending registers this no-op waker, and is polled again (with the
                // task's real waker) as soon as it is spawned below.
                let mut noop = TaskContext::from_waker(Waker::noop());
                match catch_unwind(AssertUnwindSafe(|| fut.as_mut().poll(&mut noop))) {
                    Ok(Poll::Ready(r)) => return Some((env, JobResult::Done(r))),
                    Ok(Poll::Pending) => {}
                    Err(panic) => return Some((env, JobResult::Panicked(panic_message(&*panic)))),
                }
                let fut = AssertUnwindSafe(fut).catch_unwind();
                let addr = ctx.address();
                actix_rt::spawn(async move {
                    let result = match timeout {
                        Some(t) => match actix_rt::time::timeout(t, fut).await {
                            Ok(r) => caught(r),
                            Err(_) => JobResult::TimedOut(t),
                        },
                        None => caught(fut.await),
                    };
                    addr.do_send(JobDone { env, result });
                });
            }
            Exec::Cpu(pool, index) => {
                let request = pool.send(RunCpu {
                    processor: *index,
                    job,
                    payload,
                });
                let addr = ctx.address();
                actix_rt::spawn(async move {
                    let sent = match timeout {
                        Some(t) => match actix_rt::time::timeout(t, request).await {
                            Ok(r) => r,
                            Err(_) => {
                                cancel.cancel();
                                Ok(JobResult::TimedOut(t))
                            }
                        },
                        None => request.await,
                    };
                    let result = sent.unwrap_or_else(|e| JobResult::Lost(e.to_string()));
                    addr.do_send(JobDone { env, result });
                });
            }
        }
        None
    }

    /// Records how an attempt ended: the outcome, a retry, or a dead letter. After a panic in an
    /// async processor it stops the actor so the Supervisor restarts it.
    fn complete(&mut self, mut env: Envelope, result: JobResult, ctx: &mut Context<Self>) {
        self.running -= 1;
        let core = self.core.clone();
        let route = &core.routes[self.route];
        route.stats.running.fetch_sub(1, Relaxed);
        let (error, final_status, panicked) = match result {
            JobResult::Done(Ok(value)) => {
                core.finish(
                    self.route,
                    &env.ticket,
                    Status::Completed,
                    Some(value),
                    None,
                );
                return;
            }
            JobResult::Done(Err(ProcessError { class, message })) => {
                (ErrorInfo::new(class, message), Status::Failed, false)
            }
            JobResult::Panicked(text) => (
                ErrorInfo::new(ErrorClass::Panic, format!("processor panicked: {text}")),
                Status::Failed,
                true,
            ),
            JobResult::TimedOut(t) => (
                ErrorInfo::new(
                    ErrorClass::Timeout,
                    format!("timed out after {} ms", t.as_millis()),
                ),
                Status::TimedOut,
                false,
            ),
            JobResult::Abandoned => (
                ErrorInfo::new(
                    ErrorClass::Timeout,
                    "timed out before a CPU thread was free",
                ),
                Status::TimedOut,
                false,
            ),
            JobResult::Lost(why) => (
                ErrorInfo::new(
                    ErrorClass::Error,
                    format!("the CPU pool is unavailable: {why}"),
                ),
                Status::Failed,
                false,
            ),
        };
        tracing::debug!(id = %env.id, kind = %env.kind, attempt = env.attempt, class = error.class.as_str(), error = %error.message, "attempt failed");
        if panicked {
            // Counted before the outcome is published, so whoever sees the failure also sees
            // the restart (and a degraded route).
            let decision = route.record_restart(core.epoch, &core.settings.restart);
            if matches!(self.exec, Exec::Async(_)) {
                self.resume_after = Some(decision.backoff);
            }
        }
        if route.retries > 0 {
            env.history.push(error.clone());
            if env.attempt <= route.retries {
                core.retry(env);
            } else {
                core.bury(env, error);
            }
        } else {
            core.finish(self.route, &env.ticket, final_status, None, Some(error));
        }
        if panicked && matches!(self.exec, Exec::Async(_)) {
            ctx.stop(); // the Supervisor restarts us with a fresh processor
        }
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
    }
}

impl Supervised for Worker {
    fn restarting(&mut self, _: &mut Self::Context) {
        let route = &self.core.routes[self.route];
        tracing::info!(kind = %route.kind, processor = %route.processor, "restarting processor with fresh state");
        if let Exec::Async(make) = &self.exec {
            self.processor = Some(make());
        }
    }
}

impl Handler<Run> for Worker {
    type Result = ();
    fn handle(&mut self, msg: Run, ctx: &mut Context<Self>) {
        self.backlog.extend(msg.0);
        self.pump(ctx);
    }
}

impl Handler<JobDone> for Worker {
    type Result = ();
    fn handle(&mut self, msg: JobDone, ctx: &mut Context<Self>) {
        self.complete(msg.env, msg.result, ctx);
        self.pump(ctx);
    }
}
