//! cpu_pool — CPU-bound work on the `SyncArbiter` pool: the speed-up over one thread, and the
//! I/O side staying responsive meanwhile.
//!
//! The asyncio original: `run_in_executor(ProcessPoolExecutor(), …)`, because the event loop
//! can use one core only. Here the `primes` workload runs on a pool of OS threads (one per core
//! by default), while async messages keep flowing on the I/O arbiter: the example times `echo`
//! round trips while the pool is saturated, and records which pool threads ran jobs.
//!
//! Run: `cargo run --release --example cpu_pool` (a debug build works too, just slower).

use std::collections::HashSet;
use std::sync::atomic::{AtomicUsize, Ordering::SeqCst};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use mailroom_actors::processor::builtin::count_primes;
use mailroom_actors::{Dispatcher, Message, Processor, RouteSettings, Settings};
use serde_json::json;

const JOBS: usize = 8;

/// What the pool threads did: which threads ran jobs, and the most running at once.
#[derive(Default)]
struct Trace {
    threads: Mutex<HashSet<String>>,
    running: AtomicUsize,
    most: AtomicUsize,
}

struct Run {
    took: Duration,
    echo: Vec<Duration>,
    trace: Arc<Trace>,
}

async fn run_primes(threads: usize, limit: u64) -> Run {
    let mut s = Settings::default();
    s.cpu.threads = threads;
    let trace = Arc::new(Trace::default());
    let t = trace.clone();
    // The built-in `primes` workload, wrapped to record which thread runs it.
    let traced = Processor::cpu_fn("primes_traced", move |job, p| {
        let now = t.running.fetch_add(1, SeqCst) + 1;
        t.most.fetch_max(now, SeqCst);
        t.threads
            .lock()
            .unwrap()
            .insert(format!("{:?}", std::thread::current().id()));
        let count = count_primes(p["limit"].as_u64().unwrap_or(0), Some(job));
        t.running.fetch_sub(1, SeqCst);
        Ok(json!({ "count": count? }))
    });
    let d = Dispatcher::builder(s)
        .builtin_routes()
        .processor(traced)
        .route("primes_traced", RouteSettings::new("primes_traced"))
        .build()
        .unwrap();
    let msgs = (0..JOBS)
        .map(|_| Message::new("primes_traced", json!({ "limit": limit })))
        .collect();
    let started = Instant::now();
    let cpu = {
        let d = d.clone();
        actix_rt::spawn(async move { d.gather(msgs).await })
    };
    // Meanwhile: echo round trips on the I/O side.
    let mut echo = Vec::new();
    while !cpu.is_finished() {
        let t = Instant::now();
        d.send(Message::new("echo", json!("ping"))).await.unwrap();
        echo.push(t.elapsed());
        actix_rt::time::sleep(Duration::from_millis(5)).await;
    }
    let outs = cpu.await.unwrap();
    let took = started.elapsed();
    let counts: Vec<_> = outs
        .iter()
        .map(|o| o.as_ref().unwrap().result.clone().unwrap())
        .collect();
    assert!(
        counts.iter().all(|c| c == &counts[0]),
        "every job computes the same count"
    );
    d.shutdown(Duration::from_secs(5)).await;
    Run { took, echo, trace }
}

#[actix::main]
async fn main() {
    let cores = std::thread::available_parallelism().map_or(2, |n| n.get());
    let limit = if cfg!(debug_assertions) {
        150_000
    } else {
        400_000
    };
    println!("{JOBS} jobs of primes(limit = {limit}) on the CPU pool");
    let one = run_primes(1, limit).await;
    println!("  1 thread : {:>7.0} ms", one.took.as_secs_f64() * 1000.0);
    let all = run_primes(cores, limit).await;
    println!(
        "  {cores} threads: {:>7.0} ms",
        all.took.as_secs_f64() * 1000.0
    );
    println!(
        "  speed-up : {:.2}x on {cores} cores",
        one.took.as_secs_f64() / all.took.as_secs_f64()
    );
    println!(
        "  jobs ran on {} pool threads, at most {} at the same time",
        all.trace.threads.lock().unwrap().len(),
        all.trace.most.load(SeqCst)
    );
    let mut e: Vec<f64> = all.echo.iter().map(|d| d.as_secs_f64() * 1000.0).collect();
    e.sort_by(f64::total_cmp);
    println!(
        "while the pool was busy, {} echo round trips took median {:.2} ms, max {:.2} ms",
        e.len(),
        e[e.len() / 2],
        e[e.len() - 1]
    );
}
