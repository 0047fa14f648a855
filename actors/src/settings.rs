//! Plain settings structs. The library reads no files: the server (or any embedding program)
//! fills these in, and [`DispatcherBuilder::build`](crate::DispatcherBuilder::build) checks their
//! ranges and refuses bad values with a [`BuildError`](crate::BuildError).

use std::time::Duration;

/// Dispatcher-wide settings. `Settings::default()` is a sensible single-machine setup.
#[derive(Debug, Clone, PartialEq)]
pub struct Settings {
    /// Default bound per route on queued + delayed + running messages.
    pub capacity: usize,
    /// How long a finished outcome is kept for callers to read.
    pub result_ttl: Duration,
    /// How many finished outcomes are kept at most (the oldest are evicted first).
    pub max_results: usize,
    /// About how many bytes of finished outcomes (results and errors) are kept at most; past
    /// it the oldest are evicted first, like past `max_results`.
    pub max_result_bytes: usize,
    /// How many dead letters are kept at most (the oldest are dropped first, with a warning).
    pub max_dead_letters: usize,
    /// About how many bytes of dead letters (payloads and errors) are kept at most.
    pub max_dead_letter_bytes: usize,
    /// The longest delay a message may ask for.
    pub max_delay: Duration,
    /// The longest run timeout a message may ask for.
    pub max_timeout: Duration,
    /// Async (I/O) processors.
    pub io: IoSettings,
    /// CPU processors.
    pub cpu: CpuSettings,
    /// The `fetch` processor.
    pub fetch: FetchSettings,
    /// How crash-looping processors are restarted and when a route is marked degraded.
    pub restart: RestartPolicy,
}

impl Default for Settings {
    fn default() -> Self {
        Settings {
            capacity: 10_000,
            result_ttl: Duration::from_secs(600),
            max_results: 100_000,
            max_result_bytes: 256 * 1024 * 1024,
            max_dead_letters: 10_000,
            max_dead_letter_bytes: 64 * 1024 * 1024,
            max_delay: Duration::from_secs(24 * 3600),
            max_timeout: Duration::from_secs(3600),
            io: IoSettings::default(),
            cpu: CpuSettings::default(),
            fetch: FetchSettings::default(),
            restart: RestartPolicy::default(),
        }
    }
}

/// The async arbiters that run I/O processors (and the router).
#[derive(Debug, Clone, PartialEq)]
pub struct IoSettings {
    /// How many I/O arbiters (threads) to start; routes are spread over them.
    pub arbiters: usize,
    /// Default cap on messages running at once in one async route.
    pub concurrency: usize,
    /// A thread that runs the dispatcher's actors and does not answer for this long is reported
    /// (a warning, and [`LedgerSnapshot::stalls`](crate::LedgerSnapshot::stalls)): something on
    /// it blocks. Zero turns the watchdog off.
    pub stall_warn: Duration,
}

impl Default for IoSettings {
    fn default() -> Self {
        IoSettings {
            arbiters: 1,
            concurrency: 1024,
            stall_warn: Duration::from_millis(250),
        }
    }
}

/// The `SyncArbiter` pool that runs CPU processors.
#[derive(Debug, Clone, PartialEq, Default)]
pub struct CpuSettings {
    /// Threads in the pool; 0 means one per core.
    pub threads: usize,
}

impl CpuSettings {
    /// The thread count with 0 resolved to the number of cores.
    pub fn resolved_threads(&self) -> usize {
        if self.threads == 0 {
            std::thread::available_parallelism().map_or(2, |n| n.get())
        } else {
            self.threads
        }
    }
}

/// The `fetch` processor's client.
#[derive(Debug, Clone, PartialEq)]
pub struct FetchSettings {
    /// Hosts or IP addresses that may be fetched although they are loopback, private or
    /// link-local (for example `127.0.0.1` in tests, or an internal service you trust).
    pub allow_hosts: Vec<String>,
    /// Default request timeout (a payload's `timeout_ms` overrides it).
    pub timeout: Duration,
    /// Connection limit of each client (one client per I/O arbiter).
    pub max_connections: usize,
    /// Response bodies are read up to this many bytes; the rest is cut off and flagged.
    pub max_body_bytes: usize,
}

