//! A thread attached with `Dispatcher::attach_current_arbiter` runs the async routes itself: what
//! it submits runs on it, the route's concurrency stays one limit over every thread, and a
//! processor that blocks such a thread is reported by the watchdog.

use std::sync::atomic::Ordering::SeqCst;
use std::sync::Arc;
use std::time::Duration;

use actix_rt::Arbiter;
use mailroom_actors::{Dispatcher, Message, Processor, RouteSettings, Status};
use serde_json::{json, Value};
use tokio::sync::oneshot;

use super::common::{builder, eventually, gated, settings, settled, Gate};

/// Which thread ran the message.
fn whereabouts() -> Processor {
    Processor::from_fn("where", |_job, _p: Value| async move {
        Ok(json!(format!("{:?}", std::thread::current().id())))
    })
}

/// Runs `f` on `arbiter` and returns what it returns.
async fn on<T: Send + 'static>(
    arbiter: &Arbiter,
    f: impl AsyncFnOnce() -> T + Send + 'static,
) -> T {
    let (tx, rx) = oneshot::channel();
    assert!(arbiter.spawn_fn(move || {
        actix_rt::spawn(async move {
            let _ = tx.send(f().await);
        });
    }));
    rx.await.expect("the arbiter ran it")
}

fn here() -> String {
    format!("{:?}", std::thread::current().id())
}

#[actix_rt::test]
async fn what_an_attached_thread_submits_runs_on_it_and_concurrency_stays_one_limit() {
    let gate = Arc::new(Gate::default());
    let d = builder(settings())
        .processor(whereabouts())
        .processor(gated(&gate))
        .route("where", RouteSettings::new("where"))
        .route("slow", RouteSettings::new("gated").concurrency(2))
        .build()
        .unwrap();
    let arbiters = [Arbiter::new(), Arbiter::new()];
    for a in &arbiters {
        let d = d.clone();
        let (attached, again, thread, ran_on) = on(a, async move || {
            let attached = d.attach_current_arbiter();
            let again = d.attach_current_arbiter();
            let out = d.send(Message::new("where", json!(null))).await.unwrap();
            (attached, again, here(), out.result.clone())
        })
        .await;
        assert!(attached, "the first attach starts the routes here");
        assert!(!again, "a thread is attached once");
        assert_eq!(
            out_status_ok(&ran_on),
            thread,
            "ran on the thread that submitted it"
        );
    }
    // A thread that is not attached hands its messages to the route's own arbiter.
    let out = d.send(Message::new("where", json!(null))).await.unwrap();
    assert_eq!(out.status, Status::Completed);
    assert_ne!(out.result.as_ref().unwrap().as_str().unwrap(), here());

    // Six slow messages submitted on each attached thread: two run at once over both threads.
    let mut ids = Vec::new();
    for a in &arbiters {
        let d = d.clone();
        ids.extend(
            on(a, async move || {
                (0..6)
                    .map(|i| d.submit(Message::new("slow", json!(i))).unwrap())
                    .collect::<Vec<_>>()
            })
            .await,
        );
    }
    assert!(
        eventually(Duration::from_secs(10), || {
            let r = &d.routes()[1];
            (r.running, r.queue_depth) == (2, 10)
        })
        .await,
        "{:?}",
        d.routes()
    );
    assert_eq!(gate.running.load(SeqCst), 2);
    gate.open();
    // Every message completes: a thread whose worker waited for a slot was woken.
    settled(&d).await;
    for id in ids {
        assert_eq!(d.status(id).unwrap().status, Status::Completed);
    }
    assert_eq!(gate.most.load(SeqCst), 2, "never more than two at once");
    for a in arbiters {
        a.stop();
    }
}

fn out_status_ok(result: &Option<Value>) -> String {
    result
        .as_ref()
        .and_then(Value::as_str)
        .expect("a thread id")
        .to_owned()
}

