//! The built `mailroom` binary, run as a user would: client commands against a live server,
//! `check-config`, and SIGTERM draining.

use std::io::{BufRead, BufReader};
use std::path::Path;
use std::process::{Command, Stdio};
use std::sync::mpsc;
use std::time::{Duration, Instant};

use serde_json::{json, Value};

use crate::common::{config, start};

const BIN: &str = env!("CARGO_BIN_EXE_mailroom");

struct Run {
    code: i32,
    stdout: String,
    stderr: String,
}

async fn mailroom(args: Vec<String>, env: Vec<(&'static str, String)>) -> Run {
    actix_rt::task::spawn_blocking(move || {
        let out = Command::new(BIN)
            .args(&args)
            .env_remove("MAILROOM_URL")
            .env_remove("MAILROOM_TOKEN")
            .envs(env)
            .output()
            .unwrap();
        Run {
            code: out.status.code().unwrap_or(-1),
            stdout: String::from_utf8_lossy(&out.stdout).into_owned(),
            stderr: String::from_utf8_lossy(&out.stderr).into_owned(),
        }
    })
    .await
    .unwrap()
}

fn args(a: &[&str]) -> Vec<String> {
    a.iter().map(|s| s.to_string()).collect()
}

#[actix_rt::test]
async fn the_client_commands_talk_to_a_live_server() {
    let s = start(config()).await;
    let url = s.base.clone();
    let r = mailroom(
        args(&["send", "echo", r#"{"a": 1}"#, "--wait", "--url", &url]),
        vec![],
    )
    .await;
    assert_eq!(r.code, 0, "{}", r.stderr);
    let out: Value = serde_json::from_str(&r.stdout).unwrap();
    assert_eq!(out["result"], json!({"a": 1}));
    let id = out["id"].as_str().unwrap().to_owned();

    let r = mailroom(args(&["status", &id]), vec![("MAILROOM_URL", url.clone())]).await;
    assert_eq!(r.code, 0, "MAILROOM_URL stands in for --url: {}", r.stderr);
    assert_eq!(
        serde_json::from_str::<Value>(&r.stdout).unwrap()["status"],
        "completed"
    );

    let r = mailroom(args(&["send", "nope", "--url", &url]), vec![]).await;
    assert_eq!(r.code, 1);
    assert_eq!(
        serde_json::from_str::<Value>(&r.stdout).unwrap()["status"],
        422
    );

    let r = mailroom(args(&["send", "echo", "{not json", "--url", &url]), vec![]).await;
    assert_eq!(r.code, 2);
    assert!(r.stderr.contains("the payload is not JSON"), "{}", r.stderr);

    let r = mailroom(args(&["routes", "--url", &url]), vec![]).await;
    assert_eq!(r.code, 0);
    assert_eq!(
        serde_json::from_str::<Value>(&r.stdout).unwrap()["routes"]
            .as_array()
            .unwrap()
            .len(),
        5
    );

    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("batch.ndjson");
    let mut lines: Vec<String> = (0..40)
        .map(|i| json!({"kind": "echo", "payload": i}).to_string())
        .collect();
    lines.push(json!({"kind": "sleep", "payload": {"ms": 10}}).to_string());
    lines.push(String::new());
    std::fs::write(&file, lines.join("\n")).unwrap();
    let r = mailroom(
        args(&["batch", file.to_str().unwrap(), "--url", &url]),
        vec![],
    )
    .await;
    assert_eq!(r.code, 0, "{}", r.stderr);
    let summary: Value = serde_json::from_str(&r.stdout).unwrap();
    assert_eq!(summary["messages"], 41);
    assert_eq!(summary["statuses"], json!({"completed": 41}));
    assert!(
        summary["latency_ms"]["p99"].as_f64().unwrap()
            >= summary["latency_ms"]["p50"].as_f64().unwrap()
    );

    // An id that is not one, and a token that cannot be a header: refused before any request
    // (the token would have made the HTTP client panic).
    let r = mailroom(args(&["status", "../metrics", "--url", &url]), vec![]).await;
    assert_eq!(r.code, 2);
    assert!(r.stderr.contains("not a message id"), "{}", r.stderr);
    let r = mailroom(
        args(&["routes", "--url", &url]),
        vec![("MAILROOM_TOKEN", "a\tb".to_owned())],
    )
    .await;
    assert_eq!(r.code, 2);
    assert!(r.stderr.contains("visible ASCII"), "{}", r.stderr);

    // Nothing listens on port 1 of loopback: the client says so and exits 2.
    let r = mailroom(args(&["routes", "--url", "http://127.0.0.1:1"]), vec![]).await;
    assert_eq!(r.code, 2);
    assert!(r.stderr.contains("cannot reach"), "{}", r.stderr);
    s.stop().await;
}

#[actix_rt::test]
async fn check_config_reports_good_and_bad_files() {
    let shipped = concat!(env!("CARGO_MANIFEST_DIR"), "/config.toml").to_owned();
    let r = mailroom(args(&["check-config", &shipped]), vec![]).await;
    assert_eq!(r.code, 0, "{}", r.stderr);
    assert!(
        r.stdout
            .contains("ok — serving on 127.0.0.1:8080, 5 routes"),
        "{}",
        r.stdout
    );
    let r = mailroom(
        args(&["check-config", &shipped]),
        vec![("MAILROOM_SERVER__BIND", "127.0.0.1:9100".into())],
    )
    .await;
    assert!(
        r.stdout.contains("serving on 127.0.0.1:9100"),
        "the environment overrides the file: {}",
        r.stdout
    );
    let r = mailroom(
        args(&["check-config", &shipped]),
        vec![("MAILROOM_SERVER__WORKERS", "lots".into())],
    )
    .await;
    assert_eq!(r.code, 2);
    assert!(
        r.stderr
            .contains("for key \"server.workers\" in `MAILROOM_` environment variable(s) (MAILROOM_SERVER__WORKERS)"),
        "the variable is named: {}",
        r.stderr
    );
    let r = mailroom(
        args(&["check-config", &shipped]),
        vec![(
            "MAILROOM_DISPATCH__RESTART_MAX_BACKOFF_MS",
            "99999999".into(),
        )],
    )
    .await;
    assert_eq!(r.code, 2);
    assert_eq!(
        r.stderr.trim(),
        "mailroom: MAILROOM_DISPATCH__RESTART_MAX_BACKOFF_MS: dispatch.restart_max_backoff_ms: expected at most 3600000"
    );
    // A restart budget the backoff can never exhaust within its window is refused, by key.
    let r = mailroom(
        args(&["check-config", &shipped]),
        vec![("MAILROOM_DISPATCH__MAX_RESTARTS", "100".into())],
    )
    .await;
    assert_eq!(r.code, 2);
    assert!(
        r.stderr.starts_with("mailroom: MAILROOM_DISPATCH__MAX_RESTARTS: dispatch.max_restarts: 101 restarts need at least"),
        "{}",
        r.stderr
    );
    assert!(r.stderr.contains("would never be degraded"), "{}", r.stderr);
    // A schedule whose payload its route refuses would be rejected at every tick: check-config
    // says so (and serve refuses to start), without running anything.
    let dir = tempfile::tempdir().unwrap();
    let bad = dir.path().join("schedule.toml");
    std::fs::write(
        &bad,
        "[routes.sleep]\n[[schedule]]\nkind = \"sleep\"\npayload = { ms = \"soon\" }\nevery_ms = 1000\n",
    )
    .unwrap();
    let r = mailroom(args(&["check-config", bad.to_str().unwrap()]), vec![]).await;
    assert_eq!(r.code, 2, "{}", r.stdout);
    assert!(
        r.stderr.contains("cannot start a schedule: schedule for kind \"sleep\" would be rejected at every tick: invalid payload for sleep"),
        "{}",
        r.stderr
    );
    let r = mailroom(
        args(&[
            "serve",
            "--config",
            bad.to_str().unwrap(),
            "--bind",
            "127.0.0.1:0",
        ]),
        // No journal in the working directory (the repository's).
        vec![("MAILROOM_STORAGE__KIND", "memory".into())],
    )
    .await;
    assert_eq!(r.code, 2, "{}", r.stderr);
    assert_eq!(
        r.stderr.matches("would be rejected at every tick").count(),
        1,
        "said once: {}",
        r.stderr
    );
    let r = mailroom(args(&["check-config", "/nonexistent.toml"]), vec![]).await;
    assert_eq!(r.code, 2);
    assert!(r.stderr.contains("not found"));
}

/// The resident set size of process `pid`, in MiB.
pub(crate) fn rss_mb(pid: u32) -> f64 {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap();
    let kb: f64 = status
        .lines()
        .find(|l| l.starts_with("VmRSS:"))
        .and_then(|l| l.split_whitespace().nth(1))
        .and_then(|n| n.parse().ok())
        .unwrap();
    kb / 1024.0
}

/// A `mailroom serve` child process on ephemeral ports.
pub(crate) struct Served {
    pub child: std::process::Child,
    pub base: String,
    pub tcp: Option<String>,
    pub logs: mpsc::Receiver<String>,
    /// The lines read from `logs` while waiting for the server to come up.
    pub startup: Vec<String>,
    _dir: Option<tempfile::TempDir>,
}

/// Starts `mailroom serve` with `toml` on ephemeral ports (HTTP always; TCP when the config has
/// `[sources.tcp]`), reading the addresses from its log.
pub(crate) fn serve(toml: &str) -> Served {
    serve_limited(toml, None)
}

/// [`serve`], with the server's open-file limit set to `max_files` when given (`ulimit -n`).
pub(crate) fn serve_limited(toml: &str, max_files: Option<u32>) -> Served {
    let dir = tempfile::tempdir().unwrap();
    let mut served = serve_in(dir.path(), toml, max_files).unwrap_or_else(|e| panic!("{e}"));
    served._dir = Some(dir);
    served
}

/// Starts `mailroom serve` in the folder `dir` (its working directory, where the default
/// journal `./data` lives), which outlives the server: a test can start another on it. Returns
/// the log when the server does not come up (it exited, or took over 20 s).
pub(crate) fn serve_in(dir: &Path, toml: &str, max_files: Option<u32>) -> Result<Served, String> {
    let path = dir.join("config.toml");
    std::fs::write(&path, toml).unwrap();
    let want_tcp = toml.contains("[sources.tcp]");
    let serve_args = [
        "serve",
        "--config",
        path.to_str().unwrap(),
        "--bind",
        "127.0.0.1:0",
    ];
    let mut command = match max_files {
        None => Command::new(BIN),
        Some(n) => {
            let mut c = Command::new("sh");
            c.args(["-c", &format!("ulimit -n {n} && exec \"$0\" \"$@\""), BIN]);
            c
        }
    };
    let mut child = command
        .args(serve_args)
        // The default journal (./data) goes to the test's own folder.
        .current_dir(dir)
        .env("RUST_LOG", "info")
        .stderr(Stdio::piped())
        .stdout(Stdio::null())
        .spawn()
        .unwrap();
    let (tx, rx) = mpsc::channel();
    let stderr = child.stderr.take().unwrap();
    std::thread::spawn(move || {
        for line in BufReader::new(stderr).lines().map_while(Result::ok) {
            let _ = tx.send(line);
        }
    });
    let addr_in = |line: &str| {
        line.split("addr=")
            .nth(1)
            .unwrap()
            .split(' ')
            .next()
            .unwrap()
            .to_owned()
    };
    let (mut base, mut tcp) = (None, None);
    let mut startup = Vec::new();
    let deadline = Instant::now() + Duration::from_secs(20);
    while Instant::now() < deadline {
        match rx.recv_timeout(Duration::from_millis(100)) {
            Ok(line) => {
                if line.contains("mailroom is serving") {
                    base = Some(format!("http://{}", addr_in(&line)));
                } else if line.contains("TCP source listening") {
                    tcp = Some(addr_in(&line));
                }
                startup.push(line);
            }
            Err(mpsc::RecvTimeoutError::Disconnected) => break, // it exited
            Err(mpsc::RecvTimeoutError::Timeout) => {}
        }
        if let Some(base) = base.clone().filter(|_| tcp.is_some() || !want_tcp) {
            return Ok(Served {
                child,
                base,
                tcp,
                logs: rx,
                startup,
                _dir: None,
            });
        }
    }
    let _ = child.kill();
    let status = child.wait().ok().and_then(|s| s.code());
    Err(format!(
        "mailroom serve did not start (exit {status:?}):\n{}",
        startup.join("\n")
    ))
}

impl Drop for Served {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

pub(crate) fn collect_until_exit(
    child: &mut std::process::Child,
    rx: &mpsc::Receiver<String>,
    max: Duration,
) -> (i32, String) {
    let deadline = Instant::now() + max;
    loop {
        if let Some(status) = child.try_wait().unwrap() {
            // Every line up to the end of its stderr (the reader thread then drops the sender).
            let mut logs = Vec::new();
            while let Ok(line) = rx.recv_timeout(deadline.saturating_duration_since(Instant::now()))
            {
                logs.push(line);
            }
            return (status.code().unwrap_or(-1), logs.join("\n"));
        }
        if Instant::now() > deadline {
            let _ = child.kill();
            panic!("mailroom did not exit within {max:?}");
        }
        std::thread::sleep(Duration::from_millis(20));
    }
}

async fn post(url: &str, body: Value) -> (u16, Value) {
    let client = awc::Client::builder()
        .timeout(Duration::from_secs(10))
        .finish();
    match client.post(url).send_json(&body).await {
        Ok(mut res) => (
            res.status().as_u16(),
            res.json().await.unwrap_or(Value::Null),
        ),
        Err(_) => (0, Value::Null), // listener closed: connection refused
    }
}

#[actix_rt::test]
async fn sigterm_drains_in_flight_messages_and_exits_zero() {
    let mut served = serve("[server]\nshutdown_timeout_ms = 10000\n");
    let base = served.base.clone();
    for _ in 0..5 {
        let (status, _) = post(
            &format!("{base}/v1/messages"),
            json!({"kind": "sleep", "payload": {"ms": 400}}),
        )
        .await;
        assert_eq!(status, 202);
    }
    Command::new("kill")
        .args(["-TERM", &served.child.id().to_string()])
        .status()
        .unwrap();
    // While draining: not ready, and new submissions are refused (503, or the connection once
    // the listener has closed).
    let client = awc::Client::builder()
        .timeout(Duration::from_secs(10))
        .finish();
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        match client.get(format!("{base}/readyz")).send().await {
            Ok(r) if r.status() == 503 => break,
            Err(_) => break, // the listener has closed
            Ok(_) => {}
        }
        assert!(Instant::now() < deadline, "/readyz never turned 503");
        actix_rt::time::sleep(Duration::from_millis(5)).await;
    }
    let (status, body) = post(&format!("{base}/v1/messages"), json!({"kind": "echo"})).await;
    assert!(status == 503 || status == 0, "{status} {body}");
    let (code, logs) = actix_rt::task::spawn_blocking(move || {
        collect_until_exit(&mut served.child, &served.logs, Duration::from_secs(15))
    })
    .await
    .unwrap();
    assert_eq!(code, 0, "{logs}");
    assert!(logs.contains("SIGTERM received"), "{logs}");
    assert!(
        logs.contains("drained every message; exiting drained=5"),
        "{logs}"
    );
}

#[actix_rt::test]
async fn sigterm_past_the_timeout_cancels_what_is_left_and_still_exits_zero() {
    let mut served = serve("[server]\nshutdown_timeout_ms = 300\n[storage]\nkind = \"memory\"\n");
    let base = served.base.clone();
    let (status, accepted) = post(
        &format!("{base}/v1/messages"),
        json!({"kind": "sleep", "payload": {"ms": 60000}}),
    )
    .await;
    assert_eq!(status, 202);
    let id = accepted["id"].as_str().unwrap().to_owned();
    Command::new("kill")
        .args(["-TERM", &served.child.id().to_string()])
        .status()
        .unwrap();
    let started = Instant::now();
    let (code, logs) = actix_rt::task::spawn_blocking(move || {
        collect_until_exit(&mut served.child, &served.logs, Duration::from_secs(15))
    })
    .await
    .unwrap();
    assert_eq!(code, 0, "{logs}");
    assert!(started.elapsed() < Duration::from_secs(10));
    assert!(
        logs.contains("could not finish within the shutdown timeout"),
        "{logs}"
    );
    assert!(
        logs.contains(&id),
        "the log names the message it could not finish: {logs}"
    );
}

fn script(cmd: &str, script: &str, args: &[&str], env: &[(&str, &str)]) -> (i32, String) {
    let path = concat!(env!("CARGO_MANIFEST_DIR"), "/examples/scripts/").to_owned() + script;
    let out = Command::new(cmd)
        .arg(&path)
        .args(args)
        .envs(env.iter().copied())
        .env_remove("MAILROOM_TOKEN")
        .output()
        .unwrap_or_else(|e| panic!("cannot run {cmd} {path}: {e}"));
    let text =
        String::from_utf8_lossy(&out.stdout).into_owned() + &String::from_utf8_lossy(&out.stderr);
    (out.status.code().unwrap_or(-1), text)
}

#[test]
fn the_example_scripts_drive_a_live_server() {
    let served = serve("[sources.tcp]\nbind = \"127.0.0.1:0\"\n");
    let (code, out) = script("bash", "curl.sh", &[], &[("MAILROOM_URL", &served.base)]);
    assert_eq!(code, 0, "{out}");
    assert!(out.contains("count = 1229"), "{out}");
    assert!(out.contains("cancel: cancelled"), "{out}");
    assert!(
        out.contains("OK: every step answered as documented"),
        "{out}"
    );

    let (code, out) = script("python3", "python_client.py", &["--url", &served.base], &[]);
    assert_eq!(code, 0, "{out}");
    assert!(
        out.contains("12 completed, 1 rejected, 0 unfinished"),
        "{out}"
    );

    let port = served
        .tcp
        .as_ref()
        .unwrap()
        .rsplit(':')
        .next()
        .unwrap()
        .to_owned();
    let (code, out) = script("python3", "tcp_client.py", &["--port", &port], &[]);
    assert_eq!(code, 0, "{out}");
    assert!(out.contains("5 answers for 5 lines"), "{out}");

    // Each script fails loudly when there is no server.
    let (code, _) = script(
        "bash",
        "curl.sh",
        &[],
        &[("MAILROOM_URL", "http://127.0.0.1:1")],
    );
    assert_ne!(code, 0);
    let (code, _) = script("python3", "tcp_client.py", &["--port", "1"], &[]);
    assert_ne!(code, 0);
}

#[actix_rt::test]
async fn journal_check_reports_whole_torn_and_corrupt_journals() {
    use mailroom_actors::journal::{Fsync, Log};
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().to_str().unwrap().to_owned();
    {
        let (log, _) = Log::open(dir.path(), Fsync::Always).unwrap();
        for _ in 0..5 {
            // 48 bytes of JSON each: {"replayed":{"id":"<26 characters>"}}
            let record = mailroom_actors::storage::Record::Replayed {
                id: mailroom_actors::MessageId::next(),
            };
            assert_eq!(record.encode().len(), 48);
            log.append(record.encode()).await.unwrap().unwrap();
        }
    }
    let r = mailroom(args(&["journal", "check", &path]), vec![]).await;
    assert_eq!(r.code, 0, "{}", r.stderr);
    assert!(
        r.stdout
            .contains("ok — 1 segments, 5 records, 288 bytes\nrecords: 5 replayed"),
        "{}",
        r.stdout
    );
    // A record cut short at the end: reported, still exit 0 (opening drops it).
    let segment = std::fs::read_dir(dir.path())
        .unwrap()
        .next()
        .unwrap()
        .unwrap()
        .path();
    let mut data = std::fs::read(&segment).unwrap();
    data.extend_from_slice(&[40, 0, 0, 0, 1, 2]);
    std::fs::write(&segment, &data).unwrap();
    let r = mailroom(args(&["journal", "check", &path]), vec![]).await;
    assert_eq!(r.code, 0, "{}", r.stderr);
    assert!(
        r.stdout.contains("torn tail:") && r.stdout.contains("at offset 288 (6 bytes"),
        "{}",
        r.stdout
    );
    // A flipped byte in the second record: corrupt, with its file and offset.
    data[8 + 56 + 8 + 3] ^= 0x55;
    std::fs::write(&segment, &data).unwrap();
    let r = mailroom(args(&["journal", "check", &path]), vec![]).await;
    assert_eq!(r.code, 1, "{}", r.stdout);
    assert!(
        r.stdout.contains(&format!(
            "journal corrupt: {} at offset 64: checksum mismatch",
            segment.display()
        )),
        "{}",
        r.stdout
    );
    let r = mailroom(args(&["journal", "check", "/nonexistent"]), vec![]).await;
    assert_eq!(r.code, 2);
}
