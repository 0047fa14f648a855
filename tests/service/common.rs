//! A server under test, and a small HTTP client around awc.

use std::net::{SocketAddr, TcpListener};
use std::time::Duration;

use mailroom::config::{Config, StorageConfig};
use mailroom::{Listeners, ServeError};
use mailroom_actors::ShutdownReport;
use serde_json::Value;
use tokio::sync::oneshot;

/// A configuration for tests: loopback, small pools.
pub fn config() -> Config {
    let mut c = Config::default();
    c.server.bind = "127.0.0.1:0".into();
    c.server.workers = 2;
    c.server.shutdown_timeout_ms = 5_000;
    c.pools.cpu.threads = 2;
    c
}

pub struct TestServer {
    pub base: String,
    pub tcp: Option<SocketAddr>,
    /// The journal's folder when the test kept the default one (removed with the server).
    _journal: Option<tempfile::TempDir>,
    stop: Option<oneshot::Sender<()>>,
    done: actix_rt::task::JoinHandle<Result<ShutdownReport, ServeError>>,
}

/// Starts the server in this process. With the default storage (a journal in `./data`), the
/// journal goes to a folder of its own, removed with the server: the tests run against the
/// journal, as the service does by default.
pub async fn start(mut config: Config) -> TestServer {
    let journal = (config.storage.path == StorageConfig::default().path).then(|| {
        let dir = tempfile::tempdir().unwrap();
        config.storage.path = dir.path().to_owned();
        dir
    });
    let http = TcpListener::bind("127.0.0.1:0").unwrap();
    let base = format!("http://{}", http.local_addr().unwrap());
    let tcp = config
        .sources
        .tcp
        .as_ref()
        .map(|_| TcpListener::bind("127.0.0.1:0").unwrap());
    let tcp_addr = tcp.as_ref().map(|l| l.local_addr().unwrap());
    if let Some(a) = tcp_addr {
        if let Some(t) = config.sources.tcp.as_mut() {
            t.bind = a.to_string();
        }
    }
    let (tx, rx) = oneshot::channel::<()>();
    let done = actix_rt::spawn(mailroom::run(Listeners { http, tcp }, config, async move {
        let _ = rx.await;
    }));
    let server = TestServer {
        base,
        tcp: tcp_addr,
        _journal: journal,
        stop: Some(tx),
        done,
    };
    // Ready when /healthz answers.
    let deadline = std::time::Instant::now() + Duration::from_secs(30);
    while std::time::Instant::now() < deadline {
        if server.get("/healthz").await.status == 200 {
            return server;
        }
        actix_rt::time::sleep(Duration::from_millis(10)).await;
    }
    panic!("the server did not come up");
}

#[derive(Debug)]
pub struct Resp {
    pub status: u16,
    pub headers: awc::http::header::HeaderMap,
    pub body: Value,
    pub text: String,
}

impl Resp {
    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers.get(name).and_then(|v| v.to_str().ok())
    }

    /// Asserts a problem+json error with this status.
    pub fn assert_problem(&self, status: u16) {
        assert_eq!(self.status, status, "{}", self.text);
        assert_eq!(
            self.header("content-type"),
            Some("application/problem+json"),
            "{}",
            self.text
        );
        assert_eq!(self.body["status"], status);
        assert!(self.body["type"]
            .as_str()
            .unwrap()
            .starts_with("urn:mailroom:problem:"));
        assert!(!self.body["title"].as_str().unwrap().is_empty());
        assert!(!self.body["detail"].as_str().unwrap().is_empty());
    }
}