impl Default for FetchSettings {
    fn default() -> Self {
        FetchSettings {
            allow_hosts: Vec::new(),
            timeout: Duration::from_secs(10),
            max_connections: 1024,
            max_body_bytes: 1024 * 1024,
        }
    }
}

/// OTP-style restart intensity: more than `max_restarts` within `window` marks the route
/// degraded for one `window`, during which it rejects new messages.
#[derive(Debug, Clone, PartialEq)]
pub struct RestartPolicy {
    /// Restarts tolerated within one window.
    pub max_restarts: u32,
    /// The sliding window.
    pub window: Duration,
    /// Pause before a restarted processor takes work, doubled for each further restart within
    /// the window (the first restart in a window has no pause).
    pub backoff: Duration,
    /// The longest pause.
    pub max_backoff: Duration,
}

impl RestartPolicy {
    /// Checks that the budget can be spent within the window: with the backoff between
    /// restarts, `max_restarts` restarts must fit in `window`, so a crash-looping route is
    /// degraded rather than restarted forever. `Err` says what to change.
    pub fn check(&self) -> Result<(), String> {
        crate::supervision::check_restart_budget(self)
    }
}

impl Default for RestartPolicy {
    fn default() -> Self {
        RestartPolicy {
            max_restarts: 10,
            window: Duration::from_secs(10),
            backoff: Duration::from_millis(5),
            max_backoff: Duration::from_secs(1),
        }
    }
}

/// One route: which processor handles a kind, and its limits.
#[derive(Debug, Clone, PartialEq)]
pub struct RouteSettings {
    /// The processor's registered name (`echo`, `sleep`, `fetch`, `primes`, `hash`, `chaos`, or
    /// one of yours).
    pub processor: String,
    /// Bound on queued + delayed + running messages; `None` uses [`Settings::capacity`].
    pub capacity: Option<usize>,
    /// Run timeout of one attempt; `None` means no timeout unless the message sets one.
    pub timeout: Option<Duration>,
    /// How many times a failed attempt is retried (0: a failure is final, status `failed`).
    pub retries: u32,
    /// Delay before the first retry; doubles for each further one, with jitter.
    pub backoff: Duration,
    /// Cap on messages running at once; `None` uses [`IoSettings::concurrency`] for async
    /// processors. For CPU processors it caps the route's messages given to the pool (running
    /// or waiting for a thread); `None` means no cap beyond the route's capacity: all CPU routes
    /// share the pool's threads in arrival order. Set it to keep a route of long jobs from
    /// taking every thread. A CPU job that times out keeps its slot until its thread returns
    /// (a processor that ignores [`Job::check`](crate::Job::check) holds it to the end).
    pub concurrency: Option<usize>,
    /// Most unfinished messages of one client in this route (`None`: no per-client limit).
    pub max_per_client: Option<usize>,
}

impl RouteSettings {
    /// A route to `processor` with default limits.
    pub fn new(processor: impl Into<String>) -> RouteSettings {
        RouteSettings {
            processor: processor.into(),
            capacity: None,
            timeout: None,
            retries: 0,
            backoff: Duration::from_millis(100),
            concurrency: None,
            max_per_client: None,
        }
    }

    /// Sets the capacity.
    pub fn capacity(mut self, capacity: usize) -> Self {
        self.capacity = Some(capacity);
        self
    }

    /// Sets the run timeout.
    pub fn timeout(mut self, timeout: Duration) -> Self {
        self.timeout = Some(timeout);
        self
    }

    /// Sets retries and the first backoff.
    pub fn retries(mut self, retries: u32, backoff: Duration) -> Self {
        self.retries = retries;
        self.backoff = backoff;
        self
    }

    /// Sets the concurrency cap.
    pub fn concurrency(mut self, concurrency: usize) -> Self {
        self.concurrency = Some(concurrency);
        self
    }

    /// At most `max` unfinished messages of one client (see
    /// [`Message::client`](crate::Message::client)) in this route, so one client cannot take
    /// all of its capacity; messages without a client are not limited by it. A message's place
    /// is given back when its envelope is dropped after it ends (a cancelled one: when the
    /// router or worker holding it next runs).
    pub fn max_per_client(mut self, max: usize) -> Self {
        self.max_per_client = Some(max);
        self
    }
}
