//! The command-line client: `send`, `batch`, `status`, `cancel`, `routes`, `dead-letters`,
//! `retry`, `check-config`. Every command talks HTTP to a running `mailroom serve` (`--url`, or
//! `MAILROOM_URL`; `--token` or `MAILROOM_TOKEN`), prints the answer as JSON on stdout, and exits
//! 0 when the request succeeded, 1 when the server answered with an error, 2 when it could not
//! be reached or the input was unusable (with the reason on stderr).

use std::path::PathBuf;
use std::process::ExitCode;
use std::time::{Duration, Instant};

use futures_util::StreamExt;
use serde_json::{json, Value};

use crate::config::{Config, Overrides};

/// Which server to talk to.
#[derive(Debug, Clone, clap::Args)]
pub struct Remote {
    /// The server's base URL.
    #[arg(long, env = "MAILROOM_URL", default_value = "http://127.0.0.1:8080")]
    pub url: String,
    /// Bearer token (when the server sets `server.tokens`).
    #[arg(long, env = "MAILROOM_TOKEN", hide_env_values = true, value_parser = token)]
    pub token: Option<String>,
}

/// A message id (so that it goes into a URL as it is).
fn message_id(text: &str) -> Result<String, String> {
    text.parse::<mailroom_actors::MessageId>()
        .map(|_| text.to_owned())
        .map_err(|_| "not a message id (26 characters of Crockford base32)".to_owned())
}

/// A token that can be sent as `Authorization: Bearer <token>`: visible ASCII, as the server's
/// `server.tokens` must be.
fn token(text: &str) -> Result<String, String> {
    if !text.is_empty() && text.bytes().all(|b| b.is_ascii_graphic()) {
        Ok(text.to_owned())
    } else {
        Err("a token is one or more visible ASCII characters (no spaces)".to_owned())
    }
}

/// `mailroom send KIND [PAYLOAD]`
#[derive(Debug, Clone, clap::Args)]
pub struct SendArgs {
    /// The message's kind (`echo`, `sleep`, `fetch`, `primes`, `hash`, …).
    pub kind: String,
    /// The payload as JSON (default `null`).
    pub payload: Option<String>,
    /// Wait for the outcome.
    #[arg(long)]
    pub wait: bool,
    /// How long to wait, in ms (capped by the server's `max_wait_ms`).
    #[arg(long)]
    pub wait_ms: Option<u64>,
    /// Run no earlier than this many ms from now.
    #[arg(long)]
    pub delay_ms: Option<u64>,
    /// The message's own run timeout, in ms.
    #[arg(long)]
    pub timeout_ms: Option<u64>,
    /// Idempotency key.
    #[arg(long)]
    pub key: Option<String>,
    #[command(flatten)]
    #[allow(missing_docs)]
    pub remote: Remote,
}

/// `mailroom batch FILE.ndjson`
#[derive(Debug, Clone, clap::Args)]
pub struct BatchArgs {
    /// One submission object per line (`{"kind": …, "payload": …}`); blank lines are skipped.
    pub file: PathBuf,
    /// Requests in flight at once.
    #[arg(long, default_value_t = 32)]
    pub concurrency: usize,
    /// Only submit; do not wait for outcomes.
    #[arg(long)]
    pub no_wait: bool,
    #[command(flatten)]
    #[allow(missing_docs)]
    pub remote: Remote,
}

/// A command that takes a message id.
#[derive(Debug, Clone, clap::Args)]
pub struct IdArgs {
    /// The message id.
    #[arg(value_parser = message_id)]
    pub id: String,
    /// For `status`: wait up to this many ms for the message to finish.
    #[arg(long)]
    pub wait_ms: Option<u64>,
    #[command(flatten)]
    #[allow(missing_docs)]
    pub remote: Remote,
}

struct Answer {
    status: u16,
    body: Value,
}

fn client(remote: &Remote, timeout: Duration) -> awc::Client {
    let mut b = awc::Client::builder().timeout(timeout);
    // Checked when parsed (`token`): awc panics on a token that cannot be a header.
    if let Some(t) = &remote.token {
        b = b.bearer_auth(t);
    }
    b.finish()
}

