//! The journal's group commit, measured against one fsync per record in the same run:
//!
//!   cargo bench -p mailroom-actors --bench journal
//!
//! Writes 200-byte records with `Fsync::Always` into a temporary folder on the project's disk
//! (`target/`), first one at a time (each append waits for its fsync: the disk's fsync rate),
//! then from 64 concurrent appenders (records waiting together share an fsync). Prints records
//! per second, fsyncs per second, records per fsync, and the ratio. Interleaved rounds; medians.

use std::sync::atomic::Ordering::Relaxed;
use std::sync::Arc;
use std::time::Instant;

use mailroom_actors::journal::{Fsync, Log};

const RECORD: usize = 200;

/// Appends `total` records from `writers` threads, each waiting for its record's ack before
/// the next; returns (records/s, fsyncs/s, records per fsync).
fn run(writers: usize, total: usize) -> (f64, f64, f64) {
    let dir = tempfile::tempdir_in(env!("CARGO_TARGET_TMPDIR")).unwrap();
    let (log, _) = Log::open(dir.path(), Fsync::Always).unwrap();
    let log = Arc::new(log);
    let started = Instant::now();
    let threads: Vec<_> = (0..writers)
        .map(|_| {
            let log = log.clone();
            std::thread::spawn(move || {
                for _ in 0..total / writers {
                    log.append(vec![7u8; RECORD])
                        .blocking_recv()
                        .unwrap()
                        .unwrap();
                }
            })
        })
        .collect();
    threads.into_iter().for_each(|t| t.join().unwrap());
    let secs = started.elapsed().as_secs_f64();
    let fsyncs = log.stats().fsyncs.load(Relaxed) as f64;
    let records = log.stats().records.load(Relaxed) as f64;
    (records / secs, fsyncs / secs, records / fsyncs)
}

fn median(mut v: Vec<f64>) -> f64 {
    v.sort_by(f64::total_cmp);
    v[v.len() / 2]
}

fn main() {
    let rounds = 5;
    let (mut one, mut group, mut per_fsync, mut fsync_rate) = (vec![], vec![], vec![], vec![]);
    for round in 1..=rounds {
        let (a, a_fsyncs, _) = run(1, 2_000);
        let (b, b_fsyncs, b_per) = run(64, 64_000);
        println!(
            "round {round}: one at a time {a:>9.0} records/s ({a_fsyncs:.0} fsyncs/s); \
             64 appenders {b:>9.0} records/s ({b_fsyncs:.0} fsyncs/s, {b_per:.1} records per fsync)"
        );
        one.push(a);
        group.push(b);
        per_fsync.push(b_per);
        fsync_rate.push(a_fsyncs);
    }
    let (a, b) = (median(one), median(group));
    println!(
        "median of {rounds}: one at a time {a:.0} records/s (the disk's fsync rate: {:.0}/s); \
         group commit {b:.0} records/s, {:.1} records per fsync; ratio {:.1}x",
        median(fsync_rate),
        median(per_fsync),
        b / a
    );
}
