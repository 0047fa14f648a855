//! In-process dispatch throughput: `Dispatcher::gather` of 10,000 `echo` messages, beside a raw
//! tokio mpsc + oneshot request/reply loop with 256 requests in flight, measured in the same run;
//! the same gather from a thread attached to its dispatcher
//! (`Dispatcher::attach_current_arbiter`: the router and worker run on the gathering thread);
//! and the same with a journal (`fsync = "always"`, in a temp folder on this disk): `gather`,
//! and 10,000 concurrent `accept`s, each acknowledged only once its record is on disk.
//!
//! A third baseline, `raw_with_index_256`, is the raw loop plus the least a dispatcher pays
//! that answers "what became of message X" for its last 100,000 messages, as Mailroom's store
//! does: a time-ordered id per message, an entry in a hash map and a FIFO, the oldest entry
//! evicted (a multiply for a hash, no SipHash), and the outcome written into the entry by the
//! answering thread. It says what that bookkeeping costs when one
//! thread does it all (Mailroom shares it between the admitting thread and the worker's).
//!
//! Run: `cargo bench -p mailroom-actors --bench gather`. After criterion's report (each
//! benchmark measured alone, one after another), it runs every contender again in 7
//! interleaved rounds (10 batches of each per round, in turn, after one untimed warm-up round)
//! and prints each one's median rate over the rounds and the median of each round's ratios
//! (Mailroom / raw loop, and so on): on a noisy machine a ratio is only fair between runs made
//! in the same minute, and those medians are what to compare run to run. It also prints the
//! journal's fsyncs. `ROUNDS_ONLY=1` skips criterion's part (about 30 s instead of 3 minutes);
//! any argument but `--bench` (a filter, `--profile-time`, a baseline) runs criterion's part
//! only; in test mode (`cargo test --benches`, or `-- --test`) the rounds are one batch each.

use std::collections::{HashMap, VecDeque};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use criterion::measurement::WallTime;
use criterion::{BenchmarkGroup, Criterion, Throughput};
use futures_util::stream::{FuturesUnordered, StreamExt};
use mailroom_actors::{Dispatcher, Journal, JournalSettings, Message, MessageId, Settings};
use serde_json::{json, Value};
use tokio::sync::{mpsc, oneshot};

/// The server binary uses mimalloc too: glibc's allocator is slow when memory allocated on one
/// thread (admission) is freed on another (the worker), which is every message here.
#[global_allocator]
static GLOBAL: mimalloc::MiMalloc = mimalloc::MiMalloc;

const N: usize = 10_000;
const IN_FLIGHT: usize = 256;

/// Interleaved rounds, and batches of each contender per round.
const ROUNDS: usize = 7;
const BATCHES: usize = 10;

fn payloads() -> Vec<Value> {
    (0..N).map(|i| json!({ "i": i })).collect()
}

/// 10,000 `accept`s at once: each resolves when its record is durable; then every outcome.
async fn accept_once(d: &Dispatcher) -> Duration {
    let msgs: Vec<Message> = payloads()
        .into_iter()
        .map(|p| Message::new("echo", p))
        .collect();
    let t = Instant::now();
    let ids = futures_util::future::join_all(msgs.into_iter().map(|m| d.accept(m))).await;
    let took = t.elapsed();
    for id in ids {
        let o = d.wait(id.unwrap(), Duration::from_secs(60)).await.unwrap();
        assert!(o.is_completed());
    }
    took
}

async fn gather_once(d: &Dispatcher) -> Duration {
    let msgs: Vec<Message> = payloads()
        .into_iter()
        .map(|p| Message::new("echo", p))
        .collect();
    let t = Instant::now();
    let outs = d.gather(msgs).await;
    let took = t.elapsed();
    assert!(outs
        .iter()
        .all(|o| o.as_ref().is_ok_and(|o| o.is_completed())));
    took
}

type Request = (Value, oneshot::Sender<Value>);

/// Keeps 256 requests in flight on `tx` until all N payloads are answered: `make` turns a
/// payload into a request and the receiver of its answer; `check` looks at each answer.
async fn closed_loop<R, A>(
    tx: &mpsc::Sender<R>,
    mut make: impl FnMut(Value) -> (R, oneshot::Receiver<A>),
    check: impl Fn(A),
) -> Duration {
    let mut payloads = payloads().into_iter();
    let t = Instant::now();
    let mut pending = FuturesUnordered::new();
    let mut done = 0;
    loop {
        while pending.len() < IN_FLIGHT {
            let Some(p) = payloads.next() else { break };
            let (request, answer) = make(p);
            if tx.send(request).await.is_err() {
                panic!("the server task stopped");
            }
            pending.push(answer);
        }
        match pending.next().await {
            Some(answer) => {
                check(answer.unwrap());
                done += 1;
            }
            None => break,
        }
    }
    assert_eq!(done, N);
    t.elapsed()
}

