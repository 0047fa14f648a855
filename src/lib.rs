//! Mailroom, the service: the HTTP front end, `config.toml`, the TCP and timer sources, graceful
//! shutdown and the command-line client, on top of the [`mailroom_actors`] library.
//!
//! # Layout
//!
//! - [`config`] — the configuration as data, and its layered loader.
//! - [`api`] — the HTTP handlers, their OpenAPI description and the route table.
//! - [`problem`] — [`problem::ApiError`], the only error → status table.
//! - [`connections`] — each client's share of the HTTP connections.
//! - [`metrics`] — the ledger as Prometheus text.
//! - [`ui`] — the dashboard at `/ui` and the `/v1/overview` it polls.
//! - [`cli`] — the command-line client (`send`, `batch`, `status`, `routes`, …).
//! - [`run`] — starts everything on given listeners and drains on a shutdown signal; `main.rs`
//!   only parses flags, sets up logging, binds and calls it, so tests start the real server on
//!   port 0.

pub mod api;
pub mod cli;
pub mod config;
pub mod connections;
pub mod metrics;
pub mod problem;
pub mod ui;

use std::future::Future;
use std::io;
use std::net::TcpListener;
use std::sync::Arc;
use std::time::Duration;

use actix_web::{middleware, web, App, HttpServer};
use mailroom_actors::{
    BuildError, Cluster, ClusterError, Dispatcher, DispatcherBuilder, Message, ShutdownReport,
    StopAccepting, TcpSource,
};

use crate::api::AppState;
use crate::config::Config;

pub use mailroom_actors::source::timer::ScheduleError;

/// The sockets the service listens on, bound before [`run`] so tests can use port 0.
#[derive(Debug)]
pub struct Listeners {
    /// The HTTP API.
    pub http: TcpListener,
    /// The newline-delimited JSON source, when `[sources.tcp]` is configured.
    pub tcp: Option<TcpListener>,
}

impl Listeners {
    /// Binds the addresses `config` names, with `server.backlog` as their listen backlog.
    pub fn bind(config: &Config) -> io::Result<Listeners> {
        let backlog = config.server.backlog;
        let http = listen(&config.server.bind, backlog).map_err(|e| {
            io::Error::new(
                e.kind(),
                format!("cannot listen on {}: {e}", config.server.bind),
            )
        })?;
        let tcp = match &config.sources.tcp {
            Some(t) => Some(listen(&t.bind, backlog).map_err(|e| {
                io::Error::new(
                    e.kind(),
                    format!("cannot listen on {} (TCP source): {e}", t.bind),
                )
            })?),
            None => None,
        };
        Ok(Listeners { http, tcp })
    }
}

/// A listener on `addr` with a listen backlog of `backlog` (the standard library's `bind` uses
/// 128, which drops connections when a thousand clients connect at once). The kernel caps it at
/// `net.core.somaxconn`.
pub fn listen(addr: &str, backlog: u32) -> io::Result<TcpListener> {
    use socket2::{Domain, Socket, Type};
    let addr: std::net::SocketAddr = addr
        .parse()
        .map_err(|e| io::Error::new(io::ErrorKind::InvalidInput, format!("{addr:?}: {e}")))?;
    let socket = Socket::new(Domain::for_address(addr), Type::STREAM, None)?;
    socket.set_reuse_address(true)?;
    socket.bind(&addr.into())?;
    socket.listen(backlog.min(i32::MAX as u32) as i32)?;
    Ok(socket.into())
}

/// Why the service could not start. Each variant's message already says the whole of its cause,
/// so the cause is not also given as `source()` (it would be printed twice in an error chain).
#[derive(Debug, thiserror::Error)]
pub enum ServeError {
    /// The routes or settings were refused by the library.
    #[error("cannot start the dispatcher: {0}")]
    Build(BuildError),
    /// A schedule names a kind without a route, or a payload its route refuses.
    #[error("cannot start a schedule: {0}")]
    Schedule(ScheduleError),
    /// A listener could not be used.
    #[error("{0}")]
    Io(io::Error),
    /// The cluster (`[cluster]`) could not be joined.
    #[error("cannot join the cluster: {0}")]
    Cluster(ClusterError),
    /// The storage (`[storage]`) could not be opened or read back.
    #[error("cannot open the storage: {0}")]
    Storage(mailroom_actors::StorageError),
}

impl From<BuildError> for ServeError {
    fn from(e: BuildError) -> Self {
        ServeError::Build(e)
    }
}

impl From<ScheduleError> for ServeError {
    fn from(e: ScheduleError) -> Self {
        ServeError::Schedule(e)
    }
}

