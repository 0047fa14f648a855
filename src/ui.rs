//! The dashboard: `GET /ui` serves a page (its HTML, script, style and icon are compiled into
//! the binary, so it works offline), and `GET /v1/overview` is the compact summary that the page
//! polls once a second. Everything else the page shows comes from the public API (`/v1/routes`,
//! `/v1/messages`, `/v1/dead-letters`), with the same bearer token.
//!
//! A [`Pulse`] samples the library's ledger once a second into a ring of the last
//! [`HISTORY_SECONDS`], from which the overview takes its rates ("now"), its per-route charts and
//! its run-time percentiles (over the last minute). Memory is fixed by the number of routes: one
//! sample holds a few counters and one histogram per route.
//!
//! Failure: the page itself needs no token (it has no data in it); when the API answers 401 it
//! asks for one. Polling stops on nothing: a failed poll is shown as "disconnected" and retried.

use std::collections::VecDeque;
use std::time::{Duration, Instant};

use actix_web::http::header;
use actix_web::{web, HttpResponse};
use mailroom_actors::{LedgerSnapshot, Pool};
use serde::{Deserialize, Serialize};
use std::sync::Mutex;
use utoipa::{IntoParams, ToSchema};

use crate::api::AppState;
use crate::config::{Config, StorageKind};
use crate::problem::ApiError;

/// Seconds of history the pulse keeps (and the most an overview can ask for).
pub const HISTORY_SECONDS: usize = 300;
/// The window of the run-time percentiles.
const PERCENTILE_WINDOW: Duration = Duration::from_secs(60);
/// The window of the "now" rates.
const RATE_WINDOW: Duration = Duration::from_secs(3);

/// The ledger, sampled once a second: the last [`HISTORY_SECONDS`] samples.
#[derive(Debug, Default)]
pub struct Pulse {
    samples: Mutex<VecDeque<Sample>>,
}

#[derive(Debug, Clone)]
struct Sample {
    seq: u64,
    /// When it was taken, on the monotonic clock: windows and rates do not move when the
    /// system's clock is set.
    at: Instant,
    routes: Vec<RouteSample>,
    storage_records: u64,
    storage_fsyncs: u64,
    storage_failures: u64,
}

#[derive(Debug, Clone)]
struct RouteSample {
    completed: u64,
    /// failed + timed out + dead
    failed: u64,
    /// every terminal state
    finished: u64,
    run: Vec<u64>,
}

impl RouteSample {
    fn of(k: &mailroom_actors::KindStats) -> RouteSample {
        RouteSample {
            completed: k.completed,
            failed: k.failed + k.timed_out + k.dead,
            finished: k.finished(),
            run: k.run_time.cumulative.clone(),
        }
    }
}

impl Pulse {
    /// Adds a sample of `snap` taken at `at`, dropping the oldest beyond the history.
    pub fn sample(&self, snap: &LedgerSnapshot, at: Instant) {
        let mut samples = self.samples.lock().unwrap_or_else(|e| e.into_inner());
        let seq = samples.back().map_or(1, |s| s.seq + 1);
        samples.push_back(Sample {
            seq,
            at,
            routes: snap.kinds.iter().map(RouteSample::of).collect(),
            storage_records: snap.storage.records,
            storage_fsyncs: snap.storage.fsyncs,
            storage_failures: snap.storage.failures,
        });
        while samples.len() > HISTORY_SECONDS + 1 {
            samples.pop_front();
        }
    }

    /// Samples `dispatcher`'s ledger once a second until the returned task is aborted.
    pub fn start(
        pulse: web::Data<Pulse>,
        dispatcher: mailroom_actors::Dispatcher,
    ) -> actix_rt::task::JoinHandle<()> {
        actix_rt::spawn(async move {
            let mut tick = actix_rt::time::interval(Duration::from_secs(1));
            tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
            loop {
                tick.tick().await;
                pulse.sample(&dispatcher.stats(), Instant::now());
            }
        })
    }
}

