//! A 202 is a promise: the real binary with its journal in a temp folder, killed with `kill -9`
//! (or stopped with SIGTERM) in the middle of a mixed load and started again on the same
//! folder. Every id that got a 2xx is known afterwards and reaches exactly one terminal state;
//! keys, outcomes and dead letters survive; a torn tail is dropped with a warning, a corrupt
//! record stops start-up naming its file and offset, and a full disk refuses new messages with
//! a 503 (type `storage`) until space comes back.

use std::path::Path;
use std::process::Command;
use std::sync::atomic::{AtomicBool, Ordering::SeqCst};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use serde_json::{json, Value};

use crate::attacks::{addr_of, http, wait_until};
use crate::binary::{collect_until_exit, serve_in, Served};

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
backoff_ms = 1
"#;

fn post(addr: &str, body: Value) -> (u16, Value) {
    let (code, text) = http(addr, "POST", "/v1/messages", Some(&body.to_string())).unwrap();
    (code, serde_json::from_str(&text).unwrap_or(Value::Null))
}

fn get(addr: &str, path: &str) -> (u16, Value) {
    let (code, text) = http(addr, "GET", path, None).unwrap();
    (code, serde_json::from_str(&text).unwrap_or(Value::Null))
}

fn accepted_id(addr: &str, body: Value) -> String {
    let (code, v) = post(addr, body);
    assert_eq!(code, 202, "{v}");
    v["id"].as_str().unwrap().to_owned()
}

fn kill_9(s: &mut Served) {
    s.child.kill().unwrap(); // SIGKILL
    s.child.wait().unwrap();
}

fn start(dir: &Path, toml: &str) -> Served {
    serve_in(dir, toml, None).unwrap_or_else(|e| panic!("{e}"))
}

/// Waits until every id is in a terminal state; returns their outcomes.
fn wait_terminal(addr: &str, ids: &[String], max: Duration) -> Vec<Value> {
    let end = Instant::now() + max;
    ids.iter()
        .map(|id| loop {
            let (code, v) = get(addr, &format!("/v1/messages/{id}?wait_ms=1000"));
            assert_eq!(code, 200, "{id} is known: {v}");
            let status = v["status"].as_str().unwrap().to_owned();
            if !matches!(status.as_str(), "queued" | "delayed" | "running") {
                break v;
            }
            assert!(Instant::now() < end, "{id} still {status}");
        })
        .collect()
}