#[actix_rt::test]
async fn delayed_messages_and_retries_submitted_on_an_attached_thread_keep_their_behaviour() {
    // Fails its first attempt; the second says which thread ran it.
    let flaky = Processor::from_fn("flaky", |job, _p: Value| async move {
        if job.attempt == 1 {
            Err(mailroom_actors::ProcessError::new("first attempt fails"))
        } else {
            Ok(json!(here()))
        }
    });
    let d = builder(settings())
        .processor(flaky)
        .route(
            "flaky",
            RouteSettings::new("flaky").retries(1, Duration::from_millis(5)),
        )
        .route("echo", RouteSettings::new("echo"))
        .build()
        .unwrap();
    let arbiter = Arbiter::new();
    let dd = d.clone();
    let (cancelled, retried, attached_thread) = on(&arbiter, async move || {
        assert!(dd.attach_current_arbiter());
        // A delayed message waits on the route's own router, where a cancel finds it.
        let id = dd
            .call_later(
                Duration::from_secs(60),
                Message::new("echo", json!("later")),
            )
            .unwrap();
        dd.cancel(id).unwrap();
        // Its retry waits on the route's own router, then runs on the route's own arbiter.
        let out = dd
            .send(Message::new("flaky", json!("again")))
            .await
            .unwrap();
        (id, out, here())
    })
    .await;
    assert_eq!(retried.status, Status::Completed, "{retried:?}");
    assert_eq!(retried.attempts, 2);
    assert_ne!(
        retried.result,
        Some(json!(attached_thread)),
        "the retry ran on the route's arbiter"
    );
    assert_eq!(d.status(cancelled).unwrap().status, Status::Cancelled);
    // The router that held it let it go at once (a delayed message left in a router that the
    // cancel did not reach would count as delayed for its whole minute).
    assert!(
        eventually(Duration::from_secs(10), || d.routes()[1].delayed == 0).await,
        "{:?}",
        d.routes()
    );
    settled(&d).await;
    arbiter.stop();
}

#[actix_rt::test]
async fn a_processor_that_blocks_an_attached_thread_is_reported() {
    let mut s = settings();
    s.io.stall_warn = Duration::from_millis(100);
    let d = builder(s)
        .processor(Processor::from_fn("blocks", |_job, _p: Value| async move {
            // Wrong on purpose: blocking work on an async route.
            std::thread::sleep(Duration::from_millis(500));
            Ok(json!(here()))
        }))
        .route("blocks", RouteSettings::new("blocks"))
        .build()
        .unwrap();
    let arbiter = Arbiter::new();
    let dd = d.clone();
    let (out, thread) = on(&arbiter, async move || {
        assert!(dd.attach_current_arbiter());
        (
            dd.send(Message::new("blocks", json!(1))).await.unwrap(),
            here(),
        )
    })
    .await;
    assert_eq!(out.status, Status::Completed);
    assert_eq!(
        out.result,
        Some(json!(thread)),
        "it blocked the attached thread"
    );
    assert!(
        eventually(Duration::from_secs(10), || d.stats().stalls >= 1).await,
        "the watchdog saw the thread stop answering: {:?}",
        d.stats().stalls
    );
    arbiter.stop();
}

#[actix_rt::test]
async fn attaching_outside_an_arbiter_or_without_async_routes_does_nothing() {
    let d = builder(settings())
        .route("primes", RouteSettings::new("primes"))
        .build()
        .unwrap();
    assert!(!d.attach_current_arbiter(), "no async route to run here");
    let d2: Dispatcher = builder(settings())
        .route("echo", RouteSettings::new("echo"))
        .build()
        .unwrap();
    let attached = std::thread::spawn(move || d2.attach_current_arbiter())
        .join()
        .unwrap();
    assert!(!attached, "a plain thread has no arbiter to run actors on");
}