/// What the dashboard shows besides the ledger: this node and its storage.
#[derive(Debug)]
pub struct Dashboard {
    /// The ledger's recent history.
    pub pulse: web::Data<Pulse>,
    node: String,
    started_at_ms: u64,
    storage: StorageInfo,
}

impl Dashboard {
    /// The dashboard of a server started now with `config`.
    pub fn new(config: &Config) -> Dashboard {
        let s = &config.storage;
        let storage = match (&config.cluster, s.kind) {
            (Some(c), _) => StorageInfo {
                kind: "cluster",
                path: Some(c.nats_url.clone()),
                fsync: None,
            },
            (None, kind) => match kind {
                StorageKind::Journal => StorageInfo {
                    kind: "journal",
                    path: Some(s.path.display().to_string()),
                    fsync: Some(format!("{:?}", s.fsync).to_ascii_lowercase()),
                },
                StorageKind::Memory => StorageInfo {
                    kind: "memory",
                    path: None,
                    fsync: None,
                },
            },
        };
        let host = std::fs::read_to_string("/proc/sys/kernel/hostname")
            .ok()
            .map(|h| h.trim().to_owned())
            .filter(|h| !h.is_empty())
            .unwrap_or_else(|| "localhost".into());
        let node = match &config.cluster {
            Some(c) => c.settings().node,
            None => host,
        };
        Dashboard {
            pulse: web::Data::new(Pulse::default()),
            node,
            started_at_ms: unix_ms(),
            storage,
        }
    }
}

#[derive(Debug, Clone)]
struct StorageInfo {
    kind: &'static str,
    path: Option<String>,
    fsync: Option<String>,
}

fn unix_ms() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_millis() as u64)
}

/// `?history=N` on the overview.
#[derive(Debug, Deserialize, IntoParams)]
#[into_params(parameter_in = Query)]
#[serde(deny_unknown_fields)]
pub struct OverviewQuery {
    /// Seconds of per-route history to include, 0 to 300 (default 0): the page asks for all of
    /// it once, then for the few seconds since its last poll.
    #[param(minimum = 0, maximum = 300)]
    pub history: Option<u32>,
}

/// `GET /v1/overview` answer: the whole service at a glance.
#[derive(Debug, Serialize, ToSchema)]
pub struct Overview {
    /// This node's host name.
    pub node: String,
    /// This process's id.
    pub pid: u32,
    /// The server's version.
    pub version: String,
    /// When this process started, milliseconds since the Unix epoch.
    pub started_at_ms: u64,
    /// When this answer was made.
    pub now_ms: u64,
    /// Whether shutdown has begun (new messages are refused).
    pub draining: bool,
    /// Sums over every route.
    pub totals: Totals,
    /// One entry per route, in routing-table order.
    pub routes: Vec<RouteLive>,
    /// Dead letters held now; on a cluster node the cluster's, `null` while NATS does not give
    /// the figure.
    pub dead_letters: Option<u64>,
    /// Outcomes held in memory now.
    pub stored: u64,
    /// Where accepted work is kept, and how that is going.
    pub storage: StorageHealth,
    /// The sequence number of the newest history sample (one a second; 0 before the first):
    /// each route's `history` ends with it.
    pub history_seq: u64,
    /// On a cluster node: the cluster's figures. Then each route's `queued` is the cluster's
    /// (messages in its stream not yet delivered to any node), `dead_letters` the cluster's
    /// (each `null` while NATS does not give it), and the other figures this node's.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub cluster: Option<mailroom_actors::ClusterStats>,
}

