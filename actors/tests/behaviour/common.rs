//! Helpers shared by the behaviour tests.

use std::sync::atomic::{AtomicUsize, Ordering::SeqCst};
use std::sync::Arc;
use std::time::{Duration, Instant};

use mailroom_actors::{
    Dispatcher, DispatcherBuilder, Journal, JournalSettings, LedgerSnapshot, Processor, Settings,
};
use serde_json::Value;
use tokio::sync::Semaphore;

/// Whether this run of the suite gives every dispatcher a journal: the suite is built twice,
/// as `behaviour` (in memory) and `behaviour_journal` (each dispatcher with a journal of its
/// own in a fresh folder), so the same behaviour is checked against both storage kinds.
pub const JOURNAL: bool = matches!(env!("CARGO_CRATE_NAME").as_bytes(), b"behaviour_journal");

/// `Dispatcher::builder(settings)`, with a journal in a fresh folder when [`JOURNAL`].
///
/// The folder is kept after the test (the dispatcher may outlive the test's scope), so each is
/// small (4 MiB segments: a segment is allocated ahead to its full size), and the first journal
/// a run makes removes those that runs at least an hour old left behind; without both, every
/// run of the suite left about 3 GB of journals in the target folder.
pub fn builder(settings: Settings) -> DispatcherBuilder {
    let b = Dispatcher::builder(settings);
    if !JOURNAL {
        return b;
    }
    let tmp = std::path::Path::new(env!("CARGO_TARGET_TMPDIR"));
    static SWEEP: std::sync::Once = std::sync::Once::new();
    SWEEP.call_once(|| remove_old_journals(tmp, Duration::from_secs(3600)));
    let dir = tempfile::Builder::new()
        .prefix("journal-")
        .tempdir_in(tmp)
        .unwrap()
        .keep();
    let journal = JournalSettings {
        segment_bytes: 4 << 20,
        ..JournalSettings::default()
    };
    b.storage(Arc::new(Journal::open(dir, journal).unwrap()))
}

/// Removes the `journal-*` folders in `tmp` last changed more than `age` ago (left by earlier
/// runs: no run of the suite lasts that long). Best effort: what cannot be read or removed stays.
fn remove_old_journals(tmp: &std::path::Path, age: Duration) {
    let Ok(entries) = std::fs::read_dir(tmp) else {
        return;
    };
    for entry in entries.flatten() {
        let old = entry
            .metadata()
            .and_then(|m| m.modified())
            .is_ok_and(|t| t.elapsed().is_ok_and(|e| e > age));
        if old && entry.file_name().to_string_lossy().starts_with("journal-") {
            let _ = std::fs::remove_dir_all(entry.path());
        }
    }
}

/// Settings for tests: small pools, quick restarts.
pub fn settings() -> Settings {
    let mut s = Settings::default();
    s.cpu.threads = 2;
    s.restart.backoff = Duration::from_millis(1);
    s
}

/// Polls `cond` every 2 ms until it holds or `deadline` passes; returns whether it held.
pub async fn eventually(deadline: Duration, mut cond: impl FnMut() -> bool) -> bool {
    let end = Instant::now() + deadline;
    loop {
        if cond() {
            return true;
        }
        if Instant::now() >= end {
            return false;
        }
        actix_rt::time::sleep(Duration::from_millis(2)).await;
    }
}

/// Waits until nothing is in flight, then checks the ledger identity for every kind.
pub async fn settled(d: &Dispatcher) -> LedgerSnapshot {
    assert!(
        eventually(Duration::from_secs(10), || d.stats().in_flight() == 0).await,
        "messages still in flight: {:?}",
        d.stats()
    );
    let stats = d.stats();
    for k in &stats.kinds {
        assert!(
            k.identity_holds(),
            "ledger identity broken for {}: {k:?}",
            k.kind
        );
    }
    stats
}

/// A gate the test opens, standing in for slow work: each message waits at it, and the gate
/// counts how many wait at once (and the most that ever did).
pub struct Gate {
    pub permits: Semaphore,
    pub running: AtomicUsize,
    pub most: AtomicUsize,
}

impl Default for Gate {
    fn default() -> Self {
        Gate {
            permits: Semaphore::new(0),
            running: AtomicUsize::new(0),
            most: AtomicUsize::new(0),
        }
    }
}

impl Gate {
    pub fn open(&self) {
        self.permits.add_permits(Semaphore::MAX_PERMITS / 2);
    }
}

/// An async processor that waits at `gate`, then echoes its payload.
pub fn gated(gate: &Arc<Gate>) -> Processor {
    let gate = gate.clone();
    Processor::from_fn("gated", move |_job, p: Value| {
        let gate = gate.clone();
        async move {
            let now = gate.running.fetch_add(1, SeqCst) + 1;
            gate.most.fetch_max(now, SeqCst);
            let _permit = gate.permits.acquire().await.expect("never closed");
            gate.running.fetch_sub(1, SeqCst);
            Ok(p)
        }
    })
}