#[actix_rt::test]
async fn an_attached_thread_that_stops_hands_on_what_it_held_and_frees_its_slot() {
    let gate = Arc::new(Gate::default());
    let d = builder(settings())
        .processor(gated(&gate))
        .route("slow", RouteSettings::new("gated").concurrency(1))
        .build()
        .unwrap();
    let arbiter = Arbiter::new();
    let dd = d.clone();
    // One runs on the attached thread (the route's one slot), two wait in its worker's backlog.
    let ids = on(&arbiter, async move || {
        assert!(dd.attach_current_arbiter());
        (0..3)
            .map(|i| dd.submit(Message::new("slow", json!(i))).unwrap())
            .collect::<Vec<_>>()
    })
    .await;
    assert!(
        eventually(Duration::from_secs(10), || {
            let r = &d.routes()[0];
            (r.running, r.queue_depth) == (1, 2)
        })
        .await,
        "{:?}",
        d.routes()
    );
    arbiter.stop();
    arbiter.join().unwrap();
    // The running one ends failed; the two that waited run on the route's own worker, which
    // gets the slot back: nothing is lost and the route is not stuck.
    let failed = d.wait(ids[0], Duration::from_secs(10)).await.unwrap();
    assert_eq!(failed.status, Status::Failed);
    assert_eq!(
        failed.error.as_ref().unwrap().message,
        "the thread running it stopped before it finished"
    );
    gate.open();
    for id in &ids[1..] {
        let out = d.wait(*id, Duration::from_secs(10)).await.unwrap();
        assert_eq!(out.status, Status::Completed, "{out:?}");
    }
    let out = d.send(Message::new("slow", json!("after"))).await.unwrap();
    assert_eq!(out.status, Status::Completed);
    settled(&d).await;
}

#[actix_rt::test]
async fn threads_waiting_for_a_route_slot_take_turns() {
    // One slot, two attached threads and the route's own worker all wanting it: each message
    // runs, one at a time, and none waits for another thread's whole queue to drain.
    let order = Arc::new(parking_lot::Mutex::new(Vec::new()));
    let o = order.clone();
    let d = builder(settings())
        .processor(Processor::from_fn("turn", move |_job, p: Value| {
            let o = o.clone();
            async move {
                o.lock().push(p.clone());
                actix_rt::time::sleep(Duration::from_millis(2)).await;
                Ok(p)
            }
        }))
        .route("turn", RouteSettings::new("turn").concurrency(1))
        .build()
        .unwrap();
    let arbiters = [Arbiter::new(), Arbiter::new()];
    let mut ids = Vec::new();
    for (t, a) in arbiters.iter().enumerate() {
        let d = d.clone();
        ids.extend(
            on(a, async move || {
                assert!(d.attach_current_arbiter());
                (0..5)
                    .map(|i| d.submit(Message::new("turn", json!([t, i]))).unwrap())
                    .collect::<Vec<_>>()
            })
            .await,
        );
    }
    for i in 0..5 {
        ids.push(d.submit(Message::new("turn", json!([2, i]))).unwrap());
    }
    for id in ids {
        let out = d.wait(id, Duration::from_secs(10)).await.unwrap();
        assert_eq!(out.status, Status::Completed);
    }
    let order = order.lock().clone();
    assert_eq!(order.len(), 15);
    // A slot given back goes to the worker that has waited longest. Once all three sources
    // wait (from the first run of the last one to submit), they take turns: any three runs in
    // a row are of three sources, until one has run out of messages. (A thread that took its
    // slot straight back would run its whole queue first, and the last source would start only
    // after one had run out.)
    let source = |p: &Value| p[0].as_u64().unwrap();
    let start = order.iter().position(|p| source(p) == 2).unwrap();
    let end = order.iter().position(|p| p[1] == 4).unwrap();
    assert!(
        start < end,
        "the last source waited for another to drain: {order:?}"
    );
    for w in order[start..=end].windows(3) {
        let mut s: Vec<u64> = w.iter().map(source).collect();
        s.sort_unstable();
        assert_eq!(s, [0, 1, 2], "not in turns: {order:?}");
    }
    settled(&d).await;
    for a in arbiters {
        a.stop();
    }
}
