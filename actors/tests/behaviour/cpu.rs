//! The CPU pool's hand-off: a message stays `queued` until a thread begins it, a run timeout
//! counts from then and ends the message at the deadline whether or not its processor
//! cooperates, a timed-out attempt is retried once its thread has returned from it (never two
//! attempts of one message at once), and a route's `concurrency`
//! caps its share of the pool.
//! A gate the test opens stands in for long CPU work, so nothing here depends on timing.

use std::sync::atomic::{AtomicUsize, Ordering::SeqCst};
use std::sync::Arc;
use std::time::Duration;

use mailroom_actors::{ErrorClass, Message, Processor, RouteSettings, Settings, Status};
use parking_lot::{Condvar, Mutex};
use serde_json::{json, Value};

use super::common::{builder, eventually, settings, settled};

/// Blocks pool threads until the test opens it.
#[derive(Default)]
struct Gate {
    open: Mutex<bool>,
    cv: Condvar,
    calls: AtomicUsize,
    /// How many of the jobs saw their cancel flag raised when the gate let them go.
    saw_cancel: AtomicUsize,
    /// How many jobs have seen their cancel flag raised while they waited at the gate.
    cancelled_while_waiting: AtomicUsize,
}

impl Gate {
    fn open(&self) {
        *self.open.lock() = true;
        self.cv.notify_all();
    }
}

/// A CPU processor that waits at the gate (ignoring its cancel flag), then echoes its payload.
fn gated(gate: &Arc<Gate>) -> Processor {
    let gate = gate.clone();
    Processor::cpu_fn("gated", move |job, p: Value| {
        gate.calls.fetch_add(1, SeqCst);
        let mut open = gate.open.lock();
        let mut noted = false;
        while !*open {
            // Looks at the flag now and then only to report it; it keeps waiting regardless.
            gate.cv.wait_for(&mut open, Duration::from_millis(5));
            if job.is_cancelled() && !noted {
                noted = true;
                gate.cancelled_while_waiting.fetch_add(1, SeqCst);
            }
        }
        if job.is_cancelled() {
            gate.saw_cancel.fetch_add(1, SeqCst);
        }
        Ok(p)
    })
}

fn one_thread() -> Settings {
    let mut s = settings();
    s.cpu.threads = 1;
    s
}

#[actix_rt::test]
async fn a_cpu_message_stays_queued_until_a_thread_begins_it() {
    let gate = Arc::new(Gate::default());
    let d = builder(one_thread())
        .processor(gated(&gate))
        .route("gated", RouteSettings::new("gated"))
        .build()
        .unwrap();
    let first = d.submit(Message::new("gated", json!(1))).unwrap();
    let second = d.submit(Message::new("gated", json!(2))).unwrap();
    assert!(eventually(Duration::from_secs(5), || gate.calls.load(SeqCst) == 1).await);
    assert_eq!(d.status(first).unwrap().status, Status::Running);
    assert_eq!(d.status(second).unwrap().status, Status::Queued);
    let route = &d.routes()[0];
    assert_eq!((route.running, route.queue_depth), (1, 1));
    // A message waiting for a thread can still be cancelled; the thread then skips it.
    let third = d.submit(Message::new("gated", json!(3))).unwrap();
    assert_eq!(d.cancel(third).unwrap().status, Status::Cancelled);
    gate.open();
    for (id, n) in [(first, 1), (second, 2)] {
        let out = d.wait(id, Duration::from_secs(5)).await.unwrap();
        assert_eq!(
            (out.status, out.result.clone(), out.attempts),
            (Status::Completed, Some(json!(n)), 1)
        );
    }
    let stats = settled(&d).await;
    let k = stats.kind("gated").unwrap();
    assert_eq!((k.completed, k.cancelled), (2, 1));
    assert_eq!(
        gate.calls.load(SeqCst),
        2,
        "the cancelled message never ran"
    );
}

#[actix_rt::test]
async fn a_cpu_timeout_ends_the_message_at_the_deadline_even_if_the_processor_ignores_it() {
    let gate = Arc::new(Gate::default());
    let d = builder(one_thread())
        .processor(gated(&gate))
        .route(
            "gated",
            RouteSettings::new("gated").timeout(Duration::from_millis(50)),
        )
        .route("primes", RouteSettings::new("primes"))
        .build()
        .unwrap();
    // The outcome arrives while the processor is still blocked at the gate.
    let out = d.send(Message::new("gated", json!(1))).await.unwrap();
    assert_eq!(out.status, Status::TimedOut);
    let err = out.error.as_ref().unwrap();
    assert_eq!(
        (err.class, err.message.as_str(), out.attempts),
        (ErrorClass::Timeout, "timed out after 50 ms", 1)
    );
    assert_eq!(gate.calls.load(SeqCst), 1);
    assert_eq!(
        d.routes()[0].running,
        0,
        "a timed-out message is not running"
    );
    // Once let go, the processor sees its cancel flag, and the thread takes the next job.
    gate.open();
    let small = d
        .send(Message::new("primes", json!({"limit": 100})))
        .await
        .unwrap();
    assert_eq!(small.result, Some(json!({"count": 25})));
    assert_eq!(gate.saw_cancel.load(SeqCst), 1);
    let stats = settled(&d).await;
    assert_eq!(stats.kind("gated").unwrap().timed_out, 1);
}

