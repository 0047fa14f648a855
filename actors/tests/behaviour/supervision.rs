use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Condvar, Mutex};
use std::time::Duration;

use mailroom_actors::{
    AsyncProcessor, CpuProcessor, ErrorClass, Job, Message, ProcessError, ProcessResult, Processor,
    Rejected, RouteSettings, Status,
};
use serde_json::{json, Value};

use super::common::{builder, eventually, settings, settled};

#[actix_rt::test]
async fn panicking_async_processor_fails_the_message_and_is_restarted() {
    let d = builder(settings())
        .route("chaos", RouteSettings::new("chaos"))
        .build()
        .unwrap();
    let out = d
        .send(Message::new(
            "chaos",
            json!({"mode": "panic", "message": "boom"}),
        ))
        .await
        .unwrap();
    assert_eq!(out.status, Status::Failed);
    let err = out.error.as_ref().unwrap();
    assert_eq!(err.class, ErrorClass::Panic);
    assert_eq!(err.message, "processor panicked: boom");
    assert!(eventually(Duration::from_secs(2), || d.routes()[0].restarts == 1).await);
    let next = d
        .send(Message::new("chaos", json!({"mode": "echo", "n": 1})))
        .await
        .unwrap();
    assert_eq!(next.status, Status::Completed);
    assert_eq!(next.result, Some(json!({"mode": "echo", "n": 1})));
    let stats = settled(&d).await;
    let chaos = stats.kind("chaos").unwrap();
    assert_eq!((chaos.failed, chaos.completed, chaos.restarts), (1, 1, 1));
}

/// Counts the messages it has seen; panics on request.
struct Counter {
    seen: std::cell::Cell<u64>,
}

impl AsyncProcessor for Counter {
    fn process(
        &self,
        _job: Job,
        payload: Value,
    ) -> futures_util::future::LocalBoxFuture<'static, ProcessResult> {
        self.seen.set(self.seen.get() + 1);
        let seen = self.seen.get();
        Box::pin(async move {
            if payload == json!("panic") {
                panic!("asked to");
            }
            Ok(json!(seen))
        })
    }
}

#[actix_rt::test]
async fn a_restarted_processor_starts_with_fresh_state() {
    let d = builder(settings())
        .processor(Processor::from_factory("counter", || Counter {
            seen: 0.into(),
        }))
        .route("count", RouteSettings::new("counter"))
        .build()
        .unwrap();
    for expect in 1..=3 {
        let o = d.send(Message::new("count", json!("go"))).await.unwrap();
        assert_eq!(o.result, Some(json!(expect)));
    }
    let o = d.send(Message::new("count", json!("panic"))).await.unwrap();
    assert_eq!(o.status, Status::Failed);
    let o = d.send(Message::new("count", json!("go"))).await.unwrap();
    assert_eq!(
        o.result,
        Some(json!(1)),
        "the counter was rebuilt by the factory"
    );
}

#[actix_rt::test]
async fn messages_queued_behind_a_panic_are_not_lost() {
    let d = builder(settings())
        .route("chaos", RouteSettings::new("chaos").concurrency(1))
        .build()
        .unwrap();
    let mut msgs = vec![Message::new("chaos", json!({"mode": "panic"}))];
    msgs.extend((0..20).map(|i| Message::new("chaos", json!({"mode": "echo", "i": i}))));
    let outs = d.gather(msgs).await;
    assert_eq!(outs[0].as_ref().unwrap().status, Status::Failed);
    for (i, o) in outs[1..].iter().enumerate() {
        assert_eq!(
            o.as_ref().unwrap().result,
            Some(json!({"mode": "echo", "i": i}))
        );
    }
    settled(&d).await;
}

