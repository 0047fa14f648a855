use std::collections::BTreeMap;
use std::time::Duration;

use actix_web::{web, App, HttpResponse, HttpServer};
use mailroom::config::RouteConfig;
use mailroom_actors::StorageError;
use serde_json::json;

use crate::common::{config, eventually, start};

#[actix_rt::test]
async fn each_builtin_kind_answers_its_exact_result_over_http() {
    let upstream = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let port = upstream.local_addr().unwrap().port();
    actix_rt::spawn(
        HttpServer::new(|| {
            App::new().route(
                "/hi",
                web::get().to(|| async { HttpResponse::Ok().json(json!({"hi": true})) }),
            )
        })
        .workers(1)
        .disable_signals()
        .listen(upstream)
        .unwrap()
        .run(),
    );
    // With HTTP workers running the async routes (the default), and with every message handed
    // to the I/O arbiter.
    for on_http_workers in [true, false] {
        let mut c = config();
        c.fetch.allow_hosts = vec!["127.0.0.1".into()];
        c.pools.io.on_http_workers = on_http_workers;
        let s = start(c).await;
        let cases = [
            (
                json!({"kind": "echo", "payload": {"a": [1, "x"]}}),
                json!({"a": [1, "x"]}),
            ),
            (
                json!({"kind": "sleep", "payload": {"ms": 20}}),
                json!({"slept_ms": 20}),
            ),
            (
                json!({"kind": "primes", "payload": {"limit": 10000}}),
                json!({"count": 1229}),
            ),
            (
                json!({"kind": "hash", "payload": {"data": "abc", "rounds": 1}}),
                json!({"sha256": "ba7816bf8f01cfea414140de5dae2223b00361a396177a9cb410ff61f20015ad"}),
            ),
        ];
        for (body, result) in cases {
            let r = s.post("/v1/messages?wait=true", body.clone()).await;
            assert_eq!(r.status, 200, "{}", r.text);
            assert_eq!(r.body["status"], "completed");
            assert_eq!(
                r.body["result"], result,
                "{body} (on_http_workers = {on_http_workers})"
            );
            assert_eq!(r.body["source"], "http");
            assert_eq!(r.body["attempts"], 1);
        }
        let r = s
            .post(
                "/v1/messages?wait=true",
                json!({"kind": "fetch", "payload": {"url": format!("http://127.0.0.1:{port}/hi")}}),
            )
            .await;
        assert_eq!(r.body["status"], "completed", "{}", r.text);
        assert_eq!(r.body["result"]["status"], 200);
        assert_eq!(r.body["result"]["body"], json!({"hi": true}));
        s.stop().await;
    }
}

#[actix_rt::test]
async fn submit_then_poll_long_poll_and_cancel() {
    let s = start(config()).await;
    let r = s
        .post(
            "/v1/messages",
            json!({"kind": "sleep", "payload": {"ms": 100}}),
        )
        .await;
    assert_eq!(r.status, 202);
    assert!(
        ["queued", "running"].contains(&r.body["status"].as_str().unwrap()),
        "{}",
        r.text
    );
    let id = r.body["id"].as_str().unwrap().to_owned();
    assert_eq!(
        r.header("location"),
        Some(format!("/v1/messages/{id}").as_str())
    );

    let now = s.get(&format!("/v1/messages/{id}")).await;
    assert_eq!(now.status, 200);
    assert!(["queued", "running"].contains(&now.body["status"].as_str().unwrap()));
    let done = s.get(&format!("/v1/messages/{id}?wait_ms=5000")).await;
    assert_eq!(done.body["status"], "completed");
    assert_eq!(done.body["result"], json!({"slept_ms": 100}));
    assert!(done.body["timings"]["run_ms"].as_f64().unwrap() >= 100.0);

    // A delayed message can be cancelled; a finished one cannot.
    let r = s
        .post(
            "/v1/messages",
            json!({"kind": "echo", "payload": 1, "delay_ms": 60000}),
        )
        .await;
    assert_eq!(r.body["status"], "delayed");
    let delayed = r.body["id"].as_str().unwrap().to_owned();
    let c = s.delete(&format!("/v1/messages/{delayed}")).await;
    assert_eq!(c.status, 200);
    assert_eq!(c.body["status"], "cancelled");
    assert_eq!(c.body["error"]["class"], "cancelled");
    s.delete(&format!("/v1/messages/{id}"))
        .await
        .assert_problem(409);
    s.delete(&format!("/v1/messages/{delayed}"))
        .await
        .assert_problem(409);

    // ?wait=true with a short wait answers 202 with the current status.
    let r = s
        .post(
            "/v1/messages?wait=true&wait_ms=20",
            json!({"kind": "sleep", "payload": {"ms": 500}}),
        )
        .await;
    assert_eq!(r.status, 202);
    assert_eq!(r.body["status"], "running");
    s.stop().await;
}

