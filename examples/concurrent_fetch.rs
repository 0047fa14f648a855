//! concurrent_fetch — many concurrent `fetch`es against an upstream the example starts itself on
//! 127.0.0.1, and the total time against the sum of the delays.
//!
//! The upstream holds each request until all of them have arrived (or 10 s have passed), then
//! waits its delay: so "16 in flight at once" is a fact the example shows, not a timing.
//!
//! The asyncio original: eight `aiohttp` GETs under `asyncio.gather`. Here each fetch is a
//! message on the `fetch` route (awc, one client per I/O arbiter, explicit timeouts, body cap,
//! and a guard that refuses loopback targets unless `fetch.allow_hosts` names them — so this
//! example allows 127.0.0.1 explicitly).
//!
//! Run: `cargo run --example concurrent_fetch`

use std::sync::atomic::{AtomicUsize, Ordering::SeqCst};
use std::sync::Arc;
use std::time::{Duration, Instant};

use actix_web::{web, App, HttpResponse, HttpServer};
use mailroom_actors::{Dispatcher, Message, Settings};
use serde_json::json;

#[actix::main]
async fn main() {
    const FETCHES: usize = 16;
    // The upstream: /delay/{ms} answers after every fetch has arrived, and then ms milliseconds.
    let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let port = listener.local_addr().unwrap().port();
    let barrier = Arc::new(tokio::sync::Barrier::new(FETCHES));
    // Requests inside the upstream now, and the most there ever were at once.
    let inside = Arc::new((AtomicUsize::new(0), AtomicUsize::new(0)));
    let (b, i) = (barrier.clone(), inside.clone());
    let upstream = HttpServer::new(move || {
        let (barrier, inside) = (b.clone(), i.clone());
        App::new().route(
            "/delay/{ms}",
            web::get().to(move |ms: web::Path<u64>| {
                let (barrier, inside) = (barrier.clone(), inside.clone());
                async move {
                    let now = inside.0.fetch_add(1, SeqCst) + 1;
                    inside.1.fetch_max(now, SeqCst);
                    let _ = actix_rt::time::timeout(Duration::from_secs(10), barrier.wait()).await;
                    actix_rt::time::sleep(Duration::from_millis(*ms)).await;
                    inside.0.fetch_sub(1, SeqCst);
                    HttpResponse::Ok().json(json!({ "waited_ms": *ms }))
                }
            }),
        )
    })
    .workers(1)
    .disable_signals()
    .listen(listener)
    .unwrap()
    .run();
    let handle = upstream.handle();
    actix_rt::spawn(upstream);

    let mut settings = Settings::default();
    settings.fetch.allow_hosts = vec!["127.0.0.1".into()];
    let d = Dispatcher::builder(settings)
        .builtin_routes()
        .build()
        .unwrap();

    let delays: Vec<u64> = (0..FETCHES as u64).map(|i| 100 + 25 * (i % 5)).collect();
    let msgs = delays
        .iter()
        .map(|ms| {
            Message::new(
                "fetch",
                json!({ "url": format!("http://127.0.0.1:{port}/delay/{ms}") }),
            )
        })
        .collect();
    let started = Instant::now();
    let outcomes = d.gather(msgs).await;
    let took = started.elapsed();
    let mut ok = 0;
    for o in outcomes.iter().map(|o| o.as_ref().unwrap()) {
        let r = o.result.as_ref().expect("fetched");
        if r["status"] == 200 {
            ok += 1;
        }
    }
    let sum: u64 = delays.iter().sum();
    println!("{ok}/{} fetches answered 200", delays.len());
    println!(
        "{} fetches were in flight at the upstream at once",
        inside.1.load(SeqCst)
    );
    println!(
        "total {:.0} ms; the delays add up to {sum} ms; the slowest is {} ms",
        took.as_secs_f64() * 1000.0,
        delays.iter().max().unwrap()
    );
    println!(
        "speed-up over one at a time: {:.1}x",
        sum as f64 / (took.as_secs_f64() * 1000.0)
    );
    assert_eq!(ok, delays.len());

    // And the guard: 127.0.0.2 is loopback too, but not on the allow-list.
    let refused = d
        .submit(Message::new(
            "fetch",
            json!({ "url": format!("http://127.0.0.2:{port}/delay/1") }),
        ))
        .unwrap_err();
    println!("refused: {refused}");
    d.shutdown(Duration::from_secs(1)).await;
    handle.stop(true).await;
}
