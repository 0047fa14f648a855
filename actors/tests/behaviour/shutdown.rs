use std::time::Duration;

use mailroom_actors::{ErrorClass, Message, Rejected, RouteSettings, Status};
use serde_json::json;

use super::common::{builder, settings, settled, JOURNAL};

#[actix_rt::test]
async fn shutdown_drains_what_it_can_and_leaves_every_message_terminal() {
    let d = builder(settings())
        .builtin_routes()
        .route("slow", RouteSettings::new("sleep").concurrency(2))
        .build()
        .unwrap();
    let quick: Vec<_> = (0..20)
        .map(|i| {
            d.submit(Message::new("sleep", json!({"ms": 20 + i})))
                .unwrap()
        })
        .collect();
    let due_soon = d
        .call_later(
            Duration::from_millis(50),
            Message::new("echo", json!("soon")),
        )
        .unwrap();
    let due_late = d
        .call_later(Duration::from_secs(30), Message::new("echo", json!("late")))
        .unwrap();
    // Two run for 5 s (past the deadline); the third waits behind them.
    let stuck: Vec<_> = (0..3)
        .map(|_| d.submit(Message::new("slow", json!({"ms": 5000}))).unwrap())
        .collect();

    let report = d.shutdown(Duration::from_millis(400)).await;

    for id in &quick {
        assert_eq!(d.status(*id).unwrap().status, Status::Completed);
    }
    assert_eq!(d.status(due_soon).unwrap().status, Status::Completed);
    let mut expected = stuck.clone();
    expected.push(due_late);
    expected.sort();
    assert_eq!(report.drained, 21);
    let err = d.submit(Message::new("echo", json!(1))).unwrap_err();
    assert!(matches!(err, Rejected::ShuttingDown(_)));
    if JOURNAL {
        // With a journal nothing is cancelled: what could not finish stays stored, to run after
        // the next start (see tests/recovery.rs).
        assert_eq!(report.kept, expected);
        assert!(report.unfinished.is_empty());
        assert_eq!(d.status(due_late).unwrap().status, Status::Delayed);
        for id in &stuck {
            let o = d.status(*id).unwrap();
            assert!(
                matches!(o.status, Status::Running | Status::Queued),
                "{o:?}"
            );
        }
        assert_eq!(d.stats().kind("slow").unwrap().cancelled, 0);
        return;
    }
    let late = d.status(due_late).unwrap();
    assert_eq!(late.status, Status::Cancelled);
    assert_eq!(late.error.as_ref().unwrap().class, ErrorClass::Shutdown);
    for id in &stuck {
        let o = d.status(*id).unwrap();
        assert_eq!(o.status, Status::Cancelled, "{o:?}");
        assert_eq!(o.error.as_ref().unwrap().class, ErrorClass::Shutdown);
    }
    assert_eq!(report.unfinished, expected);
    assert!(report.kept.is_empty());

    let stats = settled(&d).await;
    assert_eq!(stats.in_flight(), 0);
    assert_eq!(stats.kind("sleep").unwrap().completed, 20);
    assert_eq!(stats.kind("slow").unwrap().cancelled, 3);
}
