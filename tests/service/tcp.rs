use std::time::Duration;

use mailroom::config::TcpConfig;
use serde_json::{json, Value};
use tokio::io::{AsyncBufReadExt, AsyncWriteExt, BufReader};
use tokio::net::tcp::{OwnedReadHalf, OwnedWriteHalf};

use crate::common::{config, start};

/// The next line, within 10 s.
async fn next_line(lines: &mut tokio::io::Lines<BufReader<OwnedReadHalf>>) -> Option<String> {
    actix_rt::time::timeout(Duration::from_secs(10), lines.next_line())
        .await
        .expect("an answer within 10 s")
        .unwrap()
}

/// Sends `input`, closes the sending side, and reads every answer line until the server closes.
async fn exchange(read: OwnedReadHalf, mut write: OwnedWriteHalf, input: &str) -> Vec<Value> {
    write.write_all(input.as_bytes()).await.unwrap();
    write.shutdown().await.unwrap();
    let mut lines = BufReader::new(read).lines();
    let mut answers = Vec::new();
    while let Some(line) = actix_rt::time::timeout(Duration::from_secs(10), lines.next_line())
        .await
        .unwrap()
        .unwrap()
    {
        answers.push(serde_json::from_str::<Value>(&line).unwrap());
    }
    answers
}

#[actix_rt::test]
async fn tcp_lines_get_one_answer_each_and_bad_lines_do_not_close_the_connection() {
    let mut c = config();
    c.sources.tcp = Some(TcpConfig::on("127.0.0.1:0"));
    c.server.max_body_bytes = 2048;
    let s = start(c).await;
    let stream = tokio::net::TcpStream::connect(s.tcp.unwrap())
        .await
        .unwrap();
    let (read, write) = stream.into_split();
    let long = format!(
        "{{\"kind\":\"echo\",\"payload\":\"{}\"}}\n",
        "x".repeat(3000)
    );
    // "slow" is held (far delayed) until the test cancels it, after every other answer has
    // arrived: it was sent first and is answered last, so answers come as messages finish.
    let input = format!(
        "{}\n{}\nnot json at all\n{}\n{long}{}\n\n{}\n",
        json!({"kind": "echo", "payload": "held", "delay_ms": 3_600_000, "key": "held-1", "ref": "slow"}),
        json!({"kind": "echo", "payload": {"n": 1}, "ref": 1}),
        json!({"kind": "nope", "ref": "unknown"}),
        json!({"kind": "sleep", "payload": {"ms": "x"}, "ref": "bad"}),
        json!({"kind": "echo", "payload": "last", "ref": [1, 2]}),
    );
    let (answers, slow) = {
        let mut write = write;
        write.write_all(input.as_bytes()).await.unwrap();
        write.shutdown().await.unwrap();
        let mut lines = BufReader::new(read).lines();
        let mut answers = Vec::new();
        for _ in 0..6 {
            answers.push(
                serde_json::from_str::<Value>(&next_line(&mut lines).await.unwrap()).unwrap(),
            );
        }
        // The held message's id, by its idempotency key; cancelling it finishes it.
        let dup = s
            .post("/v1/messages", json!({"kind": "echo", "key": "held-1"}))
            .await;
        assert_eq!(dup.status, 202, "{}", dup.text);
        let id = dup.body["id"].as_str().unwrap().to_owned();
        let cancel = s.delete(&format!("/v1/messages/{id}")).await;
        assert_eq!(cancel.status, 200, "{}", cancel.text);
        let slow: Value = serde_json::from_str(&next_line(&mut lines).await.unwrap()).unwrap();
        assert!(
            next_line(&mut lines).await.is_none(),
            "seven answers, then the server closes"
        );
        answers.push(slow.clone());
        (answers, slow)
    };
    assert_eq!(answers.len(), 7, "{answers:#?}");
    let by_ref = |r: Value| {
        answers
            .iter()
            .find(|a| a["ref"] == r)
            .unwrap_or_else(|| panic!("no answer for {r}"))
    };
    assert_eq!(
        slow["ref"], "slow",
        "the held message is answered last: {slow}"
    );
    assert_eq!(slow["status"], "cancelled");
    assert_eq!(by_ref(json!(1))["result"], json!({"n": 1}));
    assert_eq!(by_ref(json!(1))["source"], "tcp");
    assert_eq!(by_ref(json!("unknown"))["code"], 422);
    assert_eq!(by_ref(json!("bad"))["status"], "rejected");
    assert_eq!(by_ref(json!([1, 2]))["result"], "last");
    let rejected_without_ref: Vec<_> = answers.iter().filter(|a| a["ref"].is_null()).collect();
    assert_eq!(
        rejected_without_ref.len(),
        2,
        "the non-JSON line and the over-long line"
    );
    assert!(rejected_without_ref.iter().any(|a| a["code"] == 413));
    assert!(rejected_without_ref.iter().any(|a| a["code"] == 400));
    s.stop().await;
}