#[test]
fn accepted_work_survives_kill_9_and_runs_after_the_restart() {
    let _heavy = crate::common::heavy();
    let dir = tempfile::tempdir().unwrap();
    let mut s = start(dir.path(), ROUTES);
    let addr = addr_of(&s.base);

    // Keyed messages that finish before the crash, and dead letters.
    let keyed: Vec<String> = (0..5)
        .map(|i| {
            accepted_id(
                &addr,
                json!({"kind": "echo", "payload": i, "key": format!("k{i}")}),
            )
        })
        .collect();
    let dying: Vec<String> = (0..3)
        .map(|_| {
            accepted_id(
                &addr,
                json!({"kind": "chaos", "payload": {"mode": "error"}}),
            )
        })
        .collect();
    wait_terminal(&addr, &keyed, Duration::from_secs(30));
    wait_terminal(&addr, &dying, Duration::from_secs(30));
    // Unfinished at the crash: delayed, running (sleeping), queued behind a busy CPU pool.
    let delayed: Vec<String> = (0..20)
        .map(|i| {
            accepted_id(
                &addr,
                json!({"kind": "echo", "payload": i, "delay_ms": 3000}),
            )
        })
        .collect();
    let sleeping: Vec<String> = (0..5)
        .map(|_| accepted_id(&addr, json!({"kind": "sleep", "payload": {"ms": 60000}})))
        .collect();
    let crunching: Vec<String> = (0..4)
        .map(|_| {
            accepted_id(
                &addr,
                json!({"kind": "primes", "payload": {"limit": 10000000}}),
            )
        })
        .collect();
    wait_until("the sleeps to run", Duration::from_secs(30), || {
        sleeping
            .iter()
            .all(|id| get(&addr, &format!("/v1/messages/{id}")).1["status"] == "running")
    });
    // And a stream of submissions that the kill interrupts.
    let stop = Arc::new(AtomicBool::new(false));
    let streamed = Arc::new(Mutex::new(Vec::new()));
    let streamer = {
        let (addr, stop, streamed) = (addr.clone(), stop.clone(), streamed.clone());
        std::thread::spawn(move || {
            for i in 0..100_000 {
                if stop.load(SeqCst) {
                    break;
                }
                let body = json!({"kind": "echo", "payload": i, "delay_ms": 500}).to_string();
                match http(&addr, "POST", "/v1/messages", Some(&body)) {
                    Ok((202, text)) => {
                        let v: Value = serde_json::from_str(&text).unwrap();
                        streamed
                            .lock()
                            .unwrap()
                            .push(v["id"].as_str().unwrap().to_owned());
                    }
                    Ok((code, text)) => panic!("{code} {text}"),
                    Err(_) => break, // the server is gone
                }
            }
        })
    };
    wait_until("some streamed submissions", Duration::from_secs(30), || {
        streamed.lock().unwrap().len() >= 50
    });
    kill_9(&mut s);
    stop.store(true, SeqCst);
    streamer.join().unwrap();
    let streamed = streamed.lock().unwrap().clone();

    let s = start(dir.path(), ROUTES);
    let addr = addr_of(&s.base);
    let recovered = s
        .startup
        .iter()
        .find(|l| l.contains("storage: recovered"))
        .expect("the log says what was recovered")
        .clone();
    println!("{recovered}");
    assert!(recovered.contains("delayed="), "{recovered}");
    // Every id that got a 202 is known at once, before anything new runs.
    for id in keyed
        .iter()
        .chain(&dying)
        .chain(&delayed)
        .chain(&sleeping)
        .chain(&crunching)
        .chain(&streamed)
    {
        let (code, v) = get(&addr, &format!("/v1/messages/{id}"));
        assert_eq!(code, 200, "{id} after the restart: {v}");
    }
    // Finished outcomes are as they were; a key still names its first message.
    for (i, id) in keyed.iter().enumerate() {
        let (_, v) = get(&addr, &format!("/v1/messages/{id}"));
        assert_eq!(v["status"], "completed");
        assert_eq!(v["result"], json!(i));
        let (code, again) = post(
            &addr,
            json!({"kind": "echo", "payload": 99, "key": format!("k{i}")}),
        );
        assert!(code == 200 || code == 202, "{again}");
        assert_eq!(again["id"].as_str(), Some(id.as_str()), "key k{i}");
    }
    // The dead letters are still there, and can be replayed.
    let (_, page) = get(&addr, "/v1/dead-letters");
    let listed: Vec<&str> = page["dead_letters"]
        .as_array()
        .unwrap()
        .iter()
        .map(|d| d["id"].as_str().unwrap())
        .collect();
    for id in &dying {
        assert!(listed.contains(&id.as_str()), "{id} in {page}");
    }
    let (code, replay) = post(
        &addr,
        json!({"kind": "echo", "payload": 0}), // a plain message still goes through
    );
    assert_eq!(code, 202, "{replay}");
    let (code, replayed) = http(
        &addr,
        "POST",
        &format!("/v1/dead-letters/{}/retry", dying[0]),
        Some(""),
    )
    .unwrap();
    assert_eq!(code, 202, "{replayed}");
    // Everything unfinished runs and ends exactly once.
    let unfinished: Vec<String> = delayed
        .iter()
        .chain(&sleeping)
        .chain(&crunching)
        .chain(&streamed)
        .cloned()
        .collect();
    // The sleeps were running at the crash: they run again, and `attempts` says so. (They
    // sleep 60 s: cancel is refused for running ones, so they are only checked for attempts.)
    for id in &sleeping {
        let (_, v) = get(&addr, &format!("/v1/messages/{id}?wait_ms=10000"));
        assert!(v["attempts"].as_u64().unwrap() >= 1, "{v}");
    }
    wait_until("a sleep to run again", Duration::from_secs(30), || {
        sleeping.iter().all(|id| {
            let (_, v) = get(&addr, &format!("/v1/messages/{id}"));
            v["status"] == "running" && v["attempts"] == 2
        })
    });
    let rest: Vec<String> = unfinished
        .iter()
        .filter(|id| !sleeping.contains(id))
        .cloned()
        .collect();
    for v in wait_terminal(&addr, &rest, Duration::from_secs(120)) {
        assert_eq!(v["status"], "completed", "{v}");
    }
    for id in &delayed {
        let (_, v) = get(&addr, &format!("/v1/messages/{id}"));
        let total = v["timings"]["total_ms"].as_f64().unwrap();
        assert!(total >= 3000.0, "a delayed message kept its due time: {v}");
    }
}

