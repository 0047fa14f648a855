//! The ledger: per-kind counters, gauges and a latency histogram, updated with relaxed atomics on
//! the hot path and read as a [`LedgerSnapshot`] that the server renders as Prometheus text.
//!
//! Each accepted message bumps `accepted` and `in_flight`; each terminal transition bumps exactly
//! one finished counter and drops `in_flight`. So whenever no transition is half-way through,
//! `accepted = completed + failed + timed_out + cancelled + dead + in_flight` holds exactly; a
//! snapshot taken under load can be off by the transitions in progress at that instant.

use std::sync::atomic::{AtomicU64, Ordering::Relaxed};
use std::time::Duration;

use serde::Serialize;

use crate::envelope::{Kind, Status};

/// Upper bounds (seconds) of the latency histogram's buckets; a final `+Inf` bucket is implied.
pub const LATENCY_BUCKETS: [f64; 16] = [
    0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0,
    60.0,
];

/// A fixed-bucket histogram of durations.
#[derive(Debug, Default)]
pub(crate) struct Histogram {
    buckets: [AtomicU64; LATENCY_BUCKETS.len() + 1],
    sum_micros: AtomicU64,
}

impl Histogram {
    pub(crate) fn observe(&self, d: Duration) {
        let secs = d.as_secs_f64();
        let i = LATENCY_BUCKETS.partition_point(|&b| b < secs);
        self.buckets[i].fetch_add(1, Relaxed);
        self.sum_micros.fetch_add(d.as_micros() as u64, Relaxed);
    }

    fn snapshot(&self) -> HistogramSnapshot {
        let mut cumulative = Vec::with_capacity(self.buckets.len());
        let mut acc = 0;
        for b in &self.buckets {
            acc += b.load(Relaxed);
            cumulative.push(acc);
        }
        HistogramSnapshot {
            bounds: LATENCY_BUCKETS.to_vec(),
            cumulative,
            count: acc,
            sum_seconds: self.sum_micros.load(Relaxed) as f64 / 1e6,
        }
    }
}

/// A histogram as read at one moment.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct HistogramSnapshot {
    /// Bucket upper bounds in seconds (without `+Inf`).
    pub bounds: Vec<f64>,
    /// Cumulative counts, one per bound plus a final one for `+Inf` (equal to `count`).
    pub cumulative: Vec<u64>,
    /// Observations.
    pub count: u64,
    /// Sum of the observed durations, in seconds.
    pub sum_seconds: f64,
}

/// Why admission refused a message, for the `rejected` counters.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum RejectReason {
    Full,
    Degraded,
    Draining,
    Invalid,
    ClientShare,
    Storage,
}

/// The live counters of one route.
#[derive(Debug, Default)]
pub(crate) struct RouteStats {
    pub accepted: AtomicU64,
    pub completed: AtomicU64,
    pub failed: AtomicU64,
    pub timed_out: AtomicU64,
    pub cancelled: AtomicU64,
    pub dead: AtomicU64,
    pub retried: AtomicU64,
    pub rejected_full: AtomicU64,
    pub rejected_degraded: AtomicU64,
    pub rejected_draining: AtomicU64,
    pub rejected_invalid: AtomicU64,
    pub rejected_client_share: AtomicU64,
    pub rejected_storage: AtomicU64,
    /// queued + delayed + running; also the admission counter checked against capacity.
    pub in_flight: AtomicU64,
    pub running: AtomicU64,
    /// Held by a router until their time (delayed messages and retries in backoff).
    pub delayed: AtomicU64,
    pub restarts: AtomicU64,
    pub duration: Histogram,
    /// Running time of the last attempt of finished messages that ran.
    pub run: Histogram,
}

impl RouteStats {
    pub(crate) fn rejected(&self, reason: RejectReason) {
        let c = match reason {
            RejectReason::Full => &self.rejected_full,
            RejectReason::Degraded => &self.rejected_degraded,
            RejectReason::Draining => &self.rejected_draining,
            RejectReason::Invalid => &self.rejected_invalid,
            RejectReason::ClientShare => &self.rejected_client_share,
            RejectReason::Storage => &self.rejected_storage,
        };
        c.fetch_add(1, Relaxed);
    }

    /// Counts a terminal transition and releases the message's place in the route; `run` is
    /// the running time of its last attempt, if it ran.
    pub(crate) fn finished(&self, status: Status, total: Duration, run: Option<Duration>) {
        let c = match status {
            Status::Completed => &self.completed,
            Status::Failed => &self.failed,
            Status::TimedOut => &self.timed_out,
            Status::Cancelled => &self.cancelled,
            Status::Dead => &self.dead,
            Status::Queued | Status::Delayed | Status::Running => return,
        };
        c.fetch_add(1, Relaxed);
        self.in_flight.fetch_sub(1, Relaxed);
        self.duration.observe(total);
        if let Some(run) = run {
            self.run.observe(run);
        }
    }