/// The raw loop: a server task on another thread answers each request through a oneshot; the
/// client keeps 256 requests in flight.
async fn raw_once(tx: &mpsc::Sender<Request>) -> Duration {
    let make = |p| {
        let (reply, answer) = oneshot::channel();
        ((p, reply), answer)
    };
    closed_loop(tx, make, |_| {}).await
}

/// An outcome cell, shared by the index and the answering thread.
type Cell = Arc<Mutex<Option<Value>>>;
type IndexedRequest = (Value, Cell, oneshot::Sender<Cell>);

/// Outcomes kept, as Mailroom's default store keeps them.
const KEPT: usize = 100_000;

/// A hasher that costs a multiply: ids are random in their low bits already (the store uses
/// one like it), so the baseline pays no SipHash.
#[derive(Default)]
struct IdHasher(u64);

impl std::hash::Hasher for IdHasher {
    fn finish(&self) -> u64 {
        self.0
    }
    fn write(&mut self, bytes: &[u8]) {
        for &b in bytes {
            self.0 = (self.0 ^ u64::from(b)).wrapping_mul(0x9E37_79B9_7F4A_7C15);
        }
    }
    fn write_u128(&mut self, v: u128) {
        self.0 = (v as u64 ^ (v >> 64) as u64).wrapping_mul(0x9E37_79B9_7F4A_7C15);
    }
}

/// The index of `raw_with_index_256`: every message's cell by id, oldest first.
#[derive(Default)]
struct Index {
    cells: HashMap<MessageId, Cell, std::hash::BuildHasherDefault<IdHasher>>,
    order: VecDeque<MessageId>,
}

/// The raw loop with an index: each request gets an id and a cell in the index (the oldest is
/// evicted past `KEPT`), and the server writes the outcome into the cell before it answers.
async fn raw_indexed_once(tx: &mpsc::Sender<IndexedRequest>, index: &mut Index) -> Duration {
    let make = |p| {
        let id = MessageId::next();
        let cell = Cell::default();
        index.cells.insert(id, cell.clone());
        index.order.push_back(id);
        if index.order.len() > KEPT {
            let oldest = index.order.pop_front().expect("not empty");
            index.cells.remove(&oldest);
        }
        let (reply, answer) = oneshot::channel();
        ((p, cell, reply), answer)
    };
    closed_loop(tx, make, |cell: Cell| {
        assert!(cell.lock().unwrap().is_some())
    })
    .await
}

/// Benchmarks `gather_once` on `d` under `name`.
fn bench_gather(
    group: &mut BenchmarkGroup<'_, WallTime>,
    sys: &actix_rt::SystemRunner,
    name: &'static str,
    d: &Dispatcher,
) {
    group.bench_function(name, |b| {
        b.iter_custom(|iters| {
            sys.block_on(async {
                let mut total = Duration::ZERO;
                for _ in 0..iters {
                    total += gather_once(d).await;
                }
                total
            })
        })
    });
}

