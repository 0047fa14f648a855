use serde_json::json;

use crate::common::{config, start};

#[actix_rt::test]
async fn every_bad_input_gets_its_documented_status_and_the_server_keeps_serving() {
    let mut c = config();
    c.server.max_body_bytes = 4096;
    c.server.max_batch = 3;
    c.server.max_json_depth = 8;
    let s = start(c).await;
    let j = "application/json";
    let deep = format!(
        "{{\"kind\":\"echo\",\"payload\":{}1{}}}",
        "[".repeat(10),
        "]".repeat(10)
    );
    type Case<'a> = (&'a str, &'a str, Option<(&'a str, Vec<u8>)>, u16);
    let cases: Vec<Case> = vec![
        ("malformed JSON", "/v1/messages", Some((j, b"{\"kind\": ".to_vec())), 400),
        ("empty body", "/v1/messages", Some((j, vec![])), 400),
        ("invalid UTF-8", "/v1/messages", Some((j, b"{\"kind\":\"echo\",\"payload\":\"\xff\xfe\"}".to_vec())), 400),
        ("missing kind", "/v1/messages", Some((j, br#"{"payload": 1}"#.to_vec())), 400),
        ("mistyped kind", "/v1/messages", Some((j, br#"{"kind": 5}"#.to_vec())), 400),
        ("unknown field", "/v1/messages", Some((j, br#"{"kind": "echo", "delay": 5}"#.to_vec())), 400),
        ("not an object", "/v1/messages", Some((j, b"[1,2]".to_vec())), 400),
        ("nesting too deep", "/v1/messages", Some((j, deep.into_bytes())), 400),
        ("wrong content type", "/v1/messages", Some(("text/plain", br#"{"kind":"echo"}"#.to_vec())), 415),
        ("form content type", "/v1/messages", Some(("application/x-www-form-urlencoded", b"kind=echo".to_vec())), 415),
        ("body over the limit", "/v1/messages", Some((j, format!("{{\"kind\":\"echo\",\"payload\":\"{}\"}}", "x".repeat(5000)).into_bytes())), 413),
        ("unknown kind", "/v1/messages", Some((j, br#"{"kind": "nope"}"#.to_vec())), 422),
        ("kind with bad characters", "/v1/messages", Some((j, br#"{"kind": "Echo Me"}"#.to_vec())), 422),
        ("sleep without ms", "/v1/messages", Some((j, br#"{"kind": "sleep", "payload": {}}"#.to_vec())), 422),
        ("sleep out of range", "/v1/messages", Some((j, br#"{"kind": "sleep", "payload": {"ms": 3600001}}"#.to_vec())), 422),
        ("sleep negative", "/v1/messages", Some((j, br#"{"kind": "sleep", "payload": {"ms": -1}}"#.to_vec())), 422),
        ("primes out of range", "/v1/messages", Some((j, br#"{"kind": "primes", "payload": {"limit": 10000001}}"#.to_vec())), 422),
        ("primes wrong type", "/v1/messages", Some((j, br#"{"kind": "primes", "payload": {"limit": "many"}}"#.to_vec())), 422),
        ("hash zero rounds", "/v1/messages", Some((j, br#"{"kind": "hash", "payload": {"data": "x", "rounds": 0}}"#.to_vec())), 422),
        ("hash data not text", "/v1/messages", Some((j, br#"{"kind": "hash", "payload": {"data": 1, "rounds": 1}}"#.to_vec())), 422),
        ("fetch not a URL", "/v1/messages", Some((j, br#"{"kind": "fetch", "payload": {"url": "nope"}}"#.to_vec())), 422),
        ("fetch ftp", "/v1/messages", Some((j, br#"{"kind": "fetch", "payload": {"url": "ftp://example.com/"}}"#.to_vec())), 422),
        ("fetch loopback literal", "/v1/messages", Some((j, br#"{"kind": "fetch", "payload": {"url": "http://127.0.0.1:1/"}}"#.to_vec())), 422),
        ("fetch timeout out of range", "/v1/messages", Some((j, br#"{"kind": "fetch", "payload": {"url": "http://example.com/", "timeout_ms": 300001}}"#.to_vec())), 422),
        ("delay over the limit", "/v1/messages", Some((j, br#"{"kind": "echo", "delay_ms": 86400001}"#.to_vec())), 422),
        ("timeout zero", "/v1/messages", Some((j, br#"{"kind": "echo", "timeout_ms": 0}"#.to_vec())), 422),
        ("negative delay", "/v1/messages", Some((j, br#"{"kind": "echo", "delay_ms": -5}"#.to_vec())), 400),
        ("bad wait flag", "/v1/messages?wait=maybe", Some((j, br#"{"kind": "echo"}"#.to_vec())), 400),
        ("batch over the limit", "/v1/batch", Some((j, br#"{"messages": [{"kind":"echo"},{"kind":"echo"},{"kind":"echo"},{"kind":"echo"}]}"#.to_vec())), 413),
        ("batch without messages", "/v1/batch", Some((j, br#"{"msgs": []}"#.to_vec())), 400),
        ("duplicate key", "/v1/messages", Some((j, br#"{"kind": "echo", "kind": "sleep"}"#.to_vec())), 400),
        ("fetch Host header", "/v1/messages", Some((j, br#"{"kind": "fetch", "payload": {"url": "http://example.com/", "headers": {"Host": "10.0.0.1"}}}"#.to_vec())), 422),
        ("fetch IPv4-compatible loopback", "/v1/messages", Some((j, br#"{"kind": "fetch", "payload": {"url": "http://[::127.0.0.1]/"}}"#.to_vec())), 422),
        ("fetch NAT64 loopback", "/v1/messages", Some((j, br#"{"kind": "fetch", "payload": {"url": "http://[64:ff9b::7f00:1]/"}}"#.to_vec())), 422),
        ("wait_ms over an hour", "/v1/messages?wait=true&wait_ms=3600001", Some((j, br#"{"kind": "echo"}"#.to_vec())), 400),
    ];
    for (name, path, body, status) in cases {
        let r = s.request("POST", path, body, None).await;
        assert_eq!(r.status, status, "{name}: {}", r.text);
        r.assert_problem(status);
    }
    for (name, method, path, status) in [
        (
            "unknown id",
            "GET",
            "/v1/messages/01M85WFMW30003QCEC9V9P033C",
            404,
        ),
        ("malformed id", "GET", "/v1/messages/not-an-id", 404),
        (
            "cancel unknown",
            "DELETE",
            "/v1/messages/01M85WFMW30003QCEC9V9P033C",
            404,
        ),
        ("unknown path", "GET", "/v2/nothing", 404),
        ("wrong method", "PUT", "/v1/messages", 405),
        (
            "dead letters past the page limit",
            "GET",
            "/v1/dead-letters?limit=1001",
            400,
        ),
    ] {
        let r = s.request(method, path, None, None).await;
        assert_eq!(r.status, status, "{name}: {}", r.text);
        r.assert_problem(status);
    }
    // A 405 says what the path allows.
    let r = s
        .request("PUT", "/v1/messages/01M85WFMW30003QCEC9V9P033C", None, None)
        .await;
    assert_eq!(r.header("allow"), Some("GET, DELETE"));
    // A long kind is not echoed back whole.
    let long = s
        .post("/v1/messages", json!({"kind": "k".repeat(3_000)}))
        .await;
    long.assert_problem(422);
    assert!(long.text.len() < 1000, "{} bytes", long.text.len());
    // Integral numbers are whole numbers wherever a count is asked for.
    let r = s
        .post(
            "/v1/messages?wait=true",
            json!({"kind": "sleep", "payload": {"ms": 1.0}, "delay_ms": 0.0}),
        )
        .await;
    assert_eq!(r.status, 200, "{}", r.text);
    assert_eq!(r.body["result"], json!({"slept_ms": 1}));
    // Cancelling a finished message is a conflict.
    let done = s
        .post(
            "/v1/messages?wait=true",
            json!({"kind": "echo", "payload": 1}),
        )
        .await;
    let id = done.body["id"].as_str().unwrap();
    s.delete(&format!("/v1/messages/{id}"))
        .await
        .assert_problem(409);
    // Still serving, and nothing bad was counted as accepted.
    let ok = s
        .post(
            "/v1/messages?wait=true",
            json!({"kind": "echo", "payload": "still here"}),
        )
        .await;
    assert_eq!(ok.body["result"], "still here");
    let m = s.metrics().await;
    assert_eq!(m["mailroom_messages_accepted_total{kind=\"echo\"}"], 2.0);
    assert_eq!(m["mailroom_messages_accepted_total{kind=\"sleep\"}"], 1.0);
    assert_eq!(
        m["mailroom_messages_rejected_total{kind=\"\",reason=\"no_route\"}"],
        3.0
    );
    assert_eq!(
        m["mailroom_messages_rejected_total{kind=\"sleep\",reason=\"invalid\"}"],
        3.0
    );
    // Envelopes refused before they named a routable kind: the 400s (and 413, 415) above.
    assert_eq!(
        m["mailroom_messages_rejected_total{kind=\"\",reason=\"invalid\"}"],
        14.0
    );
    s.stop().await;
}

/// An error echoes at most 64 characters of each piece of client input it quotes (README,
/// "Every error body … echoes client input … cut to 64 characters at most"): a name or value of
/// thousands of characters comes back cut, with "…", in a problem's detail and a batch item's
/// message alike.
#[actix_rt::test]
async fn errors_echo_at_most_64_characters_of_client_input() {
    let s = start(config()).await;
    let j = "application/json";
    let long = |c: char| c.to_string().repeat(3000);
    let content_type = long('d');
    /// The text echoes `c` at most 64 times in a row, and says where it was cut ("…").
    fn cut(text: &str, c: char) -> bool {
        text.contains(&format!("{c}…")) && !text.contains(&c.to_string().repeat(65))
    }
    /// What is sent (name, method, path, body), the status, and the character repeated.
    type Case<'a> = (
        &'a str,
        String,
        String,
        Option<(&'a str, Vec<u8>)>,
        u16,
        char,
    );
    let cases: Vec<Case> = vec![
        ("unknown field", "POST".into(), "/v1/messages".into(),
         Some((j, format!(r#"{{"kind":"echo","{}":1}}"#, long('a')).into_bytes())), 400, 'a'),
        ("mistyped delay", "POST".into(), "/v1/messages".into(),
         Some((j, format!(r#"{{"kind":"echo","delay_ms":"{}"}}"#, long('b')).into_bytes())), 400, 'b'),
        ("fetch method", "POST".into(), "/v1/messages".into(),
         Some((j, format!(r#"{{"kind":"fetch","payload":{{"url":"http://example.com/","method":"{} x"}}}}"#, long('C')).into_bytes())), 422, 'C'),
        ("content type", "POST".into(), "/v1/messages".into(),
         Some((&content_type, br#"{"kind":"echo"}"#.to_vec())), 415, 'd'),
        ("unknown path", "GET".into(), format!("/v1/{}", long('e')), None, 404, 'e'),
        ("unknown query field", "POST".into(), format!("/v1/messages?{}=1", long('f')),
         Some((j, br#"{"kind":"echo"}"#.to_vec())), 400, 'f'),
    ];
    for (name, method, path, body, status, c) in cases {
        let r = s.request(&method, &path, body, None).await;
        r.assert_problem(status);
        let detail = r.body["detail"].as_str().unwrap();
        assert!(cut(detail, c), "{name}: {detail}");
    }
    let batch = s
        .post(
            "/v1/batch",
            json!({"messages": [{"kind": "echo", long('g'): 1}]}),
        )
        .await;
    let message = batch.body["results"][0]["error"]["message"].as_str();
    // A backtick in a field's name ends serde's quote early: the rest is cut all the same, at
    // 256 bytes.
    let broken = s
        .request(
            "POST",
            "/v1/messages",
            Some((
                j,
                format!(r#"{{"kind":"echo","a`{}":1}}"#, long('h')).into_bytes(),
            )),
            None,
        )
        .await;
    broken.assert_problem(400);
    let detail = broken.body["detail"].as_str().unwrap();
    assert!(
        detail.contains("h…") && !detail.contains(&"h".repeat(257)),
        "{detail}"
    );
    assert!(message.is_some_and(|m| cut(m, 'g')), "{}", batch.text);
    s.stop().await;
}
