use serde_json::json;

use crate::common::{config, start};

#[actix_rt::test]
async fn tokens_guard_every_endpoint_but_health() {
    let mut c = config();
    c.server.tokens = vec!["s3cret".into(), "other".into()];
    let s = start(c).await;
    let body = || {
        Some((
            "application/json",
            json!({"kind": "echo", "payload": 1})
                .to_string()
                .into_bytes(),
        ))
    };
    let r = s
        .request("POST", "/v1/messages?wait=true", body(), None)
        .await;
    r.assert_problem(401);
    assert_eq!(
        r.header("www-authenticate"),
        Some("Bearer realm=\"mailroom\"")
    );
    s.request("POST", "/v1/messages", body(), Some("wrong"))
        .await
        .assert_problem(401);
    s.request("GET", "/metrics", None, None)
        .await
        .assert_problem(401);
    s.request("GET", "/v1/routes", None, Some("s3cre"))
        .await
        .assert_problem(401);
    let ok = s
        .request("POST", "/v1/messages?wait=true", body(), Some("s3cret"))
        .await;
    assert_eq!(ok.body["result"], 1);
    assert_eq!(
        s.request("GET", "/v1/routes", None, Some("other"))
            .await
            .status,
        200
    );
    // The scheme's name in any case (RFC 7235), and only that scheme.
    let client = awc::Client::default();
    for (header, status) in [
        ("bearer s3cret", 200),
        ("BEARER other", 200),
        ("Basic s3cret", 401),
        ("Bearers3cret", 401),
    ] {
        let res = client
            .get(format!("{}/v1/routes", s.base))
            .insert_header(("authorization", header))
            .send()
            .await
            .unwrap();
        assert_eq!(res.status().as_u16(), status, "{header}");
    }
    assert_eq!(s.get("/healthz").await.status, 200);
    assert_eq!(s.get("/readyz").await.status, 200);
    s.stop().await;
}