#[test]
fn sigterm_keeps_far_delayed_messages_for_the_next_start() {
    let dir = tempfile::tempdir().unwrap();
    let toml = "[server]\nshutdown_timeout_ms = 300\n";
    let mut s = start(dir.path(), toml);
    let addr = addr_of(&s.base);
    let ids: Vec<String> = (0..5)
        .map(|i| {
            accepted_id(
                &addr,
                json!({"kind": "echo", "payload": i, "delay_ms": 4000}),
            )
        })
        .collect();
    Command::new("kill")
        .args(["-TERM", &s.child.id().to_string()])
        .status()
        .unwrap();
    let (code, logs) = collect_until_exit(&mut s.child, &s.logs, Duration::from_secs(15));
    assert_eq!(code, 0, "{logs}");
    assert!(logs.contains("kept=5"), "{logs}");
    assert!(logs.contains("stay in the journal"), "{logs}");
    drop(s);
    let s = start(dir.path(), toml);
    let addr = addr_of(&s.base);
    for id in &ids {
        let (code, v) = get(&addr, &format!("/v1/messages/{id}"));
        assert_eq!(code, 200, "{v}");
        assert!(
            v["status"] == "delayed" || v["status"] == "completed",
            "kept, not cancelled: {v}"
        );
    }
    for (i, v) in wait_terminal(&addr, &ids, Duration::from_secs(60))
        .iter()
        .enumerate()
    {
        assert_eq!(v["status"], "completed", "{v}");
        assert_eq!(v["result"], json!(i));
        assert!(v["timings"]["total_ms"].as_f64().unwrap() >= 4000.0, "{v}");
    }
}

fn segments(dir: &Path) -> Vec<std::path::PathBuf> {
    let mut s: Vec<_> = std::fs::read_dir(dir.join("data"))
        .unwrap()
        .map(|e| e.unwrap().path())
        .filter(|p| p.extension().is_some_and(|e| e == "log"))
        .collect();
    s.sort();
    s
}

/// `data/NNNN.log`, as the server (whose working directory is the test's folder) names it.
fn name_of(segment: &Path) -> String {
    format!("data/{}", segment.file_name().unwrap().to_string_lossy())
}