/// Counters and gauges summed over every route.
#[derive(Debug, Default, Serialize, ToSchema)]
pub struct Totals {
    /// Messages accepted.
    pub accepted: u64,
    /// Finished `completed`.
    pub completed: u64,
    /// Finished `failed` or `timed_out`.
    pub failed: u64,
    /// Finished `cancelled`.
    pub cancelled: u64,
    /// Finished `dead`.
    pub dead: u64,
    /// Accepted and not finished.
    pub in_flight: u64,
    /// Waiting for a worker; on a cluster node the cluster's, `null` while NATS does not give a
    /// route's figure.
    pub queued: Option<u64>,
    /// Waiting for their time (delayed, or a retry in backoff).
    pub delayed: u64,
    /// Running now.
    pub running: u64,
    /// Refused at admission (every reason, including unknown kinds and malformed input).
    pub rejected: u64,
    /// Messages finished per second over the last few seconds.
    pub finished_per_second: f64,
}

/// One route, live.
#[derive(Debug, Serialize, ToSchema)]
pub struct RouteLive {
    /// The route key.
    pub kind: String,
    /// The processor behind it.
    pub processor: String,
    /// The pool it runs on.
    pub pool: Pool,
    /// Bound on queued + delayed + running.
    pub capacity: u64,
    /// Cap on messages running at once.
    pub concurrency: usize,
    /// Waiting for a worker; on a cluster node the cluster's (its stream's messages not yet
    /// delivered to any node), `null` while NATS does not give the figure.
    pub queued: Option<u64>,
    /// Waiting for their time.
    pub delayed: u64,
    /// Running now.
    pub running: u64,
    /// Messages accepted.
    pub accepted: u64,
    /// Finished `completed`.
    pub completed: u64,
    /// Finished `failed` or `timed_out`.
    pub failed: u64,
    /// Finished `cancelled`.
    pub cancelled: u64,
    /// Finished `dead`.
    pub dead: u64,
    /// Attempts that were retried.
    pub retried: u64,
    /// Refused at admission.
    pub rejected: u64,
    /// Processor restarts after panics.
    pub restarts: u64,
    /// Whether the route refuses new messages because its processor keeps crashing.
    pub degraded: bool,
    /// Messages completed per second over the last few seconds.
    pub completed_per_second: f64,
    /// Median running time over the last minute, in milliseconds (estimated from the
    /// histogram's buckets); `null` when nothing finished in that minute.
    pub run_p50_ms: Option<f64>,
    /// 99th percentile of the same.
    pub run_p99_ms: Option<f64>,
    /// Per second, oldest first, ending at `history_seq`: messages completed, and messages
    /// failed, timed out or dead (as many entries as asked for with `?history=`, or fewer
    /// while the server is young).
    pub history: RouteHistory,
}

/// A route's finished messages, second by second.
#[derive(Debug, Default, Serialize, ToSchema)]
pub struct RouteHistory {
    /// Completed in each second.
    pub completed: Vec<u64>,
    /// Failed, timed out or dead in each second.
    pub failed: Vec<u64>,
}

/// The storage and how it is doing.
#[derive(Debug, Serialize, ToSchema)]
pub struct StorageHealth {
    /// `journal` or `memory`.
    pub kind: String,
    /// The journal's folder.
    pub path: Option<String>,
    /// The journal's fsync mode.
    pub fsync: Option<String>,
    /// `ok`, or `failing`: with the journal, when a write or fsync failed within the last
    /// minute; on a cluster node, while NATS is unreachable or did not give a figure within 2 s
    /// (the cluster's queued counts and dead letters are then `null`).
    pub health: String,
    /// Records written.
    pub records: u64,
    /// fsyncs done.
    pub fsyncs: u64,
    /// Writes or fsyncs that failed, ever.
    pub failures: u64,
    /// Bytes of the journal's records on disk (its open segment's file is allocated ahead).
    pub bytes: u64,
    /// Records written per second over the last few seconds.
    pub records_per_second: f64,
    /// fsyncs per second over the last few seconds.
    pub fsyncs_per_second: f64,
}

