//! gather_sleep — gather several messages, some of them sleeping: they overlap, and the
//! outcomes come back in the order they were given.
//!
//! The asyncio original: `asyncio.gather(hello_world(), hello_python())` where one of them
//! `await asyncio.sleep(0.1)`. `sleep` here is a timer on the I/O arbiter — no thread is blocked
//! — so three sleeps of 300 + 200 + 100 ms take about 300 ms, not 600.
//!
//! Run: `cargo run --example gather_sleep`

use std::time::{Duration, Instant};

use mailroom_actors::{Dispatcher, Message, Settings};
use serde_json::json;

#[actix::main]
async fn main() {
    let d = Dispatcher::builder(Settings::default())
        .builtin_routes()
        .build()
        .unwrap();
    let sleeps = [300u64, 200, 100];
    let mut msgs = vec![Message::new("echo", json!("Hello world"))];
    msgs.extend(
        sleeps
            .iter()
            .map(|ms| Message::new("sleep", json!({ "ms": ms }))),
    );
    msgs.push(Message::new("echo", json!("Hello python")));

    let started = Instant::now();
    let outcomes = d.gather(msgs).await;
    let took = started.elapsed();

    for (i, o) in outcomes.iter().enumerate() {
        let o = o.as_ref().expect("accepted");
        println!(
            "#{i} {:<6} {:<10} result {:<18} ran {:>7.1} ms",
            o.kind.as_str(),
            o.status.as_str(),
            o.result.as_ref().unwrap().to_string(),
            o.timings.run_ms
        );
    }
    let sum: u64 = sleeps.iter().sum();
    // When each sleep ran, from its outcome: start = acceptance + time queued.
    let spans: Vec<(f64, f64)> = outcomes[1..4]
        .iter()
        .map(|o| {
            let o = o.as_ref().unwrap();
            let start = o.accepted_at_ms as f64 + o.timings.queued_ms;
            (start, start + o.timings.run_ms)
        })
        .collect();
    let all_overlap = spans
        .iter()
        .all(|a| spans.iter().all(|b| a.0 < b.1 && b.0 < a.1));
    println!(
        "total {:.0} ms for sleeps adding up to {sum} ms: {}",
        took.as_secs_f64() * 1000.0,
        if all_overlap {
            "they overlapped"
        } else {
            "they did NOT overlap"
        }
    );
    println!("outcomes are in submission order: echo, sleep 300, sleep 200, sleep 100, echo");
    assert!(all_overlap, "every sleep was running while the others were");
    d.shutdown(Duration::from_secs(1)).await;
}
