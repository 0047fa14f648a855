//! Overload and soak: drive several times the configured capacity with mixed kinds (including
//! `chaos` panics and errors) against the built binary, bounded both in requests and in time,
//! then check that every response was a documented success or a documented rejection, that no
//! accepted message is missing or unfinished, that the ledger identity holds exactly, and that
//! memory comes back below a stated bound.
//!
//! Nothing here depends on how fast the machine is: the load stops at `MAX_REQUESTS` (fewer than
//! the store keeps, so every accepted id can be checked) or after `LOAD_FOR`, whichever comes
//! first, and the 503 path is shown by filling a route deterministically, not by hoping the load
//! outruns the workers.

use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use serde_json::{json, Value};

use crate::binary::{rss_mb, serve};

const CLIENTS: usize = 64;
const LOAD_FOR: Duration = Duration::from_secs(8);
/// At most this many requests in the load: below `max_results` (20,000) less the warm-up and the
/// held messages, so no accepted outcome can be evicted before it is checked.
const MAX_REQUESTS: u64 = 12_000;
/// RSS bound after the load has drained (the store keeps at most 20,000 outcomes here).
const RSS_BOUND_MB: f64 = 160.0;

fn body(n: u64) -> Value {
    match n % 8 {
        0 | 1 => json!({"kind": "echo", "payload": {"n": n}}),
        2 | 3 => json!({"kind": "sleep", "payload": {"ms": 20}}),
        4 => json!({"kind": "chaos", "payload": {"mode": "panic", "message": "soak"}}),
        5 => json!({"kind": "chaos", "payload": {"mode": "error", "message": "soak"}}),
        6 => json!({"kind": "flaky", "payload": {"mode": "error"}}),
        _ => json!({"kind": "primes", "payload": {"limit": 3000}}),
    }
}

