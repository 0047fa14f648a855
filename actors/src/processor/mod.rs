//! Processors: the code that turns a payload into a result.
//!
//! Two pools, two traits. An [`AsyncProcessor`] returns a future and runs on an I/O arbiter; it
//! must never block (use timers and async I/O). A [`CpuProcessor`] runs on the `SyncArbiter`
//! thread pool and may compute for as long as it needs, but should call [`Job::check`] now and
//! then so a timed-out job stops instead of holding its thread.
//!
//! A [`Processor`] is a registration: a name, a pool, an optional payload validator (run at
//! admission, so a bad payload is refused before it is accepted), and a factory. The factory is
//! called on the thread that will run the processor, and called again after a panic: that is how
//! a processor is restarted with fresh state.
//!
//! Layout: `worker` is the supervised actor that runs one route's jobs; `cpu` is the thread
//! pool; [`builtin`] and [`fetch`] are the built-in processors.

pub mod builtin;
pub(crate) mod cpu;
pub mod fetch;
pub(crate) mod worker;

use std::fmt;
use std::future::Future;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;

use futures_util::future::LocalBoxFuture;
use serde::Serialize;
use serde_json::Value;

use crate::dispatcher::Submitter;
use crate::envelope::{ErrorClass, Kind, MessageId};

/// What a processor returns.
pub type ProcessResult = Result<Value, ProcessError>;

/// A processor's error: a class and a message, reported in the message's outcome.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ProcessError {
    /// The coarse class (default [`ErrorClass::Error`]).
    pub class: ErrorClass,
    /// What went wrong, in words.
    pub message: String,
}

impl ProcessError {
    /// An error of class `error`.
    pub fn new(message: impl Into<String>) -> ProcessError {
        ProcessError::with_class(ErrorClass::Error, message)
    }

    /// An error of the given class.
    pub fn with_class(class: ErrorClass, message: impl Into<String>) -> ProcessError {
        ProcessError {
            class,
            message: message.into(),
        }
    }
}

impl fmt::Display for ProcessError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}: {}", self.class.as_str(), self.message)
    }
}

impl std::error::Error for ProcessError {}

/// A flag set when a job's run timeout elapses. Only CPU jobs carry one (an async job is
/// simply dropped at its timeout), so async jobs pay no allocation for it.
#[derive(Debug, Clone, Default)]
pub struct CancelToken(Option<Arc<AtomicBool>>);

impl CancelToken {
    /// A token that can be cancelled.
    pub fn new() -> CancelToken {
        CancelToken(Some(Arc::default()))
    }

    /// Asks the job to stop.
    pub fn cancel(&self) {
        if let Some(flag) = &self.0 {
            flag.store(true, Ordering::Relaxed);
        }
    }

    /// Whether the job was asked to stop.
    pub fn is_cancelled(&self) -> bool {
        self.0.as_ref().is_some_and(|f| f.load(Ordering::Relaxed))
    }
}

/// What a processor knows about the message it is running, and its way back into the dispatcher.
#[derive(Clone)]
pub struct Job {
    /// The message's id.
    pub id: MessageId,
    /// Its kind.
    pub kind: Kind,
    /// The attempt now running (1 for the first).
    pub attempt: u32,
    pub(crate) submitter: Submitter,
    pub(crate) cancel: CancelToken,
}

impl fmt::Debug for Job {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Job")
            .field("id", &self.id)
            .field("kind", &self.kind)
            .field("attempt", &self.attempt)
            .finish()
    }
}

impl Job {
    /// A submit-only handle to the dispatcher, to submit further messages and await them (the
    /// seed's `await` chain).
    ///
    /// Awaiting a message of the *same* route from inside a processor can deadlock if the route's
    /// concurrency is exhausted by messages all waiting on each other; await other routes.
    pub fn submitter(&self) -> &Submitter {
        &self.submitter
    }

    /// Whether the job's timeout has elapsed.
    pub fn is_cancelled(&self) -> bool {
        self.cancel.is_cancelled()
    }

    /// `Err` (class `timeout`) once the job's timeout has elapsed: call it in long loops.
    pub fn check(&self) -> Result<(), ProcessError> {
        if self.cancel.is_cancelled() {
            Err(ProcessError::with_class(
                ErrorClass::Timeout,
                "stopped: the run timeout elapsed",
            ))
        } else {
            Ok(())
        }
    }
}

