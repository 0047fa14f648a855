//! The HTTP ceiling of this machine, for the load benchmark (`benches/load.sh`): a bare
//! actix-web handler that parses the same JSON body as `POST /v1/messages` and answers `echo`
//! with no dispatch at all (and `sleep`, as a bare timer: the ceiling of the `sleep` workload on
//! this machine). It also serves `GET /delay/{ms}`, the local upstream of the `fetch` workload.
//!
//! `primes` and `hash` are computed with the same code as Mailroom's built-ins, inline on the
//! actix-web worker thread: run with `BARE_WORKERS=1` and `BARE_WORKERS=2`, this is the ceiling
//! of CPU scaling through HTTP on this machine (HTTP, JSON and the load generator share the cores
//! with the work, but there is no dispatch at all). With `BARE_CPU_THREADS=N` they run instead
//! on N plain threads fed by a channel, answered through a oneshot: the least any design pays
//! that keeps CPU work off the HTTP threads (two cross-thread hand-offs per request, no
//! admission, store or actors).
//!
//! With `BARE_JOURNAL=FILE`, `echo` answers only once its request body is appended to FILE and
//! fsynced (FILE is allocated ahead, as Mailroom allocates its open segment, so an fsync writes
//! the data alone): one writer thread, and requests waiting at the same time share one write and one
//! fsync (group commit). That is the least any server pays that promises an answer only for a
//! message on disk: one record and its share of an fsync per message, no store, no actors. It is
//! the ceiling of Mailroom's journal on this machine at the same concurrency (Mailroom also
//! writes `Finished`, which nobody waits for). `sleep` then writes its body while its timer
//! runs and answers once both are done: the ceiling of the journal's `sleep` (Mailroom runs a
//! pure processor while its `Accepted` record is fsynced, and also writes `Started` and
//! `Finished`).
//!
//! Run: `cargo run --release --example bare_echo -- 127.0.0.1:8090` (`BARE_WORKERS`: HTTP
//! worker threads, default one per core; `BARE_CPU_THREADS`, `BARE_JOURNAL`: see above).

use std::fs::OpenOptions;
use std::io::Write;
use std::sync::{mpsc, Arc, Mutex, OnceLock};
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
        Ok(s) if s.kind == "echo" => {
            // On disk before the answer.
            if !on_disk(&body).await {
                return HttpResponse::ServiceUnavailable().finish();
            }
            HttpResponse::Ok().json(json!({
                "id": "00000000000000000000000000", "kind": "echo", "status": "completed",
                "result": s.payload, "attempts": 1,
            }))
        }
        Ok(s) if s.kind == "sleep" => {
            let ms = s.payload["ms"].as_u64().unwrap_or(0);
            // With a journal, the body is written while the timer runs, and the answer waits
            // for both (as Mailroom runs a pure processor while its record is fsynced).
            let sleep = actix_rt::time::sleep(Duration::from_millis(ms));
            if !futures_util::join!(on_disk(&body), sleep).0 {
                return HttpResponse::ServiceUnavailable().finish();
            }
            HttpResponse::Ok().json(json!({
                "id": "00000000000000000000000000", "kind": "sleep", "status": "completed",
                "result": {"slept_ms": ms}, "attempts": 1,
            }))
        }
        Ok(s) if s.kind == "primes" || s.kind == "hash" => {
            let result = match CPU_THREADS.get() {
                // On a thread of its own pool: HTTP worker → CPU thread → HTTP worker.
                Some(tx) => {
                    let (done, rx) = tokio::sync::oneshot::channel();
                    if tx.send((s.kind.clone(), s.payload, done)).is_err() {
                        return HttpResponse::ServiceUnavailable().finish();
                    }
                    rx.await.unwrap_or_default()
                }
                None => compute(&s.kind, &s.payload),
            };
            HttpResponse::Ok().json(json!({
                "id": "00000000000000000000000000", "kind": s.kind, "status": "completed",
                "result": result, "attempts": 1,
            }))
        }
        Ok(_) => HttpResponse::UnprocessableEntity().finish(),
        Err(e) => HttpResponse::BadRequest().body(e.to_string()),
    }
}