#[actix_rt::test]
async fn batch_gathers_in_order_and_a_bad_item_sinks_nothing() {
    let s = start(config()).await;
    let r = s
        .post(
            "/v1/batch",
            json!({"wait": true, "messages": [
                {"kind": "sleep", "payload": {"ms": 30}},
                {"kind": "nope"},
                {"kind": "echo", "payload": "x"},
                {"payload": 1},
                {"kind": "sleep", "payload": {"ms": "soon"}},
                17,
                {"kind": "primes", "payload": {"limit": 100}},
            ]}),
        )
        .await;
    assert_eq!(r.status, 200, "{}", r.text);
    let items = r.body["results"].as_array().unwrap();
    assert_eq!(items.len(), 7);
    assert_eq!(items[0]["result"], json!({"slept_ms": 30}));
    assert_eq!(
        (items[1]["status"].clone(), items[1]["code"].clone()),
        (json!("rejected"), json!(422))
    );
    assert_eq!(items[1]["error"]["class"], "no_route");
    assert_eq!(items[2]["result"], "x");
    assert_eq!(
        (items[3]["status"].clone(), items[3]["code"].clone()),
        (json!("rejected"), json!(400))
    );
    assert_eq!(items[4]["code"], 422);
    assert_eq!(items[5]["code"], 400);
    assert_eq!(items[6]["result"], json!({"count": 25}));

    let r = s
        .post(
            "/v1/batch",
            json!({"messages": [{"kind": "echo", "payload": 1}]}),
        )
        .await;
    assert!(r.body["results"][0]["status"].is_string());
    assert!(r.body["results"][0]["id"].is_string());
    s.stop().await;
}

#[actix_rt::test]
async fn routes_metrics_health_and_openapi_describe_the_service() {
    let s = start(config()).await;
    let r = s.get("/v1/routes").await;
    let kinds: Vec<&str> = r.body["routes"]
        .as_array()
        .unwrap()
        .iter()
        .map(|r| r["kind"].as_str().unwrap())
        .collect();
    assert_eq!(kinds, ["echo", "fetch", "hash", "primes", "sleep"]);
    let primes = &r.body["routes"][3];
    assert_eq!(
        (primes["pool"].clone(), primes["processor"].clone()),
        (json!("cpu"), json!("primes"))
    );

    assert_eq!(s.get("/healthz").await.body, json!({"status": "ok"}));
    assert_eq!(s.get("/readyz").await.body, json!({"ready": true}));

    let doc = s.get("/openapi.json").await;
    assert_eq!(doc.status, 200);
    assert!(doc.body["openapi"].as_str().unwrap().starts_with("3."));
    for path in [
        "/v1/messages",
        "/v1/batch",
        "/v1/messages/{id}",
        "/v1/routes",
        "/v1/dead-letters",
        "/v1/dead-letters/{id}/retry",
        "/metrics",
        "/healthz",
        "/readyz",
        "/openapi.json",
    ] {
        assert!(doc.body["paths"][path].is_object(), "{path} is documented");
    }
    assert!(doc.body["components"]["schemas"]["Outcome"].is_object());

    for i in 0..3 {
        s.post(
            "/v1/messages?wait=true",
            json!({"kind": "echo", "payload": i}),
        )
        .await;
    }
    let m = s.metrics().await;
    assert_eq!(m["mailroom_messages_accepted_total{kind=\"echo\"}"], 3.0);
    assert_eq!(
        m["mailroom_messages_finished_total{kind=\"echo\",status=\"completed\"}"],
        3.0
    );
    assert_eq!(
        m["mailroom_message_duration_seconds_count{kind=\"echo\"}"],
        3.0
    );
    assert_eq!(
        m["mailroom_message_duration_seconds_bucket{kind=\"echo\",le=\"+Inf\"}"],
        3.0
    );
    assert!(m.contains_key("mailroom_processor_restarts_total{processor=\"echo\"}"));
    assert!(m.contains_key("mailroom_queue_depth{kind=\"sleep\"}"));
    assert!(m.contains_key("mailroom_thread_stalls_total"));
    s.ledger_identity("echo").await;
    s.stop().await;
}

