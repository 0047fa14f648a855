//! call_later — delayed and periodic messages, and the cancellation of one.
//!
//! The asyncio original: `loop.call_later(sec, callback)`. Here a delayed message is accepted at
//! once (it counts against its route's bound, has an id, and can be cancelled until it runs);
//! a schedule is a timer source actor that submits a message every interval.
//!
//! Run: `cargo run --example call_later`

use std::sync::Arc;
use std::time::{Duration, Instant};

use mailroom_actors::{
    Dispatcher, Every, Message, Processor, RouteSettings, Schedule, Settings, Status,
};
use serde_json::{json, Value};

#[actix::main]
async fn main() {
    let t0 = Arc::new(Instant::now());
    let t = t0.clone();
    let say = Processor::from_fn("say", move |_job, p: Value| {
        let at = t.elapsed().as_millis();
        async move {
            println!("{at:>5} ms  {}", p.as_str().unwrap_or("?"));
            Ok(p)
        }
    });
    let d = Dispatcher::builder(Settings::default())
        .processor(say)
        .route("say", RouteSettings::new("say"))
        .build()
        .unwrap();

    let later = |ms: u64, text: &str| {
        d.call_later(Duration::from_millis(ms), Message::new("say", json!(text)))
            .unwrap()
    };
    let third = later(300, "third, at 300 ms");
    let first = later(100, "first, at 100 ms");
    let never = later(200, "this one is cancelled and never runs");
    let second = later(250, "second, at 250 ms");
    let tick = d
        .schedule(Schedule {
            kind: "say".into(),
            payload: json!("tick (every 120 ms)"),
            when: Every::Interval(Duration::from_millis(120)),
        })
        .unwrap();

    let cancelled = d.cancel(never).unwrap();
    println!("    0 ms  cancelled {never}: {}", cancelled.status);

    for id in [first, second, third] {
        let o = d.wait(id, Duration::from_secs(5)).await.unwrap();
        assert_eq!(o.status, Status::Completed);
        assert!(
            o.timings.queued_ms >= 100.0,
            "delayed messages never run early"
        );
    }
    tick.cancel();
    let ticks = d.stats().kind("say").unwrap().completed - 3;
    println!(
        "{:>5} ms  done: 3 delayed messages ran in order, {ticks} ticks, 1 cancelled",
        t0.elapsed().as_millis()
    );
    assert_eq!(d.status(never).unwrap().status, Status::Cancelled);
    d.shutdown(Duration::from_secs(1)).await;
}