async fn call(
    client: &awc::Client,
    method: awc::http::Method,
    url: String,
    body: Option<&Value>,
) -> Result<Answer, String> {
    let req = client.request(method, &url);
    let sent = match body {
        Some(b) => req.send_json(b).await,
        None => req.send().await,
    };
    let mut res = sent.map_err(|e| format!("cannot reach {url}: {e}"))?;
    let bytes = res
        .body()
        .limit(64 * 1024 * 1024)
        .await
        .map_err(|e| format!("cannot read the answer from {url}: {e}"))?;
    let body = serde_json::from_slice(&bytes)
        .unwrap_or_else(|_| Value::String(String::from_utf8_lossy(&bytes).into_owned()));
    Ok(Answer {
        status: res.status().as_u16(),
        body,
    })
}

fn print(answer: Result<Answer, String>) -> ExitCode {
    match answer {
        Ok(a) => {
            match &a.body {
                Value::String(s) => println!("{s}"),
                v => println!("{}", serde_json::to_string_pretty(v).unwrap_or_default()),
            }
            if (200..300).contains(&a.status) {
                ExitCode::SUCCESS
            } else {
                eprintln!("mailroom: the server answered {}", a.status);
                ExitCode::from(1)
            }
        }
        Err(e) => {
            eprintln!("mailroom: {e}");
            ExitCode::from(2)
        }
    }
}

fn base(remote: &Remote) -> String {
    remote.url.trim_end_matches('/').to_owned()
}

/// `mailroom send`
pub async fn send(a: SendArgs) -> ExitCode {
    let payload: Value = match a.payload.as_deref().map(serde_json::from_str).transpose() {
        Ok(p) => p.unwrap_or(Value::Null),
        Err(e) => {
            eprintln!("mailroom: the payload is not JSON: {e}");
            return ExitCode::from(2);
        }
    };
    let mut body = json!({"kind": a.kind, "payload": payload});
    for (k, v) in [("delay_ms", a.delay_ms), ("timeout_ms", a.timeout_ms)] {
        if let Some(v) = v {
            body[k] = json!(v);
        }
    }
    if let Some(key) = a.key {
        body["key"] = json!(key);
    }
    let mut url = format!("{}/v1/messages", base(&a.remote));
    if a.wait {
        url.push_str("?wait=true");
        if let Some(ms) = a.wait_ms {
            url.push_str(&format!("&wait_ms={ms}"));
        }
    }
    let c = client(&a.remote, Duration::from_secs(3700));
    print(call(&c, awc::http::Method::POST, url, Some(&body)).await)
}

/// `mailroom status ID`
pub async fn status(a: IdArgs) -> ExitCode {
    let mut url = format!("{}/v1/messages/{}", base(&a.remote), a.id);
    if let Some(ms) = a.wait_ms {
        url.push_str(&format!("?wait_ms={ms}"));
    }
    let c = client(&a.remote, Duration::from_secs(3700));
    print(call(&c, awc::http::Method::GET, url, None).await)
}

/// `mailroom cancel ID`
pub async fn cancel(a: IdArgs) -> ExitCode {
    let url = format!("{}/v1/messages/{}", base(&a.remote), a.id);
    let c = client(&a.remote, Duration::from_secs(30));
    print(call(&c, awc::http::Method::DELETE, url, None).await)
}

/// `mailroom retry ID` (replay a dead letter)
pub async fn retry(a: IdArgs) -> ExitCode {
    let url = format!("{}/v1/dead-letters/{}/retry", base(&a.remote), a.id);
    let c = client(&a.remote, Duration::from_secs(30));
    print(call(&c, awc::http::Method::POST, url, None).await)
}

/// `mailroom routes` / `mailroom dead-letters`
pub async fn get(remote: Remote, path: &str) -> ExitCode {
    let url = format!("{}{path}", base(&remote));
    let c = client(&remote, Duration::from_secs(30));
    print(call(&c, awc::http::Method::GET, url, None).await)
}