#[test]
fn a_torn_tail_is_dropped_and_a_corrupt_record_stops_start_up() {
    let dir = tempfile::tempdir().unwrap();
    let toml = "[server]\nshutdown_timeout_ms = 300\n";
    let mut s = start(dir.path(), toml);
    let addr = addr_of(&s.base);
    let ids: Vec<String> = (0..3)
        .map(|i| {
            accepted_id(
                &addr,
                json!({"kind": "echo", "payload": i, "delay_ms": 600000}),
            )
        })
        .collect();
    kill_9(&mut s);
    drop(s);
    // A write cut short by the crash: half a record after the last one, in the zeros the
    // segment was allocated ahead with.
    let last = segments(dir.path()).pop().unwrap();
    let mut data = std::fs::read(&last).unwrap();
    let whole = data.iter().rposition(|&b| b != 0).unwrap() + 1;
    let torn = [200, 0, 0, 0, 7, 7, 7, 7, b'{'];
    data.resize(data.len().max(whole + torn.len()), 0); // a file system that cannot allocate
    data[whole..whole + torn.len()].copy_from_slice(&torn);
    std::fs::write(&last, &data).unwrap();
    let s = start(dir.path(), toml);
    let warning = s
        .startup
        .iter()
        .find(|l| l.contains("torn tail"))
        .expect("a warning about the torn tail");
    assert!(
        warning.contains(&name_of(&last)) && warning.contains(&format!("offset={whole}")),
        "{warning}"
    );
    let addr = addr_of(&s.base);
    for id in &ids {
        assert_eq!(get(&addr, &format!("/v1/messages/{id}")).0, 200);
    }
    drop(s);
    // A flipped byte inside the first record (the header is 8 bytes, the record's own 8).
    let first = segments(dir.path()).remove(0);
    let mut data = std::fs::read(&first).unwrap();
    data[8 + 8 + 5] ^= 0x20;
    std::fs::write(&first, &data).unwrap();
    let err = serve_in(dir.path(), toml, None)
        .err()
        .expect("start-up stops");
    assert!(
        err.contains(&name_of(&first)) && err.contains("offset 8"),
        "{err}"
    );
    let out = Command::new(env!("CARGO_BIN_EXE_mailroom"))
        .args(["journal", "check"])
        .arg(dir.path().join("data"))
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(1));
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(stdout.contains("checksum mismatch"), "{stdout}");
}

/// A 2 MiB tmpfs (root only: the test says so and does nothing else when it cannot mount).
struct Tmpfs(std::path::PathBuf);

impl Tmpfs {
    fn mount(dir: &Path) -> Option<Tmpfs> {
        let at = dir.join("data");
        std::fs::create_dir_all(&at).unwrap();
        let ok = Command::new("mount")
            .args(["-t", "tmpfs", "-o", "size=2m", "tmpfs"])
            .arg(&at)
            .status()
            .is_ok_and(|s| s.success());
        ok.then_some(Tmpfs(at))
    }
}

impl Drop for Tmpfs {
    fn drop(&mut self) {
        let _ = Command::new("umount").arg("-l").arg(&self.0).status();
    }
}

