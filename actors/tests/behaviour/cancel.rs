use std::time::Duration;

use mailroom_actors::{CancelError, ErrorClass, Message, RouteSettings, Status};
use serde_json::json;

use super::common::{builder, eventually, settings, settled};

#[actix_rt::test]
async fn cancelling_a_delayed_message_means_it_never_runs() {
    let d = builder(settings()).builtin_routes().build().unwrap();
    let id = d
        .call_later(
            Duration::from_millis(100),
            Message::new("echo", json!("later")),
        )
        .unwrap();
    let out = d.cancel(id).unwrap();
    assert_eq!(out.status, Status::Cancelled);
    assert_eq!(out.error.as_ref().unwrap().class, ErrorClass::Cancelled);
    actix_rt::time::sleep(Duration::from_millis(150)).await;
    assert_eq!(d.status(id).unwrap().status, Status::Cancelled);
    assert_eq!(d.status(id).unwrap().attempts, 0, "it never started");
    let stats = settled(&d).await;
    let echo = stats.kind("echo").unwrap();
    assert_eq!((echo.cancelled, echo.completed), (1, 0));
}

#[actix_rt::test]
async fn cancelling_a_queued_message_skips_it() {
    let d = builder(settings())
        .route("slow", RouteSettings::new("sleep").concurrency(1))
        .build()
        .unwrap();
    let first = d.submit(Message::new("slow", json!({"ms": 100}))).unwrap();
    let queued = d.submit(Message::new("slow", json!({"ms": 100}))).unwrap();
    assert!(
        eventually(Duration::from_secs(2), || d.status(first).unwrap().status
            == Status::Running)
        .await
    );
    assert_eq!(d.status(queued).unwrap().status, Status::Queued);
    assert_eq!(d.cancel(queued).unwrap().status, Status::Cancelled);
    assert_eq!(
        d.cancel(first),
        Err(CancelError::TooLate {
            id: first,
            status: Status::Running
        })
    );
    let stats = settled(&d).await;
    let slow = stats.kind("slow").unwrap();
    assert_eq!((slow.completed, slow.cancelled), (1, 1));
    assert_eq!(d.status(first).unwrap().status, Status::Completed);
    assert_eq!(
        d.cancel(first),
        Err(CancelError::TooLate {
            id: first,
            status: Status::Completed
        })
    );
    let unknown = mailroom_actors::MessageId::next();
    assert_eq!(d.cancel(unknown), Err(CancelError::Unknown(unknown)));
}

#[actix_rt::test]
async fn a_waiter_sees_the_cancellation() {
    let d = builder(settings()).builtin_routes().build().unwrap();
    let id = d
        .call_later(Duration::from_secs(60), Message::new("echo", json!(1)))
        .unwrap();
    let waiting = actix_rt::spawn({
        let d = d.clone();
        async move { d.wait(id, Duration::from_secs(10)).await }
    });
    actix_rt::time::sleep(Duration::from_millis(20)).await;
    d.cancel(id).unwrap();
    let seen = waiting.await.unwrap().unwrap();
    assert_eq!(seen.status, Status::Cancelled);
    // wait() on a message that is not finished returns its current state when time is up.
    let later = d
        .call_later(Duration::from_secs(60), Message::new("echo", json!(2)))
        .unwrap();
    let now = d.wait(later, Duration::from_millis(20)).await.unwrap();
    assert_eq!(now.status, Status::Delayed);
    d.cancel(later).unwrap();
}

#[actix_rt::test]
async fn the_ledger_tells_delayed_from_queued_and_times_only_what_ran() {
    let d = builder(settings())
        .route("slow", RouteSettings::new("sleep").concurrency(1))
        .build()
        .unwrap();
    let running = d.submit(Message::new("slow", json!({"ms": 200}))).unwrap();
    assert!(
        eventually(Duration::from_secs(5), || d.status(running).unwrap().status
            == Status::Running)
        .await
    );
    d.submit(Message::new("slow", json!({"ms": 1}))).unwrap();
    let later = d
        .call_later(
            Duration::from_secs(3600),
            Message::new("slow", json!({"ms": 1})),
        )
        .unwrap();
    // Counted as delayed once its router holds it (a mailbox hop after acceptance).
    assert!(
        eventually(Duration::from_secs(5), || d
            .stats()
            .kind("slow")
            .unwrap()
            .delayed
            == 1)
        .await
    );
    let s = d.stats();
    let slow = s.kind("slow").unwrap();
    assert_eq!(
        (slow.running, slow.queued(), slow.delayed, slow.queue_depth),
        (1, 1, 1, 2)
    );
    let route = d
        .routes()
        .into_iter()
        .find(|r| r.kind.as_str() == "slow")
        .unwrap();
    assert_eq!((route.queue_depth, route.delayed), (2, 1));
    d.cancel(later).unwrap();
    // Its router lets go of it a mailbox hop after the cancel.
    assert!(
        eventually(Duration::from_secs(5), || d
            .stats()
            .kind("slow")
            .unwrap()
            .delayed
            == 0)
        .await
    );
    let stats = settled(&d).await;
    let slow = stats.kind("slow").unwrap();
    assert_eq!((slow.completed, slow.cancelled, slow.delayed), (2, 1, 0));
    assert_eq!(slow.duration.count, 3, "every finished message");
    assert_eq!(slow.run_time.count, 2, "the cancelled one never ran");
    assert!(
        slow.run_time.sum_seconds >= 0.2,
        "the 200 ms sleep ran at least 200 ms: {}",
        slow.run_time.sum_seconds
    );
}