/// An async processor, run on an I/O arbiter. One instance serves many messages at once.
pub trait AsyncProcessor: 'static {
    /// Starts work on one message. The future must not block its thread.
    fn process(&self, job: Job, payload: Value) -> LocalBoxFuture<'static, ProcessResult>;
}

/// A CPU processor, run on a `SyncArbiter` thread. Each pool thread has its own instance.
pub trait CpuProcessor: Send + 'static {
    /// Computes the result for one message. Call [`Job::check`] in long loops.
    fn process(&mut self, job: &Job, payload: Value) -> ProcessResult;
}

/// Which pool a processor runs on.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
#[serde(rename_all = "snake_case")]
pub enum Pool {
    /// An async I/O arbiter.
    Io,
    /// The `SyncArbiter` CPU pool.
    Cpu,
}

/// Checks a payload at admission; `Err` carries what is wrong.
pub type Validator = Arc<dyn Fn(&Value) -> Result<(), String> + Send + Sync>;

type AsyncMake = Arc<dyn Fn() -> Box<dyn AsyncProcessor> + Send + Sync>;
type CpuMake = Arc<dyn Fn() -> Box<dyn CpuProcessor> + Send + Sync>;

#[derive(Clone)]
pub(crate) enum Make {
    Async(AsyncMake),
    Cpu(CpuMake),
}

/// A processor registration: name, pool, validator and factory.
///
/// ```
/// use mailroom_actors::{Processor, ProcessError};
/// use serde_json::{json, Value};
///
/// // An async processor from a closure.
/// let upper = Processor::from_fn("upper", |_job, payload: Value| async move {
///     let s = payload["text"].as_str().ok_or_else(|| ProcessError::new("text is missing"))?;
///     Ok(json!({ "text": s.to_uppercase() }))
/// })
/// .validate(|p| p["text"].is_string().then_some(()).ok_or_else(|| "text must be a string".into()));
///
/// // A CPU processor from a closure.
/// let sum = Processor::cpu_fn("sum", |job, payload: Value| {
///     let mut total = 0u64;
///     for (i, v) in payload.as_array().into_iter().flatten().enumerate() {
///         if i % 4096 == 0 { job.check()?; }
///         total += v.as_u64().unwrap_or(0);
///     }
///     Ok(json!(total))
/// });
/// assert_eq!(upper.name(), "upper");
/// assert_eq!(sum.pool(), mailroom_actors::Pool::Cpu);
/// ```
#[derive(Clone)]
pub struct Processor {
    pub(crate) name: String,
    pub(crate) validate: Option<Validator>,
    pub(crate) schema: Option<Value>,
    pub(crate) make: Make,
    pub(crate) pure: Purity,
}

/// Which of a processor's messages have no effect outside their result ([`Processor::pure`],
/// [`Processor::pure_when`]).
#[derive(Clone, Default)]
pub(crate) enum Purity {
    /// None: each begins once its record is on disk.
    #[default]
    Never,
    /// Every one.
    Always,
    /// Those whose payload the function accepts.
    When(Arc<dyn Fn(&Value) -> bool + Send + Sync>),
}

impl Purity {
    /// Whether a message with `payload` is pure.
    pub(crate) fn of(&self, payload: &Value) -> bool {
        match self {
            Purity::Never => false,
            Purity::Always => true,
            Purity::When(f) => f(payload),
        }
    }
}

impl fmt::Debug for Processor {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Processor")
            .field("name", &self.name)
            .field("pool", &self.pool())
            .finish()
    }
}

struct FnProcessor<F>(F);

impl<F, Fut> AsyncProcessor for FnProcessor<F>
where
    F: Fn(Job, Value) -> Fut + 'static,
    Fut: Future<Output = ProcessResult> + 'static,
{
    fn process(&self, job: Job, payload: Value) -> LocalBoxFuture<'static, ProcessResult> {
        Box::pin((self.0)(job, payload))
    }
}

struct CpuFnProcessor<F>(F);

impl<F> CpuProcessor for CpuFnProcessor<F>
where
    F: Fn(&Job, Value) -> ProcessResult + Send + 'static,
{
    fn process(&mut self, job: &Job, payload: Value) -> ProcessResult {
        (self.0)(job, payload)
    }
}

impl Processor {
    /// An async processor from a function returning a future.
    pub fn from_fn<F, Fut>(name: impl Into<String>, f: F) -> Processor
    where
        F: Fn(Job, Value) -> Fut + Clone + Send + Sync + 'static,
        Fut: Future<Output = ProcessResult> + 'static,
    {
        Processor::from_factory(name, move || FnProcessor(f.clone()))
    }