fn benches(c: &mut Criterion, rounds: Rounds) {
    let sys = actix_rt::System::new();
    let settings = Settings {
        capacity: N * 2,
        ..Settings::default()
    };
    let dispatcher = sys.block_on(async {
        Dispatcher::builder(settings.clone())
            .builtin_routes()
            .build()
            .unwrap()
    });
    // The same routes, with the gathering thread (the System arbiter) attached: admission,
    // routing, the echo and the outcome all happen on this one thread.
    let attached = sys.block_on(async {
        let d = Dispatcher::builder(settings.clone())
            .builtin_routes()
            .build()
            .unwrap();
        assert!(d.attach_current_arbiter());
        d
    });
    let folder = tempfile::tempdir_in(env!("CARGO_TARGET_TMPDIR")).unwrap();
    let journaled = sys.block_on(async {
        let journal = Journal::open(folder.path(), JournalSettings::default()).unwrap();
        Dispatcher::builder(settings)
            .builtin_routes()
            .storage(std::sync::Arc::new(journal))
            .build()
            .unwrap()
    });
    // The raw loop's server runs on its own arbiter thread, like the dispatcher's router.
    let server = actix_rt::Arbiter::new();
    let (tx, mut rx) = mpsc::channel::<Request>(1024);
    server.spawn(async move {
        while let Some((v, reply)) = rx.recv().await {
            let _ = reply.send(v);
        }
    });

    let mut group = c.benchmark_group("dispatch_10k");
    group.throughput(Throughput::Elements(N as u64));
    group.sample_size(30);
    group.measurement_time(Duration::from_secs(8));
    bench_gather(&mut group, &sys, "mailroom_gather_echo", &dispatcher);
    bench_gather(&mut group, &sys, "mailroom_gather_echo_attached", &attached);
    let fsyncs_before = journaled.stats().storage.fsyncs;
    let mut durable_messages = 0u64;
    bench_gather(&mut group, &sys, "mailroom_gather_echo_journal", &journaled);
    let fsyncs_mid = journaled.stats().storage.fsyncs;
    group.bench_function("mailroom_accept_echo_journal", |b| {
        b.iter_custom(|iters| {
            sys.block_on(async {
                let mut total = Duration::ZERO;
                for _ in 0..iters {
                    total += accept_once(&journaled).await;
                    durable_messages += N as u64;
                }
                total
            })
        })
    });
    let fsyncs_accept = journaled.stats().storage.fsyncs - fsyncs_mid;
    if durable_messages > 0 {
        // Not when criterion's part was skipped (`ROUNDS_ONLY`): the rounds print their own.
        println!(
            "journal: {} fsyncs during the gather runs; {fsyncs_accept} during {durable_messages} durable accepts ({:.0} messages per fsync)",
            fsyncs_mid - fsyncs_before,
            durable_messages as f64 / fsyncs_accept.max(1) as f64
        );
    }
    group.bench_function("raw_tokio_mpsc_oneshot_256", |b| {
        b.iter_custom(|iters| {
            sys.block_on(async {
                let mut total = Duration::ZERO;
                for _ in 0..iters {
                    total += raw_once(&tx).await;
                }
                total
            })
        })
    });
    let indexed = actix_rt::Arbiter::new();
    let (itx, mut irx) = mpsc::channel::<IndexedRequest>(1024);
    indexed.spawn(async move {
        while let Some((v, cell, reply)) = irx.recv().await {
            *cell.lock().unwrap() = Some(v);
            let _ = reply.send(cell);
        }
    });
    let mut index = Index::default();
    group.bench_function("raw_with_index_256", |b| {
        b.iter_custom(|iters| {
            sys.block_on(async {
                let mut total = Duration::ZERO;
                for _ in 0..iters {
                    total += raw_indexed_once(&itx, &mut index).await;
                }
                total
            })
        })
    });
    group.finish();

    // Criterion ran each alone; now the same, interleaved, for ratios made in the same minute.
    let (rounds, batches) = match rounds {
        Rounds::Full => (ROUNDS, BATCHES),
        Rounds::Smoke => (1, 1),
        Rounds::Skip => return,
    };
    let (round_fsyncs, round_accepts) = (std::cell::Cell::new(0u64), std::cell::Cell::new(0u64));
    let contenders: Vec<Contender> = vec![
        (
            "mailroom",
            Box::new(|| sys.block_on(gather_once(&dispatcher))),
        ),
        ("raw", Box::new(|| sys.block_on(raw_once(&tx)))),
        (
            "indexed",
            Box::new(|| sys.block_on(raw_indexed_once(&itx, &mut index))),
        ),
        (
            "attached",
            Box::new(|| sys.block_on(gather_once(&attached))),
        ),
        (
            "journal gather",
            Box::new(|| sys.block_on(gather_once(&journaled))),
        ),
        (
            "journal accepts",
            Box::new(|| {
                // The journal gather just before may leave records nobody waited for, which
                // ride the first of these fsyncs (well under 1 % of the count).
                let before = journaled.stats().storage.fsyncs;
                let took = sys.block_on(accept_once(&journaled));
                round_fsyncs.set(round_fsyncs.get() + journaled.stats().storage.fsyncs - before);
                round_accepts.set(round_accepts.get() + N as u64);
                took
            }),
        ),
    ];
    let rates = interleaved(contenders, rounds, batches);
    summarize(&rates, rounds, batches);
    println!(
        "  journal, durable accepts:      {:>12.0} messages per fsync ({} fsyncs for {} messages, warm-up round included)",
        round_accepts.get() as f64 / round_fsyncs.get().max(1) as f64,
        round_fsyncs.get(),
        round_accepts.get()
    );
}