/// The value at quantile `q` of the observations between two cumulative histograms (`now` minus
/// `before`), interpolated within its bucket as Prometheus' `histogram_quantile` does; in
/// milliseconds. `None` without observations.
fn quantile_ms(bounds: &[f64], now: &[u64], before: Option<&[u64]>, q: f64) -> Option<f64> {
    let count = |i: usize| now[i] - before.map_or(0, |b| b[i].min(now[i]));
    let total = count(now.len() - 1);
    if total == 0 {
        return None;
    }
    let rank = q * total as f64;
    let i = (0..now.len()).find(|&i| count(i) as f64 >= rank)?;
    let Some(&upper) = bounds.get(i) else {
        // Past the last bound: all that is known is that it is longer than that.
        return bounds.last().map(|b| b * 1000.0);
    };
    let lower = if i == 0 { 0.0 } else { bounds[i - 1] };
    let below = if i == 0 { 0 } else { count(i - 1) };
    let inside = count(i).saturating_sub(below);
    let frac = if inside == 0 {
        1.0
    } else {
        (rank - below as f64) / inside as f64
    };
    Some(round2((lower + (upper - lower) * frac) * 1000.0))
}

fn round2(x: f64) -> f64 {
    (x * 100.0).round() / 100.0
}

/// A rate per second between two counter readings `ms` milliseconds apart.
fn rate(now: u64, before: u64, ms: u64) -> f64 {
    if ms == 0 {
        return 0.0;
    }
    round2(now.saturating_sub(before) as f64 * 1000.0 / ms as f64)
}

/// The whole service at a glance: totals, each route with its rates, run-time percentiles and
/// recent history, the dead letters' count and the storage's health. The dashboard polls it.
#[utoipa::path(get, path = "/v1/overview", params(OverviewQuery),
    responses((status = 200, body = Overview), (status = 400, body = crate::problem::Problem, content_type = "application/problem+json")))]