impl TestServer {
    pub async fn request(
        &self,
        method: &str,
        path: &str,
        body: Option<(&str, Vec<u8>)>,
        token: Option<&str>,
    ) -> Resp {
        let client = awc::Client::builder()
            .timeout(Duration::from_secs(30))
            .finish();
        let mut req = client.request(method.parse().unwrap(), format!("{}{path}", self.base));
        if let Some(t) = token {
            req = req.insert_header(("authorization", format!("Bearer {t}")));
        }
        let sent = match body {
            Some((ct, bytes)) => {
                req.insert_header(("content-type", ct))
                    .send_body(bytes)
                    .await
            }
            None => req.send().await,
        };
        let mut res = sent.unwrap_or_else(|e| panic!("{method} {path}: {e}"));
        let bytes = res.body().limit(16 * 1024 * 1024).await.unwrap();
        let text = String::from_utf8_lossy(&bytes).into_owned();
        Resp {
            status: res.status().as_u16(),
            headers: res.headers().clone(),
            body: serde_json::from_slice(&bytes).unwrap_or(Value::Null),
            text,
        }
    }

    pub async fn get(&self, path: &str) -> Resp {
        self.request("GET", path, None, None).await
    }

    pub async fn delete(&self, path: &str) -> Resp {
        self.request("DELETE", path, None, None).await
    }

    pub async fn post(&self, path: &str, body: Value) -> Resp {
        self.request(
            "POST",
            path,
            Some(("application/json", body.to_string().into_bytes())),
            None,
        )
        .await
    }

    /// Parses `/metrics` into (name with labels) → value.
    pub async fn metrics(&self) -> std::collections::HashMap<String, f64> {
        let r = self.get("/metrics").await;
        assert_eq!(r.status, 200);
        assert!(r
            .header("content-type")
            .unwrap()
            .starts_with("text/plain; version=0.0.4"));
        r.text
            .lines()
            .filter(|l| !l.starts_with('#') && !l.is_empty())
            .map(|l| {
                let (k, v) = l.rsplit_once(' ').unwrap();
                (k.to_owned(), v.parse().unwrap())
            })
            .collect()
    }

    /// Checks `accepted = Σ finished + in_flight` for `kind` from `/metrics`; returns accepted.
    pub async fn ledger_identity(&self, kind: &str) -> f64 {
        let m = self.metrics().await;
        let get = |k: String| *m.get(&k).unwrap_or_else(|| panic!("metric {k} missing"));
        let accepted = get(format!(
            "mailroom_messages_accepted_total{{kind=\"{kind}\"}}"
        ));
        let finished: f64 = ["completed", "failed", "timed_out", "cancelled", "dead"]
            .iter()
            .map(|s| {
                get(format!(
                    "mailroom_messages_finished_total{{kind=\"{kind}\",status=\"{s}\"}}"
                ))
            })
            .sum();
        let in_flight = get(format!("mailroom_messages_in_flight{{kind=\"{kind}\"}}"));
        assert_eq!(accepted, finished + in_flight, "ledger identity for {kind}");
        accepted
    }

    pub async fn stop(mut self) -> ShutdownReport {
        let _ = self.stop.take().unwrap().send(());
        self.done.await.unwrap().unwrap()
    }
}

/// Polls `cond` until it holds or `deadline` passes.
pub async fn eventually<F, Fut>(deadline: Duration, mut cond: F) -> bool
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = bool>,
{
    let end = std::time::Instant::now() + deadline;
    while std::time::Instant::now() < end {
        if cond().await {
            return true;
        }
        actix_rt::time::sleep(Duration::from_millis(10)).await;
    }
    false
}

/// Runs the tests that load the machine (attacks, soak) one at a time, so each one's figures
/// (RSS, `/healthz` latency) are its own; and raises this process's open-file limit to its hard
/// limit once (the attack tests open a thousand sockets; the servers they start inherit it).
pub fn heavy() -> std::sync::MutexGuard<'static, ()> {
    static ONE_AT_A_TIME: std::sync::Mutex<()> = std::sync::Mutex::new(());
    static RAISED: std::sync::Once = std::sync::Once::new();
    RAISED.call_once(|| {
        if let Err(e) = rlimit::increase_nofile_limit(u64::MAX) {
            eprintln!("could not raise the open-file limit: {e}");
        }
    });
    ONE_AT_A_TIME.lock().unwrap_or_else(|e| e.into_inner())
}

/// A loopback port that was free a moment ago.
pub fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}