#[actix_rt::test]
async fn a_crash_looping_route_is_degraded_and_rejects() {
    let mut s = settings();
    s.restart.max_restarts = 3;
    s.restart.window = Duration::from_secs(30);
    let d = builder(s)
        .route("chaos", RouteSettings::new("chaos"))
        .build()
        .unwrap();
    for _ in 0..4 {
        let o = d
            .send(Message::new("chaos", json!({"mode": "panic"})))
            .await
            .unwrap();
        assert_eq!(o.status, Status::Failed);
    }
    assert!(d.routes()[0].degraded);
    let err = d
        .submit(Message::new("chaos", json!({"mode": "echo"})))
        .unwrap_err();
    let Rejected::Degraded { retry_after_ms, .. } = &err else {
        panic!("expected degraded, got {err:?}");
    };
    assert!(
        *retry_after_ms > 20_000 && *retry_after_ms <= 30_000,
        "{retry_after_ms}"
    );
    assert_eq!(d.stats().kind("chaos").unwrap().rejected.degraded, 1);
    settled(&d).await;
}

/// A barrier that gives up after a timeout, so a shrunken pool fails the test instead of hanging.
struct Gate {
    state: Mutex<usize>,
    cv: Condvar,
    n: usize,
}

impl Gate {
    fn wait(&self) -> bool {
        let mut arrived = self.state.lock().unwrap();
        *arrived += 1;
        self.cv.notify_all();
        let (guard, res) = self
            .cv
            .wait_timeout_while(arrived, Duration::from_secs(5), |a| *a < self.n)
            .unwrap();
        drop(guard);
        !res.timed_out()
    }
}

struct Fragile {
    gate: Arc<Gate>,
}

impl CpuProcessor for Fragile {
    fn process(&mut self, _job: &Job, p: Value) -> ProcessResult {
        if p == json!("panic") {
            panic!("cpu boom");
        }
        if self.gate.wait() {
            Ok(json!(format!("{:?}", std::thread::current().id())))
        } else {
            Err(ProcessError::new("the pool did not run all jobs at once"))
        }
    }
}

#[actix_rt::test]
async fn cpu_pool_keeps_all_threads_through_50_panics() {
    const THREADS: usize = 3;
    let gate = Arc::new(Gate {
        state: Mutex::new(0),
        cv: Condvar::new(),
        n: THREADS,
    });
    let built = Arc::new(AtomicUsize::new(0));
    let (g, b) = (gate.clone(), built.clone());
    let processor = Processor::cpu_factory("fragile", move || {
        b.fetch_add(1, Ordering::SeqCst);
        Fragile { gate: g.clone() }
    });
    let mut s = settings();
    s.cpu.threads = THREADS;
    // Fifty panics are the point here, not degradation: a budget they stay within.
    s.restart.max_restarts = 1000;
    s.restart.max_backoff = Duration::from_millis(1);
    let d = builder(s)
        .processor(processor)
        .route("fragile", RouteSettings::new("fragile"))
        .build()
        .unwrap();
    let panics = d
        .gather(
            (0..50)
                .map(|_| Message::new("fragile", json!("panic")))
                .collect(),
        )
        .await;
    for o in &panics {
        let o = o.as_ref().unwrap();
        assert_eq!(o.status, Status::Failed);
        assert_eq!(
            o.error.as_ref().unwrap().message,
            "processor panicked: cpu boom"
        );
    }
    let parallel = d
        .gather(
            (0..THREADS)
                .map(|_| Message::new("fragile", json!("wait")))
                .collect(),
        )
        .await;
    let mut threads: Vec<String> = parallel
        .iter()
        .map(|o| {
            let o = o.as_ref().unwrap();
            assert_eq!(o.status, Status::Completed, "{o:?}");
            o.result.as_ref().unwrap().as_str().unwrap().to_owned()
        })
        .collect();
    threads.sort();
    threads.dedup();
    assert_eq!(
        threads.len(),
        THREADS,
        "every pool thread ran one job at the same time"
    );
    assert!(
        built.load(Ordering::SeqCst) >= 50,
        "each panic rebuilt the processor"
    );
    let stats = settled(&d).await;
    assert_eq!(stats.kind("fragile").unwrap().restarts, 50);
}