#[actix_rt::test]
async fn a_chaos_panic_fails_the_message_and_the_route_keeps_serving() {
    let mut c = config();
    c.routes = BTreeMap::from([
        (
            "chaos".to_owned(),
            RouteConfig {
                processor: Some("chaos".into()),
                backoff_ms: 100,
                ..Default::default()
            },
        ),
        (
            "flaky".to_owned(),
            RouteConfig {
                processor: Some("chaos".into()),
                retries: 1,
                backoff_ms: 10,
                ..Default::default()
            },
        ),
    ]);
    let s = start(c).await;
    let r = s
        .post(
            "/v1/messages?wait=true",
            json!({"kind": "chaos", "payload": {"mode": "panic", "message": "kaboom"}}),
        )
        .await;
    assert_eq!(r.status, 200, "a failed message is not a failed request");
    assert_eq!(r.body["status"], "failed");
    assert_eq!(
        r.body["error"],
        json!({"class": "panic", "message": "processor panicked: kaboom"})
    );
    let ok = s
        .post(
            "/v1/messages?wait=true",
            json!({"kind": "chaos", "payload": {"mode": "echo", "n": 2}}),
        )
        .await;
    assert_eq!(ok.body["status"], "completed");
    assert_eq!(ok.body["result"], json!({"mode": "echo", "n": 2}));
    assert!(
        eventually(Duration::from_secs(2), || async {
            s.get("/v1/routes").await.body["routes"][0]["restarts"] == 1
        })
        .await
    );
    let m = s.metrics().await;
    assert_eq!(
        m["mailroom_processor_restarts_total{processor=\"chaos\"}"],
        1.0
    );

    // Retries exhausted → dead letter → replay over HTTP.
    let dead = s
        .post(
            "/v1/messages?wait=true",
            json!({"kind": "flaky", "payload": {"mode": "error", "message": "no"}}),
        )
        .await;
    assert_eq!(dead.body["status"], "dead");
    assert_eq!(dead.body["attempts"], 2);
    let id = dead.body["id"].as_str().unwrap().to_owned();
    let list = s.get("/v1/dead-letters").await;
    let dl = &list.body["dead_letters"][0];
    assert_eq!(dl["id"], id.as_str());
    assert_eq!(dl["payload"], json!({"mode": "error", "message": "no"}));
    assert_eq!(dl["errors"].as_array().unwrap().len(), 2);
    let replay = s
        .request("POST", &format!("/v1/dead-letters/{id}/retry"), None, None)
        .await;
    assert_eq!(replay.status, 202, "{}", replay.text);
    assert_eq!(replay.body["replay_of"], id.as_str());
    let new_id = replay.body["id"].as_str().unwrap();
    assert_ne!(new_id, id);
    let again = s.get(&format!("/v1/messages/{new_id}?wait_ms=5000")).await;
    assert_eq!(again.body["status"], "dead");
    assert_eq!(again.body["replay_of"], id.as_str());
    s.request(
        "POST",
        "/v1/dead-letters/01M85WFMW30003QCEC9V9P033C/retry",
        None,
        None,
    )
    .await
    .assert_problem(404);
    s.ledger_identity("chaos").await;
    s.ledger_identity("flaky").await;
    s.stop().await;
}

#[actix_rt::test]
async fn an_idempotency_key_returns_the_first_message() {
    let s = start(config()).await;
    let a = s
        .post(
            "/v1/messages",
            json!({"kind": "sleep", "payload": {"ms": 10}, "key": "order-1"}),
        )
        .await;
    let b = s
        .post(
            "/v1/messages?wait=true",
            json!({"kind": "sleep", "payload": {"ms": 10}, "key": "order-1"}),
        )
        .await;
    assert_eq!(a.body["id"], b.body["id"]);
    assert_eq!(b.body["status"], "completed");
    assert_eq!(
        s.metrics().await["mailroom_messages_accepted_total{kind=\"sleep\"}"],
        1.0
    );
    s.stop().await;
}

#[actix_rt::test]
async fn schedules_in_the_config_run_periodically_and_once() {
    let mut c = config();
    c.schedule = vec![
        mailroom::config::ScheduleConfig {
            kind: "echo".into(),
            payload: json!({"tick": true}),
            every_ms: Some(20),
            after_ms: None,
        },
        mailroom::config::ScheduleConfig {
            kind: "sleep".into(),
            payload: json!({"ms": 1}),
            every_ms: None,
            after_ms: Some(30),
        },
    ];
    let s = start(c).await;
    assert!(
        eventually(Duration::from_secs(5), || async {
            let m = s.metrics().await;
            m["mailroom_messages_finished_total{kind=\"echo\",status=\"completed\"}"] >= 3.0
                && m["mailroom_messages_finished_total{kind=\"sleep\",status=\"completed\"}"] == 1.0
        })
        .await
    );
    actix_rt::time::sleep(Duration::from_millis(100)).await;
    assert_eq!(
        s.metrics().await["mailroom_messages_accepted_total{kind=\"sleep\"}"],
        1.0,
        "an after_ms schedule runs once"
    );
    s.stop().await;
}