/// `mailroom journal check PATH`: reads every record of the journal in `PATH`, checking each
/// checksum, and says what it found. Exit 0 when the journal can be opened (a torn tail is
/// reported: opening drops it), 1 when it is corrupt (file and offset named), 2 when it cannot
/// be read.
pub fn check_journal(path: &std::path::Path) -> ExitCode {
    if !path.is_dir() {
        eprintln!("mailroom: {}: not a folder", path.display());
        return ExitCode::from(2);
    }
    match mailroom_actors::journal::scan(path) {
        Ok(scan) => {
            // Each record must also be one the service can read back.
            let mut counts = std::collections::BTreeMap::<&str, usize>::new();
            for (bytes, &(segment, offset)) in scan.records.iter().zip(&scan.positions) {
                use mailroom_actors::storage::Record;
                let what = match Record::decode(bytes) {
                    Ok(Record::Accepted(_)) => "accepted",
                    Ok(Record::Started { .. }) => "started",
                    Ok(Record::Finished { .. }) => "finished",
                    Ok(Record::Dead(_)) => "dead",
                    Ok(Record::Replayed { .. }) => "replayed",
                    Err(e) => {
                        println!(
                            "{}: journal corrupt: {} at offset {offset}: the record does not decode: {e}",
                            path.display(),
                            scan.segments[segment].display()
                        );
                        return ExitCode::from(1);
                    }
                };
                *counts.entry(what).or_default() += 1;
            }
            println!(
                "{}: ok — {} segments, {} records, {} bytes",
                path.display(),
                scan.segments.len(),
                scan.records.len(),
                scan.bytes
            );
            if !counts.is_empty() {
                let by: Vec<String> = counts.iter().map(|(k, n)| format!("{n} {k}")).collect();
                println!("records: {}", by.join(", "));
            }
            if let Some(t) = scan.torn {
                println!(
                    "torn tail: {} at offset {} ({} bytes of a record cut short); opening the journal drops it",
                    t.file.display(),
                    t.offset,
                    t.bytes
                );
            }
            ExitCode::SUCCESS
        }
        Err(e @ mailroom_actors::journal::ScanError::Corrupt { .. }) => {
            println!("{}: {e}", path.display());
            ExitCode::from(1)
        }
        Err(e) => {
            eprintln!("mailroom: {}: {e}", path.display());
            ExitCode::from(2)
        }
    }
}

/// `mailroom check-config [PATH]`: loads and checks a configuration like `serve` would.
pub fn check_config(path: Option<PathBuf>) -> ExitCode {
    match Config::load(path.as_deref(), &Overrides::default()) {
        Ok(loaded) => {
            let c = &loaded.config;
            let file = loaded.file.map_or_else(
                || "built-in defaults".to_owned(),
                |f| f.display().to_string(),
            );
            // What `serve` would refuse after loading: the routes, then each schedule (checked,
            // not started, so nothing runs).
            if let Err(e) = actix_rt::System::new().block_on(crate::check(c)) {
                eprintln!("mailroom: {file}: {e}");
                return ExitCode::from(2);
            }
            println!(
                "{file}: ok — serving on {}, {} routes ({}), {} schedules, TCP source {}",
                c.server.bind,
                c.effective_routes().len(),
                c.effective_routes()
                    .keys()
                    .cloned()
                    .collect::<Vec<_>>()
                    .join(", "),
                c.schedule.len(),
                c.sources
                    .tcp
                    .as_ref()
                    .map_or("off".to_owned(), |t| t.bind.clone()),
            );
            if let Some(cl) = &c.cluster {
                let kinds: Vec<String> = c.effective_routes().keys().cloned().collect();
                let kinds: Vec<&str> = kinds.iter().map(String::as_str).collect();
                println!(
                    "cluster {:?} on {} (node {}): `serve` creates what is missing of",
                    cl.name,
                    cl.nats_url,
                    cl.settings().node
                );
                for r in mailroom_actors::cluster::resources(&cl.name, &kinds) {
                    println!("  {r}");
                }
            }
            ExitCode::SUCCESS
        }
        Err(e) => {
            eprintln!("mailroom: {e}");
            ExitCode::from(2)
        }
    }
}