impl From<io::Error> for ServeError {
    fn from(e: io::Error) -> Self {
        ServeError::Io(e)
    }
}

/// Builds the dispatcher that `config` describes (storage, routes and schedules). With a
/// journal, what it holds is recovered first.
pub fn dispatcher(config: &Config) -> Result<Dispatcher, ServeError> {
    let storage = config.open_storage().map_err(ServeError::Storage)?;
    let d = with_routes(config, Some(storage))?;
    for s in config.schedules() {
        d.schedule(s)?;
    }
    Ok(d)
}

/// Checks what [`dispatcher`] would start, without starting any schedule: builds the routes,
/// checks every schedule (a routed kind, a payload its route accepts), then shuts the dispatcher
/// down. Must run inside an actix `System`.
pub async fn check(config: &Config) -> Result<(), ServeError> {
    let d = with_routes(config, None)?;
    let checked = config
        .schedules()
        .iter()
        .try_for_each(|s| d.check_schedule(s));
    d.shutdown(Duration::ZERO).await;
    Ok(checked?)
}

/// The dispatcher with `config`'s settings and routes, no schedules yet; in memory when no
/// storage is given.
fn with_routes(
    config: &Config,
    storage: Option<Arc<dyn mailroom_actors::Storage>>,
) -> Result<Dispatcher, ServeError> {
    let mut b = builder(config);
    if let Some(storage) = storage {
        b = b.storage(storage);
    }
    Ok(b.build()?)
}

/// A dispatcher builder with `config`'s settings and routes.
fn builder(config: &Config) -> DispatcherBuilder {
    let mut b = Dispatcher::builder(config.settings());
    for (kind, route) in config.route_settings() {
        b = b.route(kind, route);
    }
    b
}

/// Joins the cluster `[cluster]` names, and starts `config`'s schedules on it: each due time
/// is submitted by every node under one idempotency key, so it runs once in the cluster.
async fn join(config: &Config) -> Result<Cluster, ServeError> {
    let c = config.cluster.as_ref().expect("called with [cluster]");
    // The routes and schedules are checked as a single node would before anything starts.
    check(config).await?;
    let cluster = Cluster::join(c.settings(), builder(config))
        .await
        .map_err(ServeError::Cluster)?;
    for (i, s) in config.schedules().into_iter().enumerate() {
        actix_rt::spawn(cluster_schedule(cluster.clone(), i, s));
    }
    Ok(cluster)
}

/// Submits schedule `i` at each due time, keyed by the due time so every node submits the same
/// message. An interval's due times are the multiples of the interval since the Unix epoch.
async fn cluster_schedule(cluster: Cluster, i: usize, s: mailroom_actors::Schedule) {
    use mailroom_actors::Every;
    let now_ms = || {
        std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(0, |d| d.as_millis() as u64)
    };
    let submit = |tick: String| {
        let msg = Message::new(s.kind.clone(), s.payload.clone())
            .source(mailroom_actors::Source::Timer)
            .key(format!("schedule-{i}-{tick}"));
        let cluster = cluster.clone();
        async move {
            if let Err(r) = cluster.accept(msg).await {
                tracing::warn!(schedule = i, error = %r, "a scheduled message was refused");
            }
        }
    };
    match s.when {
        Every::Once(after) => {
            actix_rt::time::sleep(after).await;
            submit("once".into()).await;
        }
        Every::Interval(every) => {
            let every_ms = (every.as_millis() as u64).max(1);
            loop {
                let next = (now_ms() / every_ms + 1) * every_ms;
                actix_rt::time::sleep(Duration::from_millis(next.saturating_sub(now_ms()))).await;
                if cluster.is_draining() {
                    return;
                }
                submit(next.to_string()).await;
            }
        }
    }
}