pub async fn overview(
    state: web::Data<AppState>,
    dash: web::Data<Dashboard>,
    query: web::Query<OverviewQuery>,
) -> Result<HttpResponse, ApiError> {
    let history = query.history.unwrap_or(0) as usize;
    if history > HISTORY_SECONDS {
        return Err(ApiError::BadRequest(format!(
            "history must be 0 to {HISTORY_SECONDS}, got {history}"
        )));
    }
    let d = &state.dispatcher;
    let cluster = match &state.cluster {
        Some(c) => Some(c.stats().await),
        None => None,
    };
    let snap = d.stats();
    let routes = d.routes();
    let now_ms = unix_ms();
    let now = Instant::now();
    let samples = dash.pulse.samples.lock().unwrap_or_else(|e| e.into_inner());
    let newest = samples.back();
    // The newest sample at least `window` older than now (else the oldest).
    let back = |window: Duration| {
        samples
            .iter()
            .rev()
            .find(|s| now.saturating_duration_since(s.at) >= window)
            .or(samples.front())
    };
    let rate_base = back(RATE_WINDOW);
    let pct_base = back(PERCENTILE_WINDOW);
    let elapsed = |s: Option<&Sample>| {
        s.map_or(0, |s| {
            now.saturating_duration_since(s.at).as_millis() as u64
        })
    };
    let recent: Vec<&Sample> = samples
        .iter()
        .skip(samples.len().saturating_sub(history + 1))
        .collect();

    let mut totals = Totals {
        rejected: snap.rejected_no_route + snap.rejected_malformed,
        queued: Some(0),
        ..Totals::default()
    };
    let mut finished_before = 0;
    let mut live = Vec::with_capacity(snap.kinds.len());
    for (i, (k, info)) in snap.kinds.iter().zip(&routes).enumerate() {
        let r = &k.rejected;
        let rejected = r.full + r.degraded + r.draining + r.invalid + r.client_share + r.storage;
        let base = rate_base.and_then(|s| s.routes.get(i));
        finished_before += base.map_or(k.finished(), |b| b.finished);
        let mut h = RouteHistory::default();
        for pair in recent.windows(2) {
            if let (Some(a), Some(b)) = (pair[0].routes.get(i), pair[1].routes.get(i)) {
                h.completed.push(b.completed.saturating_sub(a.completed));
                h.failed.push(b.failed.saturating_sub(a.failed));
            }
        }
        let before_run = pct_base
            .and_then(|s| s.routes.get(i))
            .map(|b| b.run.as_slice());
        let run = &k.run_time;
        let p = |q| quantile_ms(&run.bounds, &run.cumulative, before_run, q);
        let failed = k.failed + k.timed_out;
        totals.accepted += k.accepted;
        totals.completed += k.completed;
        totals.failed += failed;
        totals.cancelled += k.cancelled;
        totals.dead += k.dead;
        totals.in_flight += k.in_flight;
        totals.queued = totals.queued.map(|q| q + k.queued());
        totals.delayed += k.delayed;
        totals.running += k.running;
        totals.rejected += rejected;
        live.push(RouteLive {
            kind: k.kind.to_string(),
            processor: k.processor.clone(),
            pool: info.pool,
            capacity: info.capacity,
            concurrency: info.concurrency,
            queued: Some(k.queued()),
            delayed: k.delayed,
            running: k.running,
            accepted: k.accepted,
            completed: k.completed,
            failed,
            cancelled: k.cancelled,
            dead: k.dead,
            retried: k.retried,
            rejected,
            restarts: k.restarts,
            degraded: info.degraded,
            completed_per_second: rate(
                k.completed,
                base.map_or(k.completed, |b| b.completed),
                elapsed(rate_base),
            ),
            run_p50_ms: p(0.5),
            run_p99_ms: p(0.99),
            history: h,
        });
    }
    let finished_now: u64 = snap.kinds.iter().map(|k| k.finished()).sum();
    totals.finished_per_second = rate(finished_now, finished_before, elapsed(rate_base));
    let st = &snap.storage;
    let mut dead_letters = Some(snap.dead_letters);
    if let Some(c) = &cluster {
        // Unknown (null) while NATS does not answer; the health pill says why (below).
        dead_letters = c.dead_letters;
        totals.queued = Some(0);
        for r in &mut live {
            r.queued = c
                .routes
                .iter()
                .find(|cr| cr.kind.as_str() == r.kind)
                .and_then(|cr| cr.pending);
            totals.queued = totals.queued.zip(r.queued).map(|(t, q)| t + q);
        }
    }
    let failing = match &cluster {
        // Unreachable, or a figure it did not give within 2 s.
        Some(c) => {
            !c.connected || c.dead_letters.is_none() || c.routes.iter().any(|r| r.pending.is_none())
        }
        None => pct_base.is_some_and(|b| st.failures > b.storage_failures),
    };
    let storage = StorageHealth {
        kind: dash.storage.kind.into(),
        path: dash.storage.path.clone(),
        fsync: dash.storage.fsync.clone(),
        health: if failing { "failing" } else { "ok" }.into(),
        records: st.records,
        fsyncs: st.fsyncs,
        failures: st.failures,
        bytes: st.bytes,
        records_per_second: rate(
            st.records,
            rate_base.map_or(st.records, |b| b.storage_records),
            elapsed(rate_base),
        ),
        fsyncs_per_second: rate(
            st.fsyncs,
            rate_base.map_or(st.fsyncs, |b| b.storage_fsyncs),
            elapsed(rate_base),
        ),
    };
    let body = Overview {
        node: dash.node.clone(),
        pid: std::process::id(),
        version: env!("CARGO_PKG_VERSION").into(),
        started_at_ms: dash.started_at_ms,
        now_ms,
        draining: d.is_draining(),
        totals,
        routes: live,
        dead_letters,
        stored: snap.stored,
        storage,
        history_seq: newest.map_or(0, |s| s.seq),
        cluster,
    };
    drop(samples);
    Ok(HttpResponse::Ok()
        .insert_header((header::CACHE_CONTROL, "no-store"))
        .json(body))
}

/// Whether `path` is one of the dashboard's own files, which load without a token.
pub fn is_public(path: &str) -> bool {
    matches!(
        path,
        "/" | "/ui" | "/ui/" | "/ui/app.js" | "/ui/style.css" | "/ui/icon.svg" | "/ui/auth"
    )
}