    pub(crate) fn snapshot(&self, kind: Kind, processor: &str) -> KindStats {
        // Finished counters first, then in_flight, then accepted: a message that finishes while
        // we read is then counted at most once on each side.
        let completed = self.completed.load(Relaxed);
        let failed = self.failed.load(Relaxed);
        let timed_out = self.timed_out.load(Relaxed);
        let cancelled = self.cancelled.load(Relaxed);
        let dead = self.dead.load(Relaxed);
        let in_flight = self.in_flight.load(Relaxed);
        let running = self.running.load(Relaxed).min(in_flight);
        let delayed = self.delayed.load(Relaxed).min(in_flight - running);
        KindStats {
            kind,
            processor: processor.to_owned(),
            accepted: self.accepted.load(Relaxed),
            completed,
            failed,
            timed_out,
            cancelled,
            dead,
            retried: self.retried.load(Relaxed),
            rejected: Rejections {
                full: self.rejected_full.load(Relaxed),
                degraded: self.rejected_degraded.load(Relaxed),
                draining: self.rejected_draining.load(Relaxed),
                invalid: self.rejected_invalid.load(Relaxed),
                client_share: self.rejected_client_share.load(Relaxed),
                storage: self.rejected_storage.load(Relaxed),
            },
            in_flight,
            running,
            delayed,
            queue_depth: in_flight - running,
            restarts: self.restarts.load(Relaxed),
            duration: self.duration.snapshot(),
            run_time: self.run.snapshot(),
        }
    }
}

/// Rejections of one kind, by reason.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Default)]
pub struct Rejections {
    /// The route was at capacity.
    pub full: u64,
    /// The route was degraded by crash-looping.
    pub degraded: u64,
    /// The dispatcher was shutting down.
    pub draining: u64,
    /// The payload or timing was invalid.
    pub invalid: u64,
    /// The message's client held its share of the route.
    pub client_share: u64,
    /// The message's record could not be written to storage.
    pub storage: u64,
}

/// One kind's ledger at one moment.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct KindStats {
    /// The route key.
    pub kind: Kind,
    /// The processor behind it.
    pub processor: String,
    /// Messages accepted.
    pub accepted: u64,
    /// Finished `completed`.
    pub completed: u64,
    /// Finished `failed`.
    pub failed: u64,
    /// Finished `timed_out`.
    pub timed_out: u64,
    /// Finished `cancelled`.
    pub cancelled: u64,
    /// Finished `dead`.
    pub dead: u64,
    /// Attempts that were retried.
    pub retried: u64,
    /// Messages refused at admission, by reason.
    pub rejected: Rejections,
    /// Accepted and not finished: queued + delayed + running.
    pub in_flight: u64,
    /// Running now.
    pub running: u64,
    /// Waiting for their time (delayed messages and retries in backoff): part of `queue_depth`.
    pub delayed: u64,
    /// Waiting (queued or delayed): `in_flight - running`.
    pub queue_depth: u64,
    /// Processor restarts after panics.
    pub restarts: u64,
    /// Acceptance-to-finish latency of finished messages.
    pub duration: HistogramSnapshot,
    /// Running time of the last attempt of finished messages that ran (not of cancelled ones).
    pub run_time: HistogramSnapshot,
}

impl KindStats {
    /// Sum of the finished counters.
    pub fn finished(&self) -> u64 {
        self.completed + self.failed + self.timed_out + self.cancelled + self.dead
    }

    /// Count of messages that finished with `status` (0 for non-terminal statuses).
    pub fn finished_with(&self, status: Status) -> u64 {
        match status {
            Status::Completed => self.completed,
            Status::Failed => self.failed,
            Status::TimedOut => self.timed_out,
            Status::Cancelled => self.cancelled,
            Status::Dead => self.dead,
            _ => 0,
        }
    }

    /// Waiting for a worker, not for their time: `queue_depth - delayed`.
    pub fn queued(&self) -> u64 {
        self.queue_depth.saturating_sub(self.delayed)
    }

    /// Whether `accepted = completed + failed + timed_out + cancelled + dead + in_flight`.
    pub fn identity_holds(&self) -> bool {
        self.accepted == self.finished() + self.in_flight
    }
}

/// The whole ledger at one moment.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct LedgerSnapshot {
    /// One entry per route, in routing-table order.
    pub kinds: Vec<KindStats>,
    /// Submissions refused because no route has their kind (not labelled by kind, to keep
    /// arbitrary client input out of metric labels).
    pub rejected_no_route: u64,
    /// Submissions refused before they named a routable kind: malformed JSON or envelope (a
    /// source reports them with [`Dispatcher::refused_malformed`](crate::Dispatcher::refused_malformed)).
    pub rejected_malformed: u64,
    /// Outcomes currently held by the store.
    pub stored: u64,
    /// Dead letters currently held.
    pub dead_letters: u64,
    /// What the storage has written (all zero in memory).
    pub storage: crate::storage::StorageStats,
    /// Times a thread running the dispatcher's actors stopped answering for longer than
    /// [`IoSettings::stall_warn`](crate::IoSettings::stall_warn) (see the watchdog).
    pub stalls: u64,
}

impl LedgerSnapshot {
    /// The entry for `kind`.
    pub fn kind(&self, kind: &str) -> Option<&KindStats> {
        self.kinds.iter().find(|k| k.kind.as_str() == kind)
    }

    /// Messages in flight over all routes.
    pub fn in_flight(&self) -> u64 {
        self.kinds.iter().map(|k| k.in_flight).sum()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn histogram_buckets_are_cumulative() {
        let h = Histogram::default();
        h.observe(Duration::from_micros(100));
        h.observe(Duration::from_millis(3));
        h.observe(Duration::from_secs(100));
        let s = h.snapshot();
        assert_eq!(s.count, 3);
        assert_eq!(s.cumulative[0], 1, "0.1 ms is in the 0.5 ms bucket");
        assert_eq!(s.cumulative[3], 2, "3 ms is in the 5 ms bucket");
        assert_eq!(
            s.cumulative[LATENCY_BUCKETS.len() - 1],
            2,
            "100 s is past 60 s"
        );
        assert_eq!(*s.cumulative.last().unwrap(), 3);
    }
}
