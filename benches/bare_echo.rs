//! The HTTP ceiling of this machine, for the load benchmark (`benches/load.sh`): a bare
//! actix-web handler that parses the same JSON body as `POST /v1/messages` and answers `echo`
//! with no dispatch at all (and `sleep`, as a bare timer: the ceiling of the `sleep` workload on
//! this machine). It also serves `GET /delay/{ms}`, the local upstream of the `fetch` workload.
//!
//! `primes` and `hash` are computed inline on the actix-web worker thread, with the same code as
//! Mailroom's built-ins: run with `BARE_WORKERS=1` and `BARE_WORKERS=2`, this is the ceiling of
//! CPU scaling through HTTP on this machine (HTTP, JSON and the load generator share the cores
//! with the work, but there is no dispatch at all).
//!
//! Run: `cargo run --release --example bare_echo -- 127.0.0.1:8090` (`BARE_WORKERS`: worker
//! threads, default one per core).

use std::time::Duration;

use actix_web::{web, App, HttpResponse, HttpServer};
use mailroom_actors::processor::builtin::{count_primes, hash_rounds};
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
        Ok(s) if s.kind == "primes" => {
            let limit = s.payload["limit"].as_u64().unwrap_or(0);
            let count = count_primes(limit, None).unwrap_or(0);
            HttpResponse::Ok().json(json!({
                "id": "00000000000000000000000000", "kind": "primes", "status": "completed",
                "result": {"count": count}, "attempts": 1,
            }))
        }
        Ok(s) if s.kind == "hash" => {
            let data = s.payload["data"].as_str().unwrap_or("");
            let rounds = s.payload["rounds"].as_u64().unwrap_or(1);
            let digest = hash_rounds(data, rounds, None).unwrap_or_default();
            HttpResponse::Ok().json(json!({
                "id": "00000000000000000000000000", "kind": "hash", "status": "completed",
                "result": {"sha256": digest}, "attempts": 1,
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
    let workers = std::env::var("BARE_WORKERS")
        .ok()
        .and_then(|w| w.parse().ok())
        .unwrap_or_else(|| std::thread::available_parallelism().map_or(1, |n| n.get()));
    HttpServer::new(|| {
        App::new()
            .route("/v1/messages", web::post().to(submit))
            .route("/delay/{ms}", web::get().to(delay))
            .route("/healthz", web::get().to(HttpResponse::Ok))
    })
    .workers(workers)
    .bind(bind)?
    .run()
    .await
}