// The guard only keeps the heavy tests from running at once; each test has its own runtime and
// thread, so holding it across awaits cannot deadlock.
#[allow(clippy::await_holding_lock)]
#[actix_rt::test]
async fn overload_with_panics_loses_nothing_and_memory_comes_back() {
    let _heavy = crate::common::heavy();
    let served = serve(
        r#"
[server]
workers = 2
max_wait_ms = 5000
[dispatch]
capacity = 50
max_results = 20000
restart_max_backoff_ms = 20
[pools.io]
concurrency = 16
[routes.echo]
[routes.sleep]
concurrency = 8
[routes.primes]
[routes.chaos]
[routes.flaky]
processor = "chaos"
retries = 1
backoff_ms = 5
[routes.held]
processor = "echo"
capacity = 4
"#,
    );
    let base = served.base.clone();
    let pid = served.child.id();
    let client = awc::Client::builder()
        .timeout(Duration::from_secs(20))
        .finish();
    // Warm up, then take the idle figure.
    // (The chaos route may already be degraded by the warm-up's panics: count what was taken.)
    let mut warmed = 0;
    for i in 0..200 {
        let r = client
            .post(format!("{base}/v1/messages?wait=true"))
            .send_json(&body(i))
            .await
            .expect("the server answers");
        match r.status().as_u16() {
            200 | 202 => warmed += 1,
            503 => {}
            other => panic!("undocumented answer {other} in the warm-up"),
        }
    }
    let idle = rss_mb(pid);

    // A full route answers 503 with Retry-After and a problem+json body: four far-delayed
    // messages fill `held`, the fifth is refused; then the four are cancelled (they finish).
    let mut held = Vec::new();
    for i in 0..5 {
        let mut res = client
            .post(format!("{base}/v1/messages"))
            .send_json(&json!({"kind": "held", "payload": i, "delay_ms": 3_600_000}))
            .await
            .unwrap();
        let v: Value = res.json().await.unwrap();
        if i < 4 {
            assert_eq!(res.status(), 202, "{v}");
            held.push(v["id"].as_str().unwrap().to_owned());
        } else {
            assert_eq!(res.status(), 503, "{v}");
            assert!(res.headers().get("retry-after").is_some());
            assert_eq!(
                res.headers().get("content-type").unwrap(),
                "application/problem+json"
            );
        }
    }
    for id in &held {
        let res = client
            .delete(format!("{base}/v1/messages/{id}"))
            .send()
            .await
            .unwrap();
        assert_eq!(res.status(), 200);
    }

    let counter = Arc::new(AtomicU64::new(0));
    let end = Instant::now() + LOAD_FOR;
    let clients = (0..CLIENTS).map(|c| {
        let (client, base, counter) = (client.clone(), base.clone(), counter.clone());
        async move {
            let mut accepted = Vec::new();
            let mut codes: HashMap<u16, u64> = HashMap::new();
            while Instant::now() < end {
                let n = counter.fetch_add(1, Ordering::Relaxed);
                if n >= MAX_REQUESTS {
                    break;
                }
                let wait = c % 2 == 0;
                let url = if wait {
                    format!("{base}/v1/messages?wait=true")
                } else {
                    format!("{base}/v1/messages")
                };
                let mut res = client
                    .post(url)
                    .send_json(&body(n))
                    .await
                    .expect("the server answers");
                let status = res.status().as_u16();
                let retry_after = res.headers().get("retry-after").is_some();
                let ct = res
                    .headers()
                    .get("content-type")
                    .and_then(|v| v.to_str().ok())
                    .map(str::to_owned);
                let v: Value = res.json().limit(1 << 20).await.expect("a JSON body");
                match status {
                    200 | 202 => accepted.push(v["id"].as_str().expect("an id").to_owned()),
                    503 => {
                        assert!(retry_after, "503 without Retry-After: {v}");
                        assert_eq!(ct.as_deref(), Some("application/problem+json"));
                    }
                    other => panic!("undocumented answer {other}: {v}"),
                }
                *codes.entry(status).or_default() += 1;
            }
            (accepted, codes)
        }
    });
    let results = futures_util::future::join_all(clients).await;
    let peak = rss_mb(pid);
    let mut accepted: Vec<String> = Vec::new();
    let mut codes: HashMap<u16, u64> = HashMap::new();
    for (a, c) in results {
        accepted.extend(a);
        for (k, v) in c {
            *codes.entry(k).or_default() += v;
        }
    }
    let sent: u64 = codes.values().sum();
    assert!(!accepted.is_empty(), "{codes:?}");
    assert_eq!(
        sent,
        accepted.len() as u64 + codes.get(&503).copied().unwrap_or(0)
    );

    // Everything accepted finishes.
    let deadline = Instant::now() + Duration::from_secs(30);
    let metrics = loop {
        let mut res = client.get(format!("{base}/metrics")).send().await.unwrap();
        let text = String::from_utf8(res.body().limit(1 << 22).await.unwrap().to_vec()).unwrap();
        let m: HashMap<String, f64> = text
            .lines()
            .filter(|l| !l.starts_with('#') && !l.is_empty())
            .map(|l| {
                let (k, v) = l.rsplit_once(' ').unwrap();
                (k.to_owned(), v.parse().unwrap())
            })
            .collect();
        let in_flight: f64 = m
            .iter()
            .filter(|(k, _)| k.starts_with("mailroom_messages_in_flight{"))
            .map(|(_, v)| v)
            .sum();
        if in_flight == 0.0 {
            break m;
        }
        assert!(Instant::now() < deadline, "still in flight: {in_flight}");
        actix_rt::time::sleep(Duration::from_millis(50)).await;
    };
    // The ledger identity, exactly, for every kind; and it accounts for every accepted message.
    let mut total_accepted = 0.0;
    for kind in ["echo", "sleep", "primes", "chaos", "flaky", "held"] {
        let get = |k: String| metrics[&k];
        let acc = get(format!(
            "mailroom_messages_accepted_total{{kind=\"{kind}\"}}"
        ));
        let fin: f64 = ["completed", "failed", "timed_out", "cancelled", "dead"]
            .iter()
            .map(|s| {
                get(format!(
                    "mailroom_messages_finished_total{{kind=\"{kind}\",status=\"{s}\"}}"
                ))
            })
            .sum();
        assert_eq!(
            acc, fin,
            "{kind}: accepted = finished once nothing is in flight"
        );
        total_accepted += acc;
    }
    assert_eq!(
        total_accepted,
        (accepted.len() + warmed + held.len()) as f64,
        "every 200/202 is one accepted message"
    );
    assert!(metrics["mailroom_processor_restarts_total{processor=\"chaos\"}"] > 0.0);

    // Every accepted id is known and finished (fewer were accepted than the store keeps).
    for chunk in accepted.chunks(64) {
        let checks = chunk.iter().map(|id| {
            let (client, base) = (client.clone(), base.clone());
            async move {
                let mut r = client
                    .get(format!("{base}/v1/messages/{id}"))
                    .send()
                    .await
                    .unwrap();
                assert_eq!(r.status(), 200, "{id} is known");
                let v: Value = r.json().await.unwrap();
                let s = v["status"].as_str().unwrap().to_owned();
                assert!(
                    ["completed", "failed", "dead"].contains(&s.as_str()),
                    "{id}: {v}"
                );
            }
        });
        futures_util::future::join_all(checks).await;
    }
    let after = rss_mb(pid);
    println!(
        "soak: {sent} requests in {LOAD_FOR:?}, answers {codes:?}; RSS idle {idle:.1} MB, peak {peak:.1} MB, after {after:.1} MB"
    );
    assert!(
        after < RSS_BOUND_MB,
        "RSS after the load: {after:.1} MB (bound {RSS_BOUND_MB} MB)"
    );
}