/// Runs the service until `shutdown` resolves, then drains: `/readyz` turns false, new
/// submissions get `503`, queued and running messages get `server.shutdown_timeout_ms` to
/// finish, the HTTP server stops gracefully, and the drain report is returned (and logged).
/// Must run inside an actix `System` (`#[actix_web::main]`).
pub async fn run(
    listeners: Listeners,
    config: Config,
    shutdown: impl Future<Output = ()>,
) -> Result<ShutdownReport, ServeError> {
    let cluster = match &config.cluster {
        Some(_) => Some(join(&config).await?),
        None => None,
    };
    let dispatcher = match &cluster {
        Some(c) => c.dispatcher().clone(),
        None => dispatcher(&config)?,
    };
    let tcp = match listeners.tcp {
        Some(l) => Some(TcpSource::start(
            dispatcher.clone(),
            l,
            config.tcp_settings(),
        )?),
        None => None,
    };
    let s = &config.server;
    let shares = connections::Shares::new(s.client_connection_share());
    let state = web::Data::new(AppState {
        dispatcher: dispatcher.clone(),
        cluster: cluster.clone(),
        max_body: s.max_body_bytes,
        max_batch: s.max_batch,
        max_depth: s.max_json_depth,
        max_wait: Duration::from_millis(s.max_wait_ms),
        tokens: s.tokens.clone(),
        body_timeout: Duration::from_millis(s.body_timeout_ms),
        buffered: api::BodyBudget::new(s.max_buffered_body_bytes, s.client_body_share()),
        connections: shares.clone(),
        openapi: serde_json::to_vec(&api::openapi(
            &dispatcher,
            config.dispatch.max_delay_ms,
            config.settings().max_timeout.as_millis() as u64,
        ))
        .unwrap_or_default()
        .into(),
    });
    let workers = if s.workers == 0 {
        std::thread::available_parallelism().map_or(2, |n| n.get())
    } else {
        s.workers
    };
    let addr = listeners.http.local_addr()?;
    let dashboard = web::Data::new(ui::Dashboard::new(&config));
    let samples = dashboard.pulse.clone();
    // A cluster node's dispatcher runs what its own workers pull, never HTTP submissions.
    let attach = config.pools.io.on_http_workers && cluster.is_none();
    let server = HttpServer::new(move || {
        // Runs on each HTTP worker thread: the async routes run here too, so a message
        // submitted on this worker is run and answered on it with no thread hop.
        if attach {
            state.dispatcher.attach_current_arbiter();
        }
        App::new()
            .app_data(state.clone())
            .app_data(dashboard.clone())
            .wrap(middleware::from_fn(api::auth))
            .configure(ui::configure)
            .configure(api::configure)
    })
    .on_connect(move |conn, data| {
        // Counted against its client's share, or refused (see `connections`).
        let Some(stream) = conn.downcast_ref::<actix_web::rt::net::TcpStream>() else {
            return;
        };
        let Ok(peer) = stream.peer_addr() else { return };
        match shares.open(peer.ip()) {
            Some(open) => drop(data.insert(open)),
            None => drop(data.insert(connections::refuse(stream, shares.per_client()))),
        }
    })
    .workers(workers)
    .max_connections(s.max_connections.div_ceil(workers))
    .disable_signals()
    .shutdown_timeout(s.shutdown_timeout_ms.div_ceil(1000).max(1))
    .listen(listeners.http)?
    .run();
    let handle = server.handle();
    // Started once the server is listening: a failed start leaves no sampler behind.
    let pulse = ui::Pulse::start(samples, dispatcher.clone());
    let mut serving = actix_rt::spawn(server);
    tracing::info!(%addr, workers, routes = dispatcher.routes().len(), "mailroom is serving");

    tokio::select! {
        _ = shutdown => {}
        res = &mut serving => {
            tracing::error!(?res, "the HTTP server stopped by itself; draining");
        }
    }
    tracing::info!(
        in_flight = dispatcher.stats().in_flight(),
        timeout_ms = s.shutdown_timeout_ms,
        "shutdown requested: no longer accepting, draining queued and running messages"
    );
    if let Some(tcp) = tcp {
        tcp.do_send(StopAccepting);
    }
    let deadline = Duration::from_millis(s.shutdown_timeout_ms);
    let report = match &cluster {
        Some(c) => c.shutdown(deadline).await,
        None => dispatcher.shutdown(deadline).await,
    };
    handle.stop(true).await;
    pulse.abort();
    if !report.kept.is_empty() && cluster.is_some() {
        tracing::info!(
            kept = report.kept.len(),
            "shutdown: {} messages could not finish here within the shutdown timeout and were \
             handed back to the cluster (or, where that failed, come back after ack_wait): \
             other nodes run them",
            report.kept.len()
        );
    } else if !report.kept.is_empty() {
        tracing::info!(
            drained = report.drained,
            kept = report.kept.len(),
            "shutdown: {} messages could not finish within the shutdown timeout and stay in the \
             journal; they run after the next start (delayed ones at their due time)",
            report.kept.len()
        );
    } else if report.unfinished.is_empty() {
        tracing::info!(drained = report.drained, "drained every message; exiting");
    } else {
        let ids: Vec<String> = report.unfinished.iter().map(|id| id.to_string()).collect();
        tracing::warn!(
            drained = report.drained,
            unfinished = report.unfinished.len(),
            elapsed_ms = report.elapsed.as_millis() as u64,
            ids = %ids.join(","),
            "shutdown: these messages could not finish within the shutdown timeout (running at \
             its end, or due after it) and were cancelled (class shutdown)"
        );
    }
    Ok(report)
}
