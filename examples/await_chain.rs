//! await_chain — a processor that awaits another message's result before it finishes.
//!
//! The asyncio walk-through: `hello_world` prints "Hello 1", awaits `add_42(23)`, prints
//! "Hello 2". In Mailroom `await add_42(23)` is `job.submitter().send(...)`: the inner call is a
//! real message with its own id and route, so it is bounded, supervised and visible in the ledger
//! — and the outer processor gives its thread back while it waits, like `await` does.
//!
//! Run: `cargo run --example await_chain`

use std::sync::Arc;
use std::time::Instant;

use mailroom_actors::{Dispatcher, Message, ProcessError, Processor, RouteSettings, Settings};
use serde_json::json;
use std::sync::Mutex;

#[actix::main]
async fn main() {
    let t0 = Instant::now();
    let events: Arc<Mutex<Vec<String>>> = Arc::default();
    let log = {
        let events = events.clone();
        move |what: String| {
            println!("{:>7.3} ms  {what}", t0.elapsed().as_secs_f64() * 1000.0);
            events.lock().unwrap().push(what);
        }
    };

    let l = log.clone();
    let add_42 = Processor::from_fn("add_42", move |_job, n| {
        let l = l.clone();
        async move {
            l("add_42: adding 42".into());
            Ok(json!(n.as_i64().unwrap_or(0) + 42))
        }
    });
    let l = log.clone();
    let hello = Processor::from_fn("hello_world", move |job, _| {
        let l = l.clone();
        async move {
            l("hello_world: Hello 1".into());
            l("hello_world: await add_42(23)".into());
            let inner = job
                .submitter()
                .send(Message::new("add_42", json!(23)))
                .await
                .map_err(|e| ProcessError::new(e.to_string()))?;
            let value = inner.result.clone().unwrap_or_default();
            l(format!(
                "hello_world: add_42 returned {value} (message {})",
                inner.id
            ));
            l("hello_world: Hello 2".into());
            Ok(json!({"add_42": value, "returns": 42}))
        }
    });

    let d = Dispatcher::builder(Settings::default())
        .processor(add_42)
        .processor(hello)
        .route("add_42", RouteSettings::new("add_42"))
        .route("hello_world", RouteSettings::new("hello_world"))
        .build()
        .unwrap();

    log("main: submit hello_world".into());
    let out = d
        .send(Message::new("hello_world", json!(null)))
        .await
        .unwrap();
    log(format!(
        "main: hello_world finished with {}",
        out.result.as_ref().unwrap()
    ));

    let order = events.lock().unwrap().clone();
    let expected = [
        "main: submit hello_world",
        "hello_world: Hello 1",
        "hello_world: await add_42(23)",
        "add_42: adding 42",
    ];
    assert_eq!(&order[..4], expected, "events happen in the awaited order");
    let stats = d.stats();
    println!(
        "ledger: hello_world completed {}, add_42 completed {}",
        stats.kind("hello_world").unwrap().completed,
        stats.kind("add_42").unwrap().completed
    );
    d.shutdown(std::time::Duration::from_secs(1)).await;
}
