//! The in-process gather of `benches/gather.rs` in steps, for `benches/callgrind_gather.sh`:
//! instructions per message, counted by callgrind (which does not move with the machine's
//! noise), in the steady state of a long-running dispatcher (its store full, every new outcome
//! evicting an old one).
//!
//! With `GATHER_STEPS=1` it gathers `WARM` batches of 10,000 `echo` messages (default 12, enough
//! to fill the store's 100,000 kept outcomes), prints `warm`, waits for a line on stdin (the
//! script zeroes callgrind's counters then), gathers `TIMED` batches (default 3), prints `done`
//! and waits for another line (the script dumps the counters). Without it (`cargo bench`,
//! `cargo test --benches`) it gathers one batch and exits, so it never waits on a terminal.
//! Outcomes are kept an hour: under valgrind a run takes minutes, and outcomes expiring by age
//! would move the eviction work from admission to the store's once-a-second sweep.

use std::io::BufRead;
use std::time::Duration;

use mailroom_actors::{Dispatcher, Message, Settings};
use serde_json::json;

/// As in the server and `benches/gather.rs`.
#[global_allocator]
static GLOBAL: mimalloc::MiMalloc = mimalloc::MiMalloc;

const N: usize = 10_000;

fn var(name: &str, default: usize) -> usize {
    std::env::var(name).map_or(default, |v| v.parse().expect("a number"))
}

fn main() {
    let stepped = std::env::var("GATHER_STEPS").is_ok_and(|v| v == "1");
    let sys = actix_rt::System::new();
    let settings = Settings {
        capacity: N * 2,
        result_ttl: Duration::from_secs(3600),
        ..Settings::default()
    };
    let d = sys.block_on(async {
        Dispatcher::builder(settings)
            .builtin_routes()
            .build()
            .expect("the built-in routes")
    });
    // The messages are made before a step begins, so only the gather is counted.
    let batches = |count: usize| -> Vec<Vec<Message>> {
        (0..count)
            .map(|_| {
                (0..N)
                    .map(|i| Message::new("echo", json!({ "i": i })))
                    .collect()
            })
            .collect()
    };
    let gather = |batches: Vec<Vec<Message>>| {
        for msgs in batches {
            let outs = sys.block_on(d.gather(msgs));
            assert!(outs
                .iter()
                .all(|o| o.as_ref().is_ok_and(|o| o.is_completed())));
        }
    };
    if !stepped {
        gather(batches(1));
        return;
    }
    let mut line = String::new();
    let mut stdin = std::io::stdin().lock();
    gather(batches(var("WARM", 12)));
    let timed = batches(var("TIMED", 3));
    println!("warm");
    stdin.read_line(&mut line).expect("stdin");
    gather(timed);
    println!("done");
    stdin.read_line(&mut line).expect("stdin");
}
