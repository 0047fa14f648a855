use std::net::TcpListener;
use std::time::Duration;

use actix_web::{web, App, HttpResponse, HttpServer};
use mailroom_actors::{ErrorClass, Message, Rejected, Settings, Status};
use serde_json::json;

use super::common::{builder, settings};

/// Starts an upstream on 127.0.0.1 with `/ok`, `/missing`, `/slow` and `/big`; returns its port.
fn upstream() -> u16 {
    let listener = TcpListener::bind("127.0.0.1:0").unwrap();
    let port = listener.local_addr().unwrap().port();
    let server = HttpServer::new(|| {
        App::new()
            .route(
                "/ok",
                web::get().to(|| async { HttpResponse::Ok().json(json!({"hello": "world"})) }),
            )
            .route(
                "/echo",
                web::post().to(|body: String| async move { HttpResponse::Ok().body(body) }),
            )
            .route(
                "/missing",
                web::get().to(|| async { HttpResponse::NotFound().body("no such thing") }),
            )
            .route(
                "/slow",
                web::get().to(|| async {
                    actix_rt::time::sleep(Duration::from_secs(3)).await;
                    HttpResponse::Ok().body("late")
                }),
            )
            .route(
                "/big",
                web::get().to(|| async { HttpResponse::Ok().body("x".repeat(5000)) }),
            )
    })
    .workers(1)
    .disable_signals()
    .listen(listener)
    .unwrap()
    .run();
    actix_rt::spawn(server);
    port
}

fn allow_loopback() -> Settings {
    let mut s = settings();
    s.fetch.allow_hosts = vec!["127.0.0.1".into()];
    s.fetch.max_body_bytes = 1000;
    s
}

#[actix_rt::test]
async fn fetch_reads_status_headers_and_body() {
    let port = upstream();
    let d = builder(allow_loopback()).builtin_routes().build().unwrap();
    let ok = d
        .send(Message::new(
            "fetch",
            json!({"url": format!("http://127.0.0.1:{port}/ok")}),
        ))
        .await
        .unwrap();
    assert_eq!(ok.status, Status::Completed, "{ok:?}");
    let r = ok.result.as_ref().unwrap();
    assert_eq!(r["status"], json!(200));
    assert_eq!(r["body"], json!({"hello": "world"}));
    assert_eq!(r["bytes"], json!(17));
    assert_eq!(r["headers"]["content-type"], json!("application/json"));
    assert!(r["elapsed_ms"].as_f64().unwrap() > 0.0);

    let missing = d
        .send(Message::new(
            "fetch",
            json!({"url": format!("http://127.0.0.1:{port}/missing")}),
        ))
        .await
        .unwrap();
    assert_eq!(
        missing.status,
        Status::Completed,
        "an HTTP 404 is a result, not a failure"
    );
    assert_eq!(missing.result.as_ref().unwrap()["status"], json!(404));
    assert_eq!(
        missing.result.as_ref().unwrap()["body"],
        json!("no such thing")
    );

    let posted = d
        .send(Message::new(
            "fetch",
            json!({"url": format!("http://127.0.0.1:{port}/echo"), "method": "post", "body": "hi there",
                   "headers": {"x-test": "1"}}),
        ))
        .await
        .unwrap();
    assert_eq!(posted.result.as_ref().unwrap()["body"], json!("hi there"));

    let big = d
        .send(Message::new(
            "fetch",
            json!({"url": format!("http://127.0.0.1:{port}/big")}),
        ))
        .await
        .unwrap();
    let r = big.result.as_ref().unwrap();
    assert_eq!(
        (r["bytes"].clone(), r["truncated"].clone()),
        (json!(1000), json!(true))
    );
}

#[actix_rt::test]
async fn fetch_failures_have_their_own_classes() {
    let port = upstream();
    let d = builder(allow_loopback()).builtin_routes().build().unwrap();
    let slow = d
        .send(Message::new(
            "fetch",
            json!({"url": format!("http://127.0.0.1:{port}/slow"), "timeout_ms": 100}),
        ))
        .await
        .unwrap();
    assert_eq!(slow.status, Status::Failed);
    assert_eq!(slow.error.as_ref().unwrap().class, ErrorClass::Timeout);

    // A port that was just closed on loopback: the connection is refused.
    let closed = TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    let refused = d
        .send(Message::new(
            "fetch",
            json!({"url": format!("http://127.0.0.1:{closed}/")}),
        ))
        .await
        .unwrap();
    assert_eq!(refused.status, Status::Failed);
    assert_eq!(
        refused.error.as_ref().unwrap().class,
        ErrorClass::Upstream,
        "{refused:?}"
    );
}

#[actix_rt::test]
async fn fetch_refuses_internal_targets_the_allow_list_does_not_name() {
    let port = upstream();
    // Only 127.0.0.1 is allowed: 127.0.0.2 (also loopback) is refused at admission.
    let d = builder(allow_loopback()).builtin_routes().build().unwrap();
    let err = d
        .submit(Message::new(
            "fetch",
            json!({"url": format!("http://127.0.0.2:{port}/ok")}),
        ))
        .unwrap_err();
    let Rejected::Invalid { reason, .. } = err else {
        panic!("{err:?}")
    };
    assert!(reason.contains("refused to fetch 127.0.0.2"), "{reason}");
    let err = d
        .submit(Message::new(
            "fetch",
            json!({"url": format!("http://[::1]:{port}/ok")}),
        ))
        .unwrap_err();
    assert!(matches!(err, Rejected::Invalid { .. }));

    // With no allow-list, a host name that resolves to loopback is refused when it runs.
    let d = builder(settings()).builtin_routes().build().unwrap();
    let out = d
        .send(Message::new(
            "fetch",
            json!({"url": format!("http://localhost:{port}/ok")}),
        ))
        .await
        .unwrap();
    assert_eq!(out.status, Status::Failed);
    let err = out.error.as_ref().unwrap();
    assert_eq!(err.class, ErrorClass::Forbidden, "{err:?}");
    assert!(
        err.message.starts_with("refused to fetch localhost"),
        "{}",
        err.message
    );
}
