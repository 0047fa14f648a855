//! The CPU pool: a `SyncArbiter` of [`CpuPool`] actors, one per thread, sized to the cores.
//!
//! Each thread lazily builds its own instance of every CPU processor it is asked to run. A panic
//! is caught here (an uncaught one would kill the thread for good and silently shrink the pool):
//! the job's result says so, and the actor stops itself, which makes the `SyncArbiter` build a
//! fresh actor (fresh processors) from the factory on the same thread. The pool keeps all its
//! threads through any number of panics.

use std::panic::{catch_unwind, AssertUnwindSafe};
use std::sync::Arc;

use actix::prelude::*;
use serde_json::Value;

use super::worker::JobResult;
use super::{CpuProcessor, Job};
use crate::supervision::panic_message;

type CpuMake = Arc<dyn Fn() -> Box<dyn CpuProcessor> + Send + Sync>;

/// Run one CPU job.
pub(crate) struct RunCpu {
    /// Index of the processor in the pool's list.
    pub processor: usize,
    pub job: Job,
    pub payload: Value,
}

impl Message for RunCpu {
    type Result = JobResult;
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
    type Result = MessageResult<RunCpu>;

    fn handle(&mut self, msg: RunCpu, ctx: &mut SyncContext<Self>) -> Self::Result {
        if msg.job.is_cancelled() {
            // Timed out while waiting for a thread: nobody is waiting for the result.
            return MessageResult(JobResult::Abandoned);
        }
        let makes = &self.makes;
        let processor = self.live[msg.processor].get_or_insert_with(|| makes[msg.processor]());
        let RunCpu { job, payload, .. } = msg;
        match catch_unwind(AssertUnwindSafe(|| processor.process(&job, payload))) {
            Ok(result) => MessageResult(JobResult::Done(result)),
            Err(panic) => {
                let text = panic_message(&*panic);
                tracing::warn!(id = %job.id, kind = %job.kind, panic = %text, "CPU processor panicked; restarting it on this thread");
                ctx.stop();
                MessageResult(JobResult::Panicked(text))
            }
        }
    }
}
