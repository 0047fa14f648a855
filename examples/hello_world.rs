//! hello_world — run one message to completion and print its result.
//!
//! The asyncio original: `event_loop.run_until_complete(hello_world())` returning 42. Here the
//! "coroutine" is a processor registered under a kind; `send` submits one message and awaits its
//! outcome, which carries the result, the status and how long it queued and ran.
//!
//! Run: `cargo run --example hello_world`

use mailroom_actors::{Dispatcher, Message, Processor, RouteSettings, Settings};
use serde_json::json;

#[actix::main]
async fn main() {
    let dispatcher = Dispatcher::builder(Settings::default())
        .processor(Processor::from_fn("hello_world", |_job, _payload| async {
            println!("Hello world!");
            Ok(json!(42))
        }))
        .route("hello_world", RouteSettings::new("hello_world"))
        .build()
        .expect("the route names a registered processor");

    println!("Entering the dispatcher");
    let outcome = dispatcher
        .send(Message::new("hello_world", json!(null)))
        .await
        .expect("the message is accepted");
    println!("status: {}", outcome.status);
    println!(
        "result: {}",
        outcome.result.as_ref().expect("completed with a result")
    );
    println!(
        "queued {:.3} ms, ran {:.3} ms (id {})",
        outcome.timings.queued_ms, outcome.timings.run_ms, outcome.id
    );
    dispatcher.shutdown(std::time::Duration::from_secs(1)).await;
}
