//! Helpers shared by the behaviour tests.

use std::time::{Duration, Instant};

use mailroom_actors::{Dispatcher, LedgerSnapshot, Settings};

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