/// A named contender of the interleaved rounds: one call runs one batch and says how long it took.
type Contender<'a> = (&'static str, Box<dyn FnMut() -> Duration + 'a>);

/// Runs each contender `batches` times in turn, in an untimed warm-up round and then `rounds`
/// timed ones; returns each one's rate per timed round (the median of that round's batches),
/// in the contenders' order. The journal's contenders come last in a round, and a pause after
/// them lets its deferred fsyncs and compaction finish before the next round begins.
fn interleaved(
    mut contenders: Vec<Contender<'_>>,
    rounds: usize,
    batches: usize,
) -> Vec<(String, Vec<f64>)> {
    let mut rates: Vec<(String, Vec<f64>)> = contenders
        .iter()
        .map(|(name, _)| (name.to_string(), Vec::new()))
        .collect();
    // The warm-up round also fills the stores to their 100,000 kept outcomes when criterion's
    // part did not run (`ROUNDS_ONLY`), so every timed message evicts one, as in a
    // long-running service.
    for round in 0..=rounds {
        for (i, (_, run)) in contenders.iter_mut().enumerate() {
            let rates_of_round: Vec<f64> = (0..batches)
                .map(|_| N as f64 / run().as_secs_f64())
                .collect();
            if round > 0 {
                rates[i].1.push(median(rates_of_round));
            }
        }
        std::thread::sleep(Duration::from_millis(100));
    }
    rates
}

/// Prints the median rate of each contender and the median of each round's ratios.
fn summarize(rates: &[(String, Vec<f64>)], rounds: usize, batches: usize) {
    let of = |name: &str| -> &[f64] {
        &rates
            .iter()
            .find(|(n, _)| n == name)
            .expect("a contender of this bench")
            .1
    };
    let ratio =
        |a: &str, b: &str| -> f64 { median(of(a).iter().zip(of(b)).map(|(x, y)| x / y).collect()) };
    println!(
        "\n{rounds} interleaved rounds of {batches} batches of {N} messages each; medians over the rounds:"
    );
    for (label, name) in [
        ("mailroom gather (echo):", "mailroom"),
        ("raw tokio mpsc+oneshot (256):", "raw"),
        ("raw loop with an index:", "indexed"),
        ("gather, attached thread:", "attached"),
        ("gather with a journal:", "journal gather"),
        ("durable accepts (journal):", "journal accepts"),
    ] {
        println!("  {label:<31}{:>12.0} msg/s", median(of(name).to_vec()));
    }
    for (label, a, b) in [
        ("ratio mailroom / raw:", "mailroom", "raw"),
        ("ratio indexed / raw:", "indexed", "raw"),
        ("ratio mailroom / indexed:", "mailroom", "indexed"),
        ("ratio attached / raw:", "attached", "raw"),
        (
            "ratio gather journal / memory:",
            "journal gather",
            "mailroom",
        ),
    ] {
        println!("  {label:<31}{:>12.2}", ratio(a, b));
    }
    println!(
        "  mailroom / raw, each round:    {}",
        of("mailroom")
            .iter()
            .zip(of("raw"))
            .map(|(x, y)| format!("{:.2}", x / y))
            .collect::<Vec<_>>()
            .join(" ")
    );
}

fn median(mut v: Vec<f64>) -> f64 {
    v.sort_by(|a, b| a.total_cmp(b));
    v[v.len() / 2]
}

/// What the interleaved rounds do in this run.
#[derive(Clone, Copy)]
enum Rounds {
    /// `cargo bench`: 7 rounds of 10 batches.
    Full,
    /// Test mode (`cargo test --benches`, `-- --test`): one round of one batch.
    Smoke,
    /// Any other argument (a filter, `--profile-time`, a baseline): criterion's part only.
    Skip,
}

fn rounds_from_args() -> Rounds {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let has = |flag: &str| args.iter().any(|a| a == flag);
    if args.iter().any(|a| a != "--bench" && a != "--test") {
        Rounds::Skip
    } else if has("--test") || !has("--bench") {
        Rounds::Smoke
    } else {
        Rounds::Full
    }
}

fn main() {
    let rounds = rounds_from_args();
    let mut c = Criterion::default().configure_from_args();
    if std::env::var("ROUNDS_ONLY").is_ok_and(|v| v == "1") {
        c = c.with_filter("^$"); // no benchmark id is empty: criterion runs none
    }
    benches(&mut c, rounds);
    c.final_summary();
}