fn percentile(sorted: &[f64], p: f64) -> f64 {
    if sorted.is_empty() {
        return 0.0;
    }
    let i = ((p / 100.0) * (sorted.len() - 1) as f64).round() as usize;
    sorted[i.min(sorted.len() - 1)]
}

/// `mailroom batch FILE.ndjson`: concurrent submission with a progress bar and a summary
/// (counts per status, throughput, latency percentiles).
pub async fn batch(a: BatchArgs) -> ExitCode {
    let text = match std::fs::read_to_string(&a.file) {
        Ok(t) => t,
        Err(e) => {
            eprintln!("mailroom: cannot read {}: {e}", a.file.display());
            return ExitCode::from(2);
        }
    };
    let mut lines = Vec::new();
    for (n, line) in text.lines().enumerate() {
        if line.trim().is_empty() {
            continue;
        }
        match serde_json::from_str::<Value>(line) {
            Ok(v) => lines.push(v),
            Err(e) => {
                eprintln!("mailroom: {}:{}: not JSON: {e}", a.file.display(), n + 1);
                return ExitCode::from(2);
            }
        }
    }
    let total = lines.len();
    let bar = indicatif::ProgressBar::new(total as u64);
    bar.set_style(
        indicatif::ProgressStyle::with_template("{bar:40} {pos}/{len} {per_sec} eta {eta}")
            .unwrap_or_else(|_| indicatif::ProgressStyle::default_bar()),
    );
    let c = client(&a.remote, Duration::from_secs(3700));
    let url = if a.no_wait {
        format!("{}/v1/messages", base(&a.remote))
    } else {
        format!("{}/v1/messages?wait=true", base(&a.remote))
    };
    let started = Instant::now();
    let results: Vec<(Result<Answer, String>, f64)> = futures_util::stream::iter(lines)
        .map(|body| {
            let (c, url, bar) = (&c, url.clone(), &bar);
            async move {
                let t = Instant::now();
                let r = call(c, awc::http::Method::POST, url, Some(&body)).await;
                bar.inc(1);
                (r, t.elapsed().as_secs_f64() * 1000.0)
            }
        })
        .buffer_unordered(a.concurrency.max(1))
        .collect()
        .await;
    bar.finish_and_clear();
    let elapsed = started.elapsed().as_secs_f64();
    let mut counts: std::collections::BTreeMap<String, usize> = Default::default();
    let mut latencies = Vec::with_capacity(results.len());
    let mut bad = 0;
    for (r, ms) in &results {
        latencies.push(*ms);
        let label = match r {
            Ok(a) if (200..300).contains(&a.status) => {
                a.body["status"].as_str().unwrap_or("answered").to_owned()
            }
            Ok(a) => {
                bad += 1;
                format!("rejected {}", a.status)
            }
            Err(_) => {
                bad += 1;
                "unreachable".to_owned()
            }
        };
        *counts.entry(label).or_default() += 1;
    }
    latencies.sort_by(f64::total_cmp);
    let summary = json!({
        "file": a.file.display().to_string(),
        "messages": total,
        "seconds": (elapsed * 1000.0).round() / 1000.0,
        "per_second": if elapsed > 0.0 { (total as f64 / elapsed).round() } else { 0.0 },
        "statuses": counts,
        "latency_ms": {
            "p50": percentile(&latencies, 50.0),
            "p90": percentile(&latencies, 90.0),
            "p99": percentile(&latencies, 99.0),
            "max": latencies.last().copied().unwrap_or(0.0),
        },
    });
    println!(
        "{}",
        serde_json::to_string_pretty(&summary).unwrap_or_default()
    );
    if bad == 0 {
        ExitCode::SUCCESS
    } else {
        eprintln!("mailroom: {bad} of {total} messages were not accepted");
        ExitCode::from(1)
    }
}
