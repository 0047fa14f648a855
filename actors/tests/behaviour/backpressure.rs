use std::sync::atomic::Ordering::SeqCst;
use std::sync::Arc;
use std::time::Duration;

use mailroom_actors::{Message, Rejected, RouteSettings, Status};
use serde_json::json;

use super::common::{builder, eventually, gated, settings, settled, Gate};

#[actix_rt::test]
async fn a_full_route_rejects_and_hands_the_message_back() {
    let gate = Arc::new(Gate::default());
    let d = builder(settings())
        .processor(gated(&gate))
        .route(
            "slow",
            RouteSettings::new("gated").capacity(5).concurrency(2),
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
    // Two run (the concurrency), three wait; none can finish before the gate opens.
    assert!(
        eventually(Duration::from_secs(10), || {
            let r = &d.routes()[0];
            (r.running, r.queue_depth) == (2, 3)
        })
        .await,
        "{:?}",
        d.routes()
    );
    gate.open();
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
    let gate = Arc::new(Gate::default());
    let d = builder(settings())
        .processor(gated(&gate))
        .route("slow", RouteSettings::new("gated").concurrency(3))
        .build()
        .unwrap();
    let msgs = (0..9).map(|i| Message::new("slow", json!(i))).collect();
    let gathered = actix_rt::spawn({
        let d = d.clone();
        async move { d.gather(msgs).await }
    });
    assert!(
        eventually(Duration::from_secs(10), || {
            let r = &d.routes()[0];
            (r.running, r.queue_depth) == (3, 6)
        })
        .await,
        "{:?}",
        d.routes()
    );
    assert_eq!(
        gate.running.load(SeqCst),
        3,
        "three at the gate, six queued"
    );
    gate.open();
    let outs = gathered.await.unwrap();
    assert!(outs
        .iter()
        .all(|o| o.as_ref().unwrap().status == Status::Completed));
    assert_eq!(gate.most.load(SeqCst), 3, "never more than three at once");
}

#[actix_rt::test]
async fn one_client_cannot_take_a_whole_route() {
    let d = builder(settings())
        .builtin_routes()
        .route(
            "shared",
            RouteSettings::new("echo").capacity(10).max_per_client(3),
        )
        .build()
        .unwrap();
    let later = |client: &str| {
        Message::new("shared", json!(client))
            .delay(Duration::from_secs(3600))
            .client(client.to_owned())
    };
    let a: Vec<_> = (0..3).map(|_| d.submit(later("a")).unwrap()).collect();
    let r = d.submit(later("a")).unwrap_err();
    assert!(matches!(r, Rejected::ClientShareFull { limit: 3, .. }));
    assert_eq!(r.reason(), "client_share");
    assert_eq!(
        r.to_string(),
        "client share of route \"shared\" is full (3 unfinished messages per client)"
    );
    assert_eq!(r.into_message().payload(), &json!("a"), "handed back");
    // Another client, and messages without a client, still get in.
    for _ in 0..3 {
        d.submit(later("b")).unwrap();
    }
    d.submit(Message::new("shared", json!(0)).delay(Duration::from_secs(3600)))
        .unwrap();
    // A message that ends gives its client's place back (once its envelope is dropped: for a
    // cancelled delayed message, on the router's next turn).
    d.cancel(a[0]).unwrap();
    let mut again = None;
    assert!(
        eventually(Duration::from_secs(10), || {
            again = d.submit(later("a")).ok();
            again.is_some()
        })
        .await
    );
    assert!(d.stats().kind("shared").unwrap().rejected.client_share >= 1);
    d.shutdown(Duration::ZERO).await;
}
