//! The CPU pool: a `SyncArbiter` of [`CpuPool`] actors, one per thread, sized to the cores.
//!
//! Each thread lazily builds its own instance of every CPU processor it is asked to run. A panic
//! is caught here (an uncaught one would kill the thread for good and silently shrink the pool):
//! the job fails with the panic text, and the actor stops itself, which makes the `SyncArbiter`
//! build a fresh actor (fresh processors) from the factory on the same thread. The pool keeps all
//! its threads through any number of panics.
//!
//! The thread that runs a job also settles it (outcome, retry or dead letter, through
//! [`settle`]) unless the route worker's run timeout got there first; the [`Handoff`] decides
//! which of the two does, exactly once, and tells the timer when the job began. The thread then
//! gives the job's slot back to the route's [`Lane`](crate::route::Lane) and wakes the worker
//! only if it holds a backlog.

use std::panic::{catch_unwind, AssertUnwindSafe};
use std::sync::atomic::Ordering::{Relaxed, SeqCst};
use std::sync::Arc;
use std::time::{Duration, Instant};

use actix::prelude::*;
use parking_lot::Mutex;
use serde_json::Value;

use super::worker::{settle, JobResult, Run, Station};
use super::{CancelToken, CpuProcessor, Job};
use crate::commit::{standing, Standing};
use crate::envelope::Envelope;
use crate::supervision::panic_message;

type CpuMake = Arc<dyn Fn() -> Box<dyn CpuProcessor> + Send + Sync>;

/// A CPU job between its worker and the pool thread. The envelope sits here until the attempt is
/// settled: the thread takes it when the job is done, the worker's timer when the run timeout
/// elapses first, and whoever takes it settles the attempt, exactly once. The run timeout counts
/// from `began`, when a thread begins the job, not from the hand-off: time spent waiting for a
/// thread is not run time.
pub(crate) struct Handoff {
    state: Mutex<HandoffState>,
    cancel: CancelToken,
}

struct HandoffState {
    env: Option<Envelope>,
    began: Option<Instant>,
    /// A timed-out attempt that will be retried: its retry waits here until the thread returns
    /// from the attempt, so two attempts of one message never run at once.
    parked: Option<(Envelope, Duration)>,
}

/// What the worker's timer found when a job's deadline came.
pub(crate) enum Expiry {
    /// Already settled by its thread (or skipped): nothing to do.
    Settled,
    /// No thread has begun it: no run time has passed yet.
    Waiting,
    /// Begun at this instant and still running.
    Running(Instant),
}

impl Handoff {
    pub(crate) fn new(env: Envelope, cancel: CancelToken) -> Handoff {
        Handoff {
            state: Mutex::new(HandoffState {
                env: Some(env),
                began: None,
                parked: None,
            }),
            cancel,
        }
    }

    pub(crate) fn is_settled(&self) -> bool {
        self.state.lock().env.is_none()
    }

    /// Timer side: where the job stands.
    pub(crate) fn expiry(&self) -> Expiry {
        let st = self.state.lock();
        match (&st.env, st.began) {
            (None, _) => Expiry::Settled,
            (Some(_), None) => Expiry::Waiting,
            (Some(_), Some(at)) => Expiry::Running(at),
        }
    }

    /// Timer side: a job has run past its `timeout`: raises its cancel flag and takes its
    /// envelope to settle it as timed out now — unless `will_retry` says the attempt would be
    /// retried, in which case the envelope is parked for the thread to settle when it returns
    /// (the retry must not run beside the attempt it replaces). `None` when there is nothing
    /// for the timer to settle (parked, or the thread settled it meanwhile).
    pub(crate) fn time_out(
        &self,
        timeout: Duration,
        will_retry: impl FnOnce(&Envelope) -> bool,
    ) -> Option<Envelope> {
        let mut st = self.state.lock();
        let env = st.env.take()?;
        self.cancel.cancel();
        if will_retry(&env) {
            st.parked = Some((env, timeout));
            return None;
        }
        Some(env)
    }