#[actix_rt::test]
async fn a_cpu_run_timeout_counts_from_when_a_thread_begins_the_job() {
    let gate = Arc::new(Gate::default());
    let d = builder(one_thread())
        .processor(gated(&gate))
        .route("gated", RouteSettings::new("gated"))
        .route(
            "quick",
            RouteSettings::new("primes").timeout(Duration::from_millis(30)),
        )
        .build()
        .unwrap();
    let blocker = d.submit(Message::new("gated", json!("blocker"))).unwrap();
    assert!(eventually(Duration::from_secs(5), || gate.calls.load(SeqCst) == 1).await);
    // Waiting for the only thread for several times its run timeout does not time it out.
    let quick = d
        .submit(Message::new("quick", json!({"limit": 100})))
        .unwrap();
    actix_rt::time::sleep(Duration::from_millis(150)).await;
    assert_eq!(d.status(quick).unwrap().status, Status::Queued);
    gate.open();
    let out = d.wait(quick, Duration::from_secs(5)).await.unwrap();
    assert_eq!(
        (out.status, out.result.clone(), out.attempts),
        (Status::Completed, Some(json!({"count": 25})), 1)
    );
    assert!(out.timings.queued_ms >= 150.0, "{:?}", out.timings);
    let out = d.wait(blocker, Duration::from_secs(5)).await.unwrap();
    assert_eq!(out.status, Status::Completed);
    settled(&d).await;
}

#[actix_rt::test]
async fn a_timed_out_cpu_attempt_is_retried_only_after_its_thread_returns() {
    let gate = Arc::new(Gate::default());
    let d = builder(one_thread())
        .processor(gated(&gate))
        .route(
            "gated",
            RouteSettings::new("gated")
                .timeout(Duration::from_millis(30))
                .retries(1, Duration::from_millis(1)),
        )
        .build()
        .unwrap();
    // The first attempt holds the only thread past its timeout: it is told to stop, and its
    // retry waits until the thread returns from it, so two attempts never run at once.
    let sent = actix_rt::spawn({
        let d = d.clone();
        async move { d.send(Message::new("gated", json!(1))).await }
    });
    assert!(
        eventually(Duration::from_secs(10), || gate
            .cancelled_while_waiting
            .load(SeqCst)
            == 1)
        .await
    );
    assert_eq!(
        d.stats().kind("gated").unwrap().retried,
        0,
        "not retried yet"
    );
    assert_eq!(gate.calls.load(SeqCst), 1, "the retry waits for the thread");
    gate.open();
    let out = sent.await.unwrap().unwrap();
    assert_eq!((out.status, out.attempts), (Status::Completed, 2));
    assert_eq!(gate.calls.load(SeqCst), 2);
    assert_eq!(
        gate.saw_cancel.load(SeqCst),
        1,
        "the first attempt was told to stop"
    );
    let stats = settled(&d).await;
    let k = stats.kind("gated").unwrap();
    assert_eq!((k.completed, k.retried, k.timed_out), (1, 1, 0));
}

#[actix_rt::test]
async fn cpu_route_concurrency_caps_its_share_of_the_pool() {
    let gate = Arc::new(Gate::default());
    let d = builder(settings()) // two threads
        .processor(gated(&gate))
        .route("gated", RouteSettings::new("gated").concurrency(1))
        .route("primes", RouteSettings::new("primes"))
        .build()
        .unwrap();
    let ids: Vec<_> = (0..3)
        .map(|i| d.submit(Message::new("gated", json!(i))).unwrap())
        .collect();
    assert!(eventually(Duration::from_secs(5), || gate.calls.load(SeqCst) == 1).await);
    // The capped route holds one thread; the other thread still serves other routes.
    let small = d
        .send(Message::new("primes", json!({"limit": 100})))
        .await
        .unwrap();
    assert_eq!(small.result, Some(json!({"count": 25})));
    assert_eq!(gate.calls.load(SeqCst), 1);
    let gated = d
        .routes()
        .into_iter()
        .find(|r| r.kind.as_str() == "gated")
        .unwrap();
    assert_eq!(
        (gated.concurrency, gated.running, gated.queue_depth),
        (1, 1, 2)
    );
    gate.open();
    for (i, id) in ids.into_iter().enumerate() {
        let out = d.wait(id, Duration::from_secs(5)).await.unwrap();
        assert_eq!(
            (out.status, out.result.clone()),
            (Status::Completed, Some(json!(i)))
        );
    }
    settled(&d).await;
}