#[actix_rt::test]
async fn many_tcp_connections_at_once() {
    let mut c = config();
    c.sources.tcp = Some(TcpConfig::on("127.0.0.1:0"));
    let s = start(c).await;
    let addr = s.tcp.unwrap();
    let clients = (0..20).map(|conn| async move {
        let stream = tokio::net::TcpStream::connect(addr).await.unwrap();
        let (read, mut write) = stream.into_split();
        for i in 0..10 {
            let line = json!({"kind": "echo", "payload": [conn, i], "ref": i});
            write
                .write_all(format!("{line}\n").as_bytes())
                .await
                .unwrap();
        }
        write.shutdown().await.unwrap();
        let mut lines = BufReader::new(read).lines();
        let mut n = 0;
        while let Some(line) = lines.next_line().await.unwrap() {
            let v: Value = serde_json::from_str(&line).unwrap();
            assert_eq!(v["result"], json!([conn, v["ref"]]));
            n += 1;
        }
        n
    });
    let counts = futures_util::future::join_all(clients).await;
    assert!(counts.iter().all(|&n| n == 10), "{counts:?}");
    assert_eq!(s.ledger_identity("echo").await, 200.0);
    s.stop().await;
}

#[actix_rt::test]
async fn tcp_needs_the_servers_token_and_answers_with_the_outcome_past_max_wait() {
    let mut c = config();
    c.sources.tcp = Some(TcpConfig::on("127.0.0.1:0"));
    c.server.tokens = vec!["s3cret".into()];
    c.server.max_wait_ms = 50; // caps ?wait=true on HTTP, not TCP answers
    let s = start(c).await;
    let stream = tokio::net::TcpStream::connect(s.tcp.unwrap())
        .await
        .unwrap();
    let (read, write) = stream.into_split();
    let input = format!(
        "{}\n{}\n{}\n{}\n",
        json!({"kind": "echo", "payload": 1, "ref": "none"}),
        json!({"kind": "echo", "payload": 2, "ref": "wrong", "token": "s3cre"}),
        json!({"kind": "echo", "payload": 3, "ref": "number", "token": 7}),
        json!({"kind": "sleep", "payload": {"ms": 300}, "ref": "slow", "token": "s3cret"}),
    );
    let answers = exchange(read, write, &input).await;
    assert_eq!(answers.len(), 4, "{answers:#?}");
    for (r, what) in [
        ("none", "missing"),
        ("wrong", "wrong"),
        ("number", "missing"),
    ] {
        let a = answers.iter().find(|a| a["ref"] == r).unwrap();
        assert_eq!(a["status"], "rejected", "{a}");
        assert_eq!(a["code"], 401, "{a}");
        assert_eq!(a["error"]["class"], "unauthorized", "{a}");
        assert!(
            a["error"]["message"]
                .as_str()
                .unwrap()
                .starts_with(&format!("{what} token")),
            "{a}"
        );
    }
    let slow = answers.iter().find(|a| a["ref"] == "slow").unwrap();
    assert_eq!(slow["status"], "completed", "{slow}");
    assert_eq!(slow["result"], json!({"slept_ms": 300}));
    assert!(slow.get("token").is_none(), "the token is never echoed");
    // Nothing without a valid token was accepted.
    let m = s.request("GET", "/metrics", None, Some("s3cret")).await;
    assert_eq!(m.status, 200);
    assert!(
        m.text
            .contains("mailroom_messages_accepted_total{kind=\"echo\"} 0\n"),
        "{}",
        m.text
    );
    assert!(
        m.text
            .contains("mailroom_messages_accepted_total{kind=\"sleep\"} 1\n"),
        "{}",
        m.text
    );
    s.stop().await;
}

#[actix_rt::test]
async fn one_tcp_client_cannot_hold_every_connection() {
    let mut c = config();
    c.sources.tcp = Some(TcpConfig {
        max_connections: 10,
        max_connections_per_client: 2,
        ..TcpConfig::on("127.0.0.1:0")
    });
    let s = start(c).await;
    let addr = s.tcp.unwrap();
    // A connection answered once: the source holds it (and has counted it).
    let answered = async || {
        let stream = tokio::net::TcpStream::connect(addr).await.unwrap();
        let (read, mut write) = stream.into_split();
        let mut lines = BufReader::new(read).lines();
        write
            .write_all(b"{\"kind\":\"echo\",\"payload\":1,\"ref\":1}\n")
            .await
            .unwrap();
        let line = next_line(&mut lines).await;
        (lines, write, line)
    };
    let mut held = Vec::new();
    for _ in 0..2 {
        let (lines, write, line) = answered().await;
        let v: Value = serde_json::from_str(&line.unwrap()).unwrap();
        assert_eq!(
            (v["status"].as_str(), v["ref"].as_i64()),
            (Some("completed"), Some(1))
        );
        held.push((lines, write));
    }
    // A third from the same address: one line saying why, then closed.
    let stream = tokio::net::TcpStream::connect(addr).await.unwrap();
    let (read, write) = stream.into_split();
    let answers = exchange(read, write, "").await;
    assert_eq!(
        answers,
        vec![json!({"ref": null, "status": "rejected", "code": 429,
            "error": {"class": "client_share",
                      "message": "too many connections from this client \
                                  (sources.tcp.max_connections_per_client = 2); close one first"}})]
    );
    // Once one of the two closes, its place is given back.
    drop(held.pop());
    let deadline = std::time::Instant::now() + Duration::from_secs(30);
    loop {
        let (_, _, line) = answered().await;
        let v: Value = serde_json::from_str(&line.unwrap()).unwrap();
        if v["status"] == "completed" {
            break;
        }
        assert_eq!(v["code"], 429, "{v}");
        assert!(
            std::time::Instant::now() < deadline,
            "the place was never given back"
        );
        actix_rt::time::sleep(Duration::from_millis(20)).await;
    }
}