    /// An async processor from a factory; the factory runs again after each panic.
    pub fn from_factory<P, F>(name: impl Into<String>, factory: F) -> Processor
    where
        P: AsyncProcessor,
        F: Fn() -> P + Send + Sync + 'static,
    {
        Processor {
            name: name.into(),
            validate: None,
            schema: None,
            make: Make::Async(Arc::new(move || Box::new(factory()))),
            pure: Purity::Never,
        }
    }

    /// A CPU processor from a function.
    pub fn cpu_fn<F>(name: impl Into<String>, f: F) -> Processor
    where
        F: Fn(&Job, Value) -> ProcessResult + Clone + Send + Sync + 'static,
    {
        Processor::cpu_factory(name, move || CpuFnProcessor(f.clone()))
    }

    /// A CPU processor from a factory; each pool thread calls it, and calls it again after a
    /// panic on that thread.
    pub fn cpu_factory<P, F>(name: impl Into<String>, factory: F) -> Processor
    where
        P: CpuProcessor,
        F: Fn() -> P + Send + Sync + 'static,
    {
        Processor {
            name: name.into(),
            validate: None,
            schema: None,
            make: Make::Cpu(Arc::new(move || Box::new(factory()))),
            pure: Purity::Never,
        }
    }

    /// Adds a payload check run at admission: a message whose payload fails it is rejected
    /// ([`Rejected::Invalid`](crate::Rejected::Invalid)) before it is accepted.
    pub fn validate<V>(mut self, v: V) -> Processor
    where
        V: Fn(&Value) -> Result<(), String> + Send + Sync + 'static,
    {
        self.validate = Some(Arc::new(v));
        self
    }

    /// Describes the payloads the processor accepts, as a JSON Schema: shown in
    /// [`RouteInfo::payload_schema`](crate::RouteInfo::payload_schema) (and so in the service's
    /// `/v1/routes` and OpenAPI document). It documents; `validate` decides.
    pub fn schema(mut self, schema: Value) -> Processor {
        self.schema = Some(schema);
        self
    }

    /// Declares that the processor has no effect outside its result: no I/O, no writes, no
    /// state that another message could see (a timer, a computation). With durable storage, a
    /// message for it then begins at once rather than after its `Accepted` record is on disk,
    /// so the fsync overlaps the work. Its result shows only once the record is durable: the
    /// caller's answer, its outcome, its `Started` and `Finished` records and the finished
    /// counters wait for it (it is counted accepted and running at once, as any message); and
    /// if the record cannot be written, the message is refused
    /// ([`Rejected::Storage`](crate::Rejected::Storage)) and what it did is dropped, as if it
    /// had never run. Only messages with no delay begin early. Never declare it of a processor
    /// that sends, writes, fetches or submits anything (a message through [`Job::submitter`] is
    /// an effect); for one whose effect depends on its payload, see [`Processor::pure_when`].
    pub fn pure(mut self) -> Processor {
        self.pure = Purity::Always;
        self
    }

    /// [`Processor::pure`] for the messages whose payload `is_pure` accepts (checked once, at
    /// admission, after [`Processor::validate`]; it must be cheap, and must not panic), for a
    /// processor whose effect depends on what it is asked:
    /// `fetch` declares its `GET`, `HEAD` and `OPTIONS` requests pure, which HTTP defines as
    /// safe (a client "does not request, and does not expect, any state change" by them, RFC
    /// 9110 §9.2.1): if such a message is refused because its record could not be written, or
    /// the server crashed before the record was on disk, the request may have been sent, and
    /// the client's retry sends it again, as any HTTP client retrying a `GET` does.
    pub fn pure_when(
        mut self,
        is_pure: impl Fn(&Value) -> bool + Send + Sync + 'static,
    ) -> Processor {
        self.pure = Purity::When(Arc::new(is_pure));
        self
    }

    /// Whether the processor was declared [`pure`](Processor::pure) (for every message).
    pub fn is_pure(&self) -> bool {
        matches!(self.pure, Purity::Always)
    }

    /// The registered name.
    pub fn name(&self) -> &str {
        &self.name
    }

    /// The pool it runs on.
    pub fn pool(&self) -> Pool {
        match self.make {
            Make::Async(_) => Pool::Io,
            Make::Cpu(_) => Pool::Cpu,
        }
    }
}
