use mailroom_actors::{Dispatcher, Message, Rejected, RouteSettings, Status};
use serde_json::json;

use crate::common::{settings, settled};

#[actix_rt::test]
async fn a_full_route_rejects_and_hands_the_message_back() {
    let d = Dispatcher::builder(settings())
        .route(
            "slow",
            RouteSettings::new("sleep").capacity(5).concurrency(2),
        )
        .build()
        .unwrap();
    let mut accepted = Vec::new();
    let mut rejected = Vec::new();
    for i in 0..8 {
        match d.submit(Message::new("slow", json!({"ms": 50 + i}))) {
            Ok(id) => accepted.push(id),
            Err(r) => rejected.push(r),
        }
    }
    assert_eq!(accepted.len(), 5);
    assert_eq!(rejected.len(), 3);
    for (i, r) in rejected.into_iter().enumerate() {
        assert_eq!(r.reason(), "full");
        assert_eq!(r.to_string(), "route \"slow\" is full (capacity 5)");
        assert!(matches!(r, Rejected::QueueFull { capacity: 5, .. }));
        assert_eq!(r.into_message().payload(), &json!({"ms": 55 + i}));
    }
    let routes = d.routes();
    assert_eq!(routes[0].running + routes[0].queue_depth, 5);
    let stats = settled(&d).await;
    let slow = stats.kind("slow").unwrap();
    assert_eq!(
        (slow.accepted, slow.completed, slow.rejected.full),
        (5, 5, 3)
    );
    for id in accepted {
        assert_eq!(d.status(id).unwrap().status, Status::Completed);
    }
    // Room again once the route drained.
    assert!(d.submit(Message::new("slow", json!({"ms": 1}))).is_ok());
}

#[actix_rt::test]
async fn concurrency_caps_running_messages_and_queues_the_rest() {
    let d = Dispatcher::builder(settings())
        .route("slow", RouteSettings::new("sleep").concurrency(3))
        .build()
        .unwrap();
    let msgs = (0..9)
        .map(|_| Message::new("slow", json!({"ms": 60})))
        .collect();
    let started = std::time::Instant::now();
    let gathered = actix_rt::spawn({
        let d = d.clone();
        async move { d.gather(msgs).await }
    });
    assert!(
        crate::common::eventually(std::time::Duration::from_secs(2), || d.routes()[0].running
            == 3)
        .await
    );
    assert_eq!(d.routes()[0].queue_depth, 6);
    let outs = gathered.await.unwrap();
    assert!(outs
        .iter()
        .all(|o| o.as_ref().unwrap().status == Status::Completed));
    // At most three at once: three waves of 60 ms (timers never fire early).
    let took = started.elapsed().as_millis();
    assert!(took >= 180, "took {took} ms");
}