/// A durable storage that writes every record at once, until the test says it is behind (it
/// admits nothing new for a while) or closed (it can write nothing any more, as a journal whose
/// writer stopped).
#[derive(Default)]
struct Closable(std::sync::atomic::AtomicU8);

const BEHIND: u8 = 1;
const CLOSED: u8 = 2;

impl mailroom_actors::Storage for Closable {
    fn is_durable(&self) -> bool {
        true
    }
    fn append(&self, _: &mailroom_actors::storage::Record) -> mailroom_actors::storage::Receipt {
        mailroom_actors::storage::Receipt::ready(self.admitting())
    }
    fn load(&self) -> Result<Vec<mailroom_actors::storage::Record>, StorageError> {
        Ok(Vec::new())
    }
    fn admitting(&self) -> Result<(), StorageError> {
        match self.0.load(std::sync::atomic::Ordering::Relaxed) {
            CLOSED => Err(StorageError::Closed),
            BEHIND => Err(StorageError::Backlog(1 << 30)),
            _ => Ok(()),
        }
    }
}

/// `/readyz` fails once the storage can write nothing any more (as every submission then does),
/// so a load balancer stops sending work to the node; a storage that is only behind keeps it
/// ready.
#[actix_rt::test]
async fn readyz_fails_when_the_storage_can_write_nothing() {
    let storage = std::sync::Arc::new(Closable::default());
    let c = config();
    let dispatcher = mailroom_actors::Dispatcher::builder(c.settings())
        .storage(storage.clone())
        .builtin_routes()
        .build()
        .unwrap();
    let s = &c.server;
    let state = web::Data::new(mailroom::api::AppState {
        dispatcher: dispatcher.clone(),
        cluster: None,
        max_body: s.max_body_bytes,
        max_batch: s.max_batch,
        max_depth: s.max_json_depth,
        max_wait: Duration::from_millis(s.max_wait_ms),
        tokens: Vec::new(),
        body_timeout: Duration::from_millis(s.body_timeout_ms),
        buffered: mailroom::api::BodyBudget::new(s.max_buffered_body_bytes, s.client_body_share()),
        connections: mailroom::connections::Shares::new(s.client_connection_share()),
        openapi: web::Bytes::new(),
    });
    let app = actix_web::test::init_service(
        App::new()
            .app_data(state)
            .configure(mailroom::api::configure),
    )
    .await;
    let call = |method: &str, path: &str| {
        let req = match method {
            "GET" => actix_web::test::TestRequest::get(),
            _ => {
                actix_web::test::TestRequest::post().set_json(json!({"kind": "echo", "payload": 1}))
            }
        };
        req.uri(path).to_request()
    };
    let ready = actix_web::test::call_service(&app, call("GET", "/readyz")).await;
    assert_eq!(ready.status(), 200);
    let sent = actix_web::test::call_service(&app, call("POST", "/v1/messages?wait=true")).await;
    assert_eq!(sent.status(), 200);

    storage
        .0
        .store(BEHIND, std::sync::atomic::Ordering::Relaxed);
    let ready = actix_web::test::call_service(&app, call("GET", "/readyz")).await;
    assert_eq!(ready.status(), 200, "only behind: still ready");
    let sent = actix_web::test::call_service(&app, call("POST", "/v1/messages")).await;
    assert_eq!(
        sent.status(),
        503,
        "a submission waits for the backlog to shrink"
    );

    storage
        .0
        .store(CLOSED, std::sync::atomic::Ordering::Relaxed);
    let ready = actix_web::test::call_service(&app, call("GET", "/readyz")).await;
    assert_eq!(ready.status(), 503);
    let body: serde_json::Value = actix_web::test::read_body_json(ready).await;
    assert_eq!(
        body["detail"],
        json!("the storage can write nothing any more (see the log); restart the server")
    );
    let sent = actix_web::test::call_service(&app, call("POST", "/v1/messages")).await;
    assert_eq!(sent.status(), 503, "submissions are refused alike");
    dispatcher.shutdown(Duration::from_secs(5)).await;
}
