use std::time::{Duration, Instant};

use mailroom_actors::{ErrorClass, Message, Rejected, RouteSettings, Status};
use serde_json::json;

use super::common::{builder, settings, settled};

#[actix_rt::test]
async fn gather_returns_outcomes_in_order_and_one_failure_sinks_nothing() {
    let d = builder(settings())
        .builtin_routes()
        .route("chaos", RouteSettings::new("chaos"))
        .build()
        .unwrap();
    let started = Instant::now();
    let outs = d
        .gather(vec![
            Message::new("sleep", json!({"ms": 150})),
            Message::new("echo", json!("fast")),
            Message::new("chaos", json!({"mode": "error", "message": "nope"})),
            Message::new("unknown", json!({})),
            Message::new("sleep", json!({"ms": -5})),
            Message::new("sleep", json!({"ms": 150})),
            Message::new("chaos", json!({"mode": "panic", "message": "bang"})),
        ])
        .await;
    let took = started.elapsed();
    assert_eq!(outs.len(), 7);
    let ok = |i: usize| outs[i].as_ref().unwrap();
    assert_eq!(ok(0).result, Some(json!({"slept_ms": 150})));
    assert_eq!(ok(1).result, Some(json!("fast")));
    assert_eq!(ok(2).status, Status::Failed);
    assert_eq!(ok(2).error.as_ref().unwrap().message, "nope");
    assert!(matches!(outs[3], Err(Rejected::NoRoute(_))));
    assert!(matches!(outs[4], Err(Rejected::Invalid { .. })));
    assert_eq!(ok(5).result, Some(json!({"slept_ms": 150})));
    assert_eq!(ok(6).error.as_ref().unwrap().class, ErrorClass::Panic);
    // The two sleeps overlapped: each started before the other ended (from the outcomes' own
    // timings, so a busy machine cannot make this flaky).
    let span = |o: &mailroom_actors::Outcome| {
        let start = o.accepted_at_ms as f64 + o.timings.queued_ms;
        (start, start + o.timings.run_ms)
    };
    let (a, b) = (span(ok(0)), span(ok(5)));
    assert!(a.0 < b.1 && b.0 < a.1, "sleeps ran at {a:?} and {b:?}");
    assert!(took >= Duration::from_millis(150));
    settled(&d).await;
}

#[actix_rt::test]
async fn gather_of_many_echoes_keeps_every_payload_in_its_place() {
    let d = builder(settings()).builtin_routes().build().unwrap();
    let outs = d
        .gather(
            (0..5000)
                .map(|i| Message::new("echo", json!({"i": i})))
                .collect(),
        )
        .await;
    for (i, o) in outs.iter().enumerate() {
        assert_eq!(o.as_ref().unwrap().result, Some(json!({"i": i})));
    }
    let stats = settled(&d).await;
    assert_eq!(stats.kind("echo").unwrap().completed, 5000);
    assert_eq!(d.gather(vec![]).await.len(), 0);
}