    /// Thread side, after the job: the attempt to settle, with what happened to it — the
    /// thread's own result, or the timeout that was parked for it; `None` if the timer
    /// settled it already.
    fn finish(&self, result: JobResult) -> Option<(Envelope, JobResult)> {
        let mut st = self.state.lock();
        if let Some(env) = st.env.take() {
            return Some((env, result));
        }
        // A parked attempt ended by its timeout; a panic on the way out still counts as one
        // (against the restart budget).
        st.parked.take().map(|(env, t)| match result {
            JobResult::Panicked(text) => (env, JobResult::Panicked(text)),
            _ => (env, JobResult::TimedOut(t)),
        })
    }

    /// Thread side: marks the message running and returns its attempt number, or `None` when
    /// there is nothing to run (cancelled while it waited, finished by a shutdown, or refused:
    /// its record could not be written). Done under the lock, so the timer sees a job either
    /// waiting or running since a known instant.
    ///
    /// A message that began before its record was durable ([`Processor::pure`]) is not run if
    /// the record has failed (it is taken back: no trace), and has its `Started` record written
    /// only once the record is durable.
    ///
    /// [`Processor::pure`]: crate::Processor::pure
    fn begin(&self, station: &Station) -> Option<u32> {
        let mut st = self.state.lock();
        let env = st.env.as_mut()?;
        let started = match standing(&env.commit) {
            Standing::Failed => {
                let env = st.env.take()?;
                station.ledger.take_back(env.route, &env.ticket);
                return None;
            }
            Standing::Pending(commit) => {
                station.ledger.start_unwritten(&env.ticket).inspect(|&a| {
                    let (ledger, id) = (station.ledger.clone(), env.id);
                    commit.then(move |committed| {
                        if committed.is_ok() {
                            ledger.write_started(id, a);
                        }
                    });
                })
            }
            Standing::Durable => station.ledger.start(&env.ticket),
        };
        match started {
            Ok(attempt) => {
                env.attempt = attempt;
                station.route().stats.running.fetch_add(1, Relaxed);
                st.began = Some(Instant::now());
                Some(attempt)
            }
            Err(_) => {
                st.env = None;
                None
            }
        }
    }
}

/// Run one CPU job, then settle it and give back its slot.
pub(crate) struct RunCpu {
    /// Index of the processor in the pool's list.
    pub processor: usize,
    /// The job's route: its ledger, router and counters.
    pub station: Arc<Station>,
    pub job: Job,
    pub payload: Value,
    pub handoff: Arc<Handoff>,
}

impl Message for RunCpu {
    type Result = ();
}

pub(crate) struct CpuPool {
    makes: Arc<Vec<CpuMake>>,
    live: Vec<Option<Box<dyn CpuProcessor>>>,
}

impl CpuPool {
    pub(crate) fn new(makes: Arc<Vec<CpuMake>>) -> CpuPool {
        let live = (0..makes.len()).map(|_| None).collect();
        CpuPool { makes, live }
    }
}

impl Actor for CpuPool {
    type Context = SyncContext<Self>;
}

impl Handler<RunCpu> for CpuPool {
    type Result = ();

    fn handle(&mut self, msg: RunCpu, ctx: &mut SyncContext<Self>) {
        let RunCpu {
            processor,
            station,
            job,
            payload,
            handoff,
        } = msg;
        let mut job = job;
        if let Some(attempt) = handoff.begin(&station) {
            job.attempt = attempt;
            let makes = &self.makes;
            let instance = self.live[processor].get_or_insert_with(|| makes[processor]());
            let result = match catch_unwind(AssertUnwindSafe(|| instance.process(&job, payload))) {
                Ok(result) => JobResult::Done(result),
                Err(panic) => {
                    let text = panic_message(&*panic);
                    tracing::warn!(id = %job.id, kind = %job.kind, panic = %text, "CPU processor panicked; restarting it on this thread");
                    ctx.stop();
                    JobResult::Panicked(text)
                }
            };
            if let Some((env, result)) = handoff.finish(result) {
                station.route().stats.running.fetch_sub(1, Relaxed);
                settle(&station, env, result);
            }
        }
        // Give the slot back; wake the worker if it holds messages that the slot lets it start
        // (at most one wake-up pending at a time).
        let r = station.route();
        r.lane.handed.fetch_sub(1, SeqCst);
        if r.lane.waiting.load(SeqCst) > 0 && !r.lane.pump_pending.swap(true, SeqCst) {
            if let Some(worker) = r.worker.get() {
                worker.do_send(Run::default());
            }
        }
    }
}
