//! supervision — a processor that panics now and then: outcomes, restarts, and the ledger.
//!
//! A panic in an asyncio task kills the task and whatever it held; here the panic is caught at
//! the processor boundary, the message fails with the panic text (or is retried: this route
//! retries once), and the processor is restarted with fresh state. The other messages never
//! notice. At the end the ledger shows every message in exactly one terminal state.
//!
//! Run: `cargo run --example supervision`

use std::cell::Cell;
use std::time::Duration;

use futures_util::future::LocalBoxFuture;
use mailroom_actors::{
    AsyncProcessor, Dispatcher, Job, Message, ProcessResult, Processor, RouteSettings, Settings,
};
use serde_json::{json, Value};

/// Panics on every third message it sees; its counter starts again after each restart.
struct Moody {
    seen: Cell<u32>,
}

impl AsyncProcessor for Moody {
    fn process(&self, job: Job, payload: Value) -> LocalBoxFuture<'static, ProcessResult> {
        self.seen.set(self.seen.get() + 1);
        let seen = self.seen.get();
        Box::pin(async move {
            if seen.is_multiple_of(3) {
                panic!(
                    "moody processor gave up on message {} (attempt {})",
                    payload, job.attempt
                );
            }
            Ok(json!({ "n": payload, "seen_by_this_instance": seen }))
        })
    }
}

#[actix::main]
async fn main() {
    std::panic::set_hook(Box::new(|_| {})); // the panics are the point; keep the output readable
    let d = Dispatcher::builder(Settings::default())
        .processor(Processor::from_factory("moody", || Moody {
            seen: Cell::new(0),
        }))
        .route(
            "moody",
            RouteSettings::new("moody")
                .retries(1, Duration::from_millis(10))
                .concurrency(1),
        )
        .build()
        .unwrap();
    let outcomes = d
        .gather((0..12).map(|i| Message::new("moody", json!(i))).collect())
        .await;
    for o in outcomes.iter().map(|o| o.as_ref().unwrap()) {
        match &o.error {
            None => println!(
                "{:>2} {:<9} attempts {} {}",
                o.result.as_ref().unwrap()["n"],
                o.status.as_str(),
                o.attempts,
                o.result.as_ref().unwrap()
            ),
            Some(e) => println!(
                "   {:<9} attempts {} {}: {}",
                o.status.as_str(),
                o.attempts,
                e.class.as_str(),
                e.message
            ),
        }
    }
    let routes = d.routes();
    let k = d.stats();
    let k = k.kind("moody").unwrap();
    println!("restarts: {}", routes[0].restarts);
    println!(
        "ledger: accepted {} = completed {} + failed {} + dead {} + in flight {}; retried {}",
        k.accepted, k.completed, k.failed, k.dead, k.in_flight, k.retried
    );
    assert!(k.identity_holds());
    assert!(routes[0].restarts > 0);
    d.shutdown(Duration::from_secs(1)).await;
}