#[test]
fn a_full_disk_refuses_new_messages_with_503_and_loses_nothing() {
    let dir = tempfile::tempdir().unwrap();
    let Some(tmpfs) = Tmpfs::mount(dir.path()) else {
        let uid = Command::new("id").arg("-u").output().unwrap().stdout;
        assert_ne!(
            String::from_utf8_lossy(&uid).trim(),
            "0",
            "running as root, a tmpfs must mount"
        );
        eprintln!("SKIPPED: mounting a tmpfs needs root");
        return;
    };
    let mut s = start(dir.path(), ROUTES);
    let addr = addr_of(&s.base);
    let before: Vec<String> = (0..10)
        .map(|i| {
            accepted_id(
                &addr,
                json!({"kind": "echo", "payload": i, "delay_ms": 600000}),
            )
        })
        .collect();
    // Fill what is left of the disk.
    let filler = tmpfs.0.join("filler");
    let mut f = std::fs::File::create(&filler).unwrap();
    let chunk = vec![0u8; 64 * 1024];
    while std::io::Write::write_all(&mut f, &chunk).is_ok() {}
    drop(f);
    let big = "x".repeat(100_000);
    let (code, text) = http(
        &addr,
        "POST",
        "/v1/messages",
        Some(&json!({"kind": "echo", "payload": big}).to_string()),
    )
    .unwrap();
    assert_eq!(code, 503, "{text}");
    let problem: Value = serde_json::from_str(&text).unwrap();
    assert_eq!(problem["type"], "urn:mailroom:problem:storage", "{problem}");
    // What was accepted before is still there.
    for id in &before {
        assert_eq!(get(&addr, &format!("/v1/messages/{id}")).0, 200);
    }
    // Space comes back: admission works again.
    std::fs::remove_file(&filler).unwrap();
    let after = accepted_id(&addr, json!({"kind": "echo", "payload": big}));
    let (_, metrics) = http(&addr, "GET", "/metrics", None).unwrap();
    assert!(
        metrics.contains("mailroom_messages_rejected_total{kind=\"echo\",reason=\"storage\"} 1"),
        "{metrics}"
    );
    wait_terminal(&addr, std::slice::from_ref(&after), Duration::from_secs(30));
    // Its outcome's record is written just after the outcome is published (not waited for:
    // a crash before it means the message runs again). Wait until it is in the file.
    wait_until("the outcome's record", Duration::from_secs(30), || {
        let out = Command::new(env!("CARGO_BIN_EXE_mailroom"))
            .args(["journal", "check"])
            .arg(dir.path().join("data"))
            .output()
            .unwrap();
        String::from_utf8_lossy(&out.stdout).contains("1 finished")
    });
    kill_9(&mut s);
    drop(s);
    let s = start(dir.path(), ROUTES);
    let addr = addr_of(&s.base);
    for id in before.iter().chain([&after]) {
        assert_eq!(get(&addr, &format!("/v1/messages/{id}")).0, 200, "{id}");
    }
    // The refused message left nothing behind: the ten delayed ones are all that comes back
    // unfinished (the one accepted after the disk came back has finished).
    let recovered = s
        .startup
        .iter()
        .find(|l| l.contains("storage: recovered"))
        .expect("the recovery line");
    assert!(
        recovered.contains("recovered 10 unfinished messages (0 queued, 10 delayed")
            && recovered.contains("1 outcomes"),
        "{recovered}"
    );
    drop(s);
    drop(tmpfs);
}

#[test]
fn the_journal_levels_off_under_a_long_stream() {
    let _heavy = crate::common::heavy();
    let dir = tempfile::tempdir().unwrap();
    let toml = "[dispatch]\nmax_results = 500\n[storage]\nsegment_bytes = 65536\n";
    let s = start(dir.path(), toml);
    let addr = addr_of(&s.base);
    // A segment compaction removes between the listing and its size counts as gone.
    let size = || -> u64 {
        std::fs::read_dir(dir.path().join("data"))
            .unwrap()
            .filter_map(|e| e.ok()?.metadata().ok())
            .map(|m| m.len())
            .sum()
    };
    let payload = "y".repeat(1000);
    let mut sizes = Vec::new();
    for round in 0..10 {
        for i in 0..500 {
            let (code, text) = http(
                &addr,
                "POST",
                "/v1/messages?wait=true",
                Some(&json!({"kind": "echo", "payload": [round, i, payload]}).to_string()),
            )
            .unwrap();
            assert_eq!(code, 200, "{text}");
        }
        sizes.push(size());
    }
    // 5,000 messages wrote about 15 MB of records; 500 outcomes of about 1 KB stay needed.
    let written = {
        let (_, m) = http(&addr, "GET", "/metrics", None).unwrap();
        m.lines()
            .find_map(|l| l.strip_prefix("mailroom_journal_records_total "))
            .map(|v| v.trim().parse::<u64>().unwrap())
            .unwrap()
    };
    assert!(written >= 10_000, "{written} records written");
    wait_until("compaction to catch up", Duration::from_secs(30), || {
        size() <= 3 * 1024 * 1024
    });
    println!(
        "journal bytes after each 500 messages: {sizes:?}; now {}",
        size()
    );
    drop(s);
}
