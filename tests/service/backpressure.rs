use std::collections::BTreeMap;

use mailroom::config::RouteConfig;
use serde_json::json;

use crate::common::{config, start};

#[actix_rt::test]
async fn a_full_route_answers_503_with_retry_after_and_every_accepted_message_completes() {
    let mut c = config();
    c.routes = BTreeMap::from([(
        "slow".to_owned(),
        RouteConfig {
            processor: Some("sleep".into()),
            capacity: Some(10),
            concurrency: Some(4),
            backoff_ms: 100,
            ..Default::default()
        },
    )]);
    let s = start(c).await;
    let mut accepted = Vec::new();
    let mut full = 0;
    for _ in 0..25 {
        let r = s
            .post(
                "/v1/messages",
                json!({"kind": "slow", "payload": {"ms": 100}}),
            )
            .await;
        match r.status {
            202 => accepted.push(r.body["id"].as_str().unwrap().to_owned()),
            503 => {
                r.assert_problem(503);
                assert_eq!(r.header("retry-after"), Some("1"));
                assert_eq!(r.body["detail"], "route \"slow\" is full (capacity 10)");
                full += 1;
            }
            other => panic!("unexpected {other}: {}", r.text),
        }
    }
    assert_eq!(accepted.len(), 10);
    assert_eq!(full, 15);
    s.ledger_identity("slow").await;
    for id in &accepted {
        let r = s.get(&format!("/v1/messages/{id}?wait_ms=10000")).await;
        assert_eq!(r.body["status"], "completed", "{}", r.text);
    }
    let m = s.metrics().await;
    assert_eq!(
        m["mailroom_messages_rejected_total{kind=\"slow\",reason=\"full\"}"],
        15.0
    );
    assert_eq!(
        m["mailroom_messages_finished_total{kind=\"slow\",status=\"completed\"}"],
        10.0
    );
    assert_eq!(m["mailroom_messages_in_flight{kind=\"slow\"}"], 0.0);
    assert_eq!(s.ledger_identity("slow").await, 10.0);
    // Room again.
    assert_eq!(
        s.post(
            "/v1/messages",
            json!({"kind": "slow", "payload": {"ms": 1}})
        )
        .await
        .status,
        202
    );
    s.stop().await;
}
