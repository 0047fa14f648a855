//! The HTTP ceiling of this machine, for the load benchmark (`benches/load.sh`): a bare
//! actix-web handler that parses the same JSON body as `POST /v1/messages` and answers `echo`
//! with no dispatch at all (and `sleep`, as a bare timer: the ceiling of the `sleep` workload on
//! this machine). It also serves `GET /delay/{ms}`, the local upstream of the `fetch` workload.
//!
//! Run: `cargo run --release --example bare_echo -- 127.0.0.1:8090`

use std::time::Duration;

use actix_web::{web, App, HttpResponse, HttpServer};
use serde::Deserialize;
use serde_json::{json, Value};

#[derive(Deserialize)]
struct Submission {
    kind: String,
    #[serde(default)]
    payload: Value,
}

async fn submit(body: web::Bytes) -> HttpResponse {
    match serde_json::from_slice::<Submission>(&body) {
        Ok(s) if s.kind == "echo" => HttpResponse::Ok().json(json!({
            "id": "00000000000000000000000000", "kind": "echo", "status": "completed",
            "result": s.payload, "attempts": 1,
        })),
        Ok(s) if s.kind == "sleep" => {
            let ms = s.payload["ms"].as_u64().unwrap_or(0);
            actix_rt::time::sleep(Duration::from_millis(ms)).await;
            HttpResponse::Ok().json(json!({
                "id": "00000000000000000000000000", "kind": "sleep", "status": "completed",
                "result": {"slept_ms": ms}, "attempts": 1,
            }))
        }
        Ok(_) => HttpResponse::UnprocessableEntity().finish(),
        Err(e) => HttpResponse::BadRequest().body(e.to_string()),
    }
}

async fn delay(ms: web::Path<u64>) -> HttpResponse {
    actix_rt::time::sleep(Duration::from_millis(*ms)).await;
    HttpResponse::Ok().json(json!({ "waited_ms": *ms }))
}

#[actix_web::main]
async fn main() -> std::io::Result<()> {
    let bind = std::env::args()
        .nth(1)
        .unwrap_or_else(|| "127.0.0.1:8090".into());
    HttpServer::new(|| {
        App::new()
            .route("/v1/messages", web::post().to(submit))
            .route("/delay/{ms}", web::get().to(delay))
            .route("/healthz", web::get().to(HttpResponse::Ok))
    })
    .bind(bind)?
    .run()
    .await
}
