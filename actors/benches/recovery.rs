//! Recovery after a restart: 100,000 unfinished (delayed) messages written to a journal, then a
//! dispatcher built again on it. Prints the bytes on disk per message, how long opening and
//! reading the journal took, and how long `build` took to have every message back (in the index
//! and in its router, each under its own id). Journal in a temp folder on this machine's disk.
//!
//! Run: `cargo bench -p mailroom-actors --bench recovery` (N=… to change the count).

use std::sync::Arc;
use std::time::{Duration, Instant};

use mailroom_actors::{
    Dispatcher, Journal, JournalSettings, Message, MessageId, Settings, Status, Storage,
};
use serde_json::json;

#[global_allocator]
static GLOBAL: mimalloc::MiMalloc = mimalloc::MiMalloc;

fn settings(n: usize) -> Settings {
    Settings {
        capacity: n * 2,
        max_results: n * 2,
        ..Settings::default()
    }
}

/// Runs `f` in an actix System of its own, stopped (dispatcher dropped, journal closed) after.
fn in_system<T: Send + 'static>(f: impl AsyncFnOnce() -> T + Send + 'static) -> T {
    std::thread::spawn(move || {
        let sys = actix::System::new();
        let out = sys.block_on(f());
        actix::System::current().stop();
        let _ = sys.run();
        out
    })
    .join()
    .unwrap()
}

/// Opens the journal once the last System's threads have let go of it (they stop shortly after
/// the System does).
fn open_when_free(path: &std::path::Path) -> Journal {
    let end = Instant::now() + Duration::from_secs(10);
    loop {
        match Journal::open(path, JournalSettings::default()) {
            Err(mailroom_actors::StorageError::InUse(_)) if Instant::now() < end => {
                std::thread::sleep(Duration::from_millis(1));
            }
            other => return other.unwrap(),
        }
    }
}

fn main() {
    let n: usize = std::env::var("N")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(100_000);
    let dir = tempfile::tempdir_in(env!("CARGO_TARGET_TMPDIR")).unwrap();
    let path = dir.path().to_owned();
    let (last, wrote) = in_system({
        let path = path.clone();
        async move || {
            let journal = Arc::new(Journal::open(&path, JournalSettings::default()).unwrap());
            let d = Dispatcher::builder(settings(n))
                .builtin_routes()
                .storage(journal.clone())
                .build()
                .unwrap();
            let t = Instant::now();
            let mut last = None;
            // In groups of 1,000 concurrent accepts (each durable before it returns).
            for chunk in 0..n.div_ceil(1000) {
                let msgs = (chunk * 1000..((chunk + 1) * 1000).min(n)).map(|i| {
                    Message::new("echo", json!({"order": i, "note": "due in an hour"}))
                        .delay(Duration::from_secs(3600))
                });
                let ids = futures_util::future::join_all(msgs.map(|m| d.accept(m))).await;
                last = ids.into_iter().last().map(|r| r.unwrap());
            }
            let wrote = t.elapsed();
            let report = d.shutdown(Duration::ZERO).await;
            assert_eq!(report.kept.len(), n);
            (last.unwrap(), (wrote, journal.stats()))
        }
    });
    let (wrote, stats) = wrote;
    let bytes = std::fs::read_dir(&path)
        .unwrap()
        .map(|e| e.unwrap().metadata().unwrap().len())
        .sum::<u64>();
    println!(
        "{n} delayed messages accepted durably in {:.2} s ({:.0} msg/s, {} fsyncs, {:.0} messages per fsync)",
        wrote.as_secs_f64(),
        n as f64 / wrote.as_secs_f64(),
        stats.fsyncs,
        n as f64 / stats.fsyncs.max(1) as f64
    );
    println!(
        "journal on disk: {bytes} bytes, {:.0} bytes per message",
        bytes as f64 / n as f64
    );
    let (open, build, back) = in_system(async move || {
        let t = Instant::now();
        let journal = open_when_free(&path);
        let open = t.elapsed();
        let d = Dispatcher::builder(settings(n))
            .builtin_routes()
            .storage(Arc::new(journal))
            .build()
            .unwrap();
        let build = t.elapsed();
        let o = d.status(last).expect("the last message is back");
        assert_eq!(o.status, Status::Delayed);
        assert_eq!(d.stats().in_flight(), n as u64);
        let _: MessageId = o.id;
        (open, build, t.elapsed())
    });
    println!(
        "recovery of {n} unfinished messages: journal opened and checked in {:.3} s; dispatcher built with every message back in {:.3} s (status readable at {:.3} s)",
        open.as_secs_f64(),
        build.as_secs_f64(),
        back.as_secs_f64()
    );
}