/// The page's security headers: scripts, styles and requests only from this server, no
/// framing, no inline code.
const CSP: &str = "default-src 'none'; script-src 'self'; style-src 'self'; img-src 'self'; \
                   connect-src 'self'; form-action 'none'; frame-ancestors 'none'; \
                   base-uri 'none'";

fn asset(content_type: &str, body: &'static str) -> HttpResponse {
    HttpResponse::Ok()
        .content_type(content_type)
        .insert_header((header::CACHE_CONTROL, "no-cache"))
        .insert_header((header::X_CONTENT_TYPE_OPTIONS, "nosniff"))
        .insert_header((header::CONTENT_SECURITY_POLICY, CSP))
        .insert_header((header::REFERRER_POLICY, "no-referrer"))
        .insert_header((header::X_FRAME_OPTIONS, "DENY"))
        .body(body)
}

async fn page() -> HttpResponse {
    asset("text/html; charset=utf-8", include_str!("ui/index.html"))
}

async fn script() -> HttpResponse {
    asset("text/javascript; charset=utf-8", include_str!("ui/app.js"))
}

async fn style() -> HttpResponse {
    asset("text/css; charset=utf-8", include_str!("ui/style.css"))
}

async fn icon() -> HttpResponse {
    asset("image/svg+xml", include_str!("ui/icon.svg"))
}

/// Whether the API wants a token, so the page asks for one before its first call (rather than
/// after a 401, which the browser would log as an error).
async fn auth(state: web::Data<AppState>) -> HttpResponse {
    HttpResponse::Ok()
        .insert_header((header::CACHE_CONTROL, "no-store"))
        .json(serde_json::json!({"token_required": !state.tokens.is_empty()}))
}

async fn to_ui() -> HttpResponse {
    HttpResponse::TemporaryRedirect()
        .insert_header((header::LOCATION, "/ui"))
        .finish()
}

/// Registers the dashboard's pages and `/v1/overview` (`dashboard` is the app data the
/// overview reads).
pub fn configure(cfg: &mut web::ServiceConfig) {
    use crate::api::resource;
    cfg.service(resource("/", "GET").route(web::get().to(to_ui)))
        .service(resource("/ui", "GET").route(web::get().to(page)))
        .service(resource("/ui/", "GET").route(web::get().to(page)))
        .service(resource("/ui/app.js", "GET").route(web::get().to(script)))
        .service(resource("/ui/style.css", "GET").route(web::get().to(style)))
        .service(resource("/ui/icon.svg", "GET").route(web::get().to(icon)))
        .service(resource("/ui/auth", "GET").route(web::get().to(auth)))
        .service(resource("/v1/overview", "GET").route(web::get().to(overview)));
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn quantiles_interpolate_within_buckets() {
        let bounds = [0.001, 0.01, 0.1];
        // 10 observations in (0, 1 ms], 10 in (1, 10 ms], none above.
        let now = [10, 20, 20, 20];
        assert_eq!(quantile_ms(&bounds, &now, None, 0.5), Some(1.0));
        assert_eq!(quantile_ms(&bounds, &now, None, 0.25), Some(0.5));
        assert_eq!(quantile_ms(&bounds, &now, None, 0.99), Some(9.82));
        // Only what happened since `before` counts.
        let before = [10, 10, 10, 10];
        assert_eq!(quantile_ms(&bounds, &now, Some(&before), 0.5), Some(5.5));
        assert_eq!(quantile_ms(&bounds, &now, Some(&now), 0.5), None);
        // Past the last bound, the last bound is all that is known.
        assert_eq!(quantile_ms(&bounds, &[0, 0, 0, 4], None, 0.5), Some(100.0));
    }

    #[test]
    fn rates_are_per_second() {
        assert_eq!(rate(130, 100, 3000), 10.0);
        assert_eq!(rate(100, 100, 0), 0.0);
        assert_eq!(rate(90, 100, 1000), 0.0);
    }
}
