//! Helpers shared by the behaviour tests.

use std::time::{Duration, Instant};

use std::sync::Arc;

use mailroom_actors::{
    Dispatcher, DispatcherBuilder, Journal, JournalSettings, LedgerSnapshot, Settings,
};

/// Whether this run of the suite gives every dispatcher a journal: the suite is built twice,
/// as `behaviour` (in memory) and `behaviour_journal` (each dispatcher with a journal of its
/// own in a fresh folder), so the same behaviour is checked against both storage kinds.
pub const JOURNAL: bool = matches!(env!("CARGO_CRATE_NAME").as_bytes(), b"behaviour_journal");

/// `Dispatcher::builder(settings)`, with a journal in a fresh folder when [`JOURNAL`].
pub fn builder(settings: Settings) -> DispatcherBuilder {
    let b = Dispatcher::builder(settings);
    if !JOURNAL {
        return b;
    }
    let dir = tempfile::Builder::new()
        .prefix("journal-")
        .tempdir_in(env!("CARGO_TARGET_TMPDIR"))
        .unwrap()
        .keep();
    b.storage(Arc::new(
        Journal::open(dir, JournalSettings::default()).unwrap(),
    ))
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