/// `primes` or `hash` with the built-ins' own code.
fn compute(kind: &str, payload: &Value) -> Value {
    if kind == "primes" {
        let limit = payload["limit"].as_u64().unwrap_or(0);
        json!({ "count": count_primes(limit, None).unwrap_or(0) })
    } else {
        let data = payload["data"].as_str().unwrap_or("");
        let rounds = payload["rounds"].as_u64().unwrap_or(1);
        json!({ "sha256": hash_rounds(data, rounds, None).unwrap_or_default() })
    }
}

type CpuJob = (String, Value, tokio::sync::oneshot::Sender<Value>);

/// With `BARE_CPU_THREADS=N`: the queue of N plain threads that compute `primes` and `hash`.
static CPU_THREADS: OnceLock<mpsc::Sender<CpuJob>> = OnceLock::new();

fn start_cpu_threads(n: usize) {
    let (tx, rx) = mpsc::channel::<CpuJob>();
    let rx = Arc::new(Mutex::new(rx));
    for _ in 0..n {
        let rx = rx.clone();
        std::thread::spawn(move || loop {
            let job = rx.lock().unwrap_or_else(|e| e.into_inner()).recv();
            let Ok((kind, payload, done)) = job else {
                return;
            };
            let _ = done.send(compute(&kind, &payload));
        });
    }
    let _ = CPU_THREADS.set(tx);
}

type Record = (Vec<u8>, tokio::sync::oneshot::Sender<()>);

/// With `BARE_JOURNAL`, appends `body` and resolves once it is fsynced (false if the writer
/// stopped); without, resolves at once.
async fn on_disk(body: &[u8]) -> bool {
    let Some(journal) = JOURNAL.get() else {
        return true;
    };
    let (done, rx) = tokio::sync::oneshot::channel();
    journal.send((body.to_vec(), done)).is_ok() && rx.await.is_ok()
}

/// With `BARE_JOURNAL=FILE`: the writer thread's queue.
static JOURNAL: OnceLock<mpsc::Sender<Record>> = OnceLock::new();

/// Starts the writer: it takes every record waiting, writes them (each as length and bytes)
/// with one `write`, fsyncs once, then acknowledges them all. A failed write or fsync ends
/// the thread, and every request after it gets a 503.
fn start_journal(path: &str) -> std::io::Result<()> {
    let mut file = OpenOptions::new()
        .create(true)
        .write(true)
        .truncate(true)
        .open(path)?;
    // Writes begin at 0 and go on past the allocation if they must (or if the file system
    // cannot allocate ahead).
    if rustix::fs::fallocate(&file, rustix::fs::FallocateFlags::empty(), 0, 256 << 20).is_ok() {
        file.sync_all()?;
    }
    let (tx, rx) = mpsc::channel::<Record>();
    std::thread::spawn(move || {
        let mut buf = Vec::new();
        while let Ok(first) = rx.recv() {
            let batch: Vec<Record> = std::iter::once(first).chain(rx.try_iter()).collect();
            buf.clear();
            for (bytes, _) in &batch {
                buf.extend_from_slice(&(bytes.len() as u32).to_le_bytes());
                buf.extend_from_slice(bytes);
            }
            if let Err(e) = file.write_all(&buf).and_then(|()| file.sync_data()) {
                eprintln!("bare_echo: journal write failed: {e}");
                return;
            }
            for (_, done) in batch {
                let _ = done.send(());
            }
        }
    });
    let _ = JOURNAL.set(tx);
    Ok(())
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
    if let Some(n) = std::env::var("BARE_CPU_THREADS")
        .ok()
        .and_then(|n| n.parse().ok())
    {
        start_cpu_threads(n);
    }
    if let Ok(path) = std::env::var("BARE_JOURNAL") {
        start_journal(&path)?;
    }
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
