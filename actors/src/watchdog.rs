//! The watchdog: reports a thread that runs the dispatcher's actors (an I/O arbiter, the System
//! arbiter when there are CPU routes, or a thread that runs the async routes too, such as an
//! HTTP worker: see [`Dispatcher::attach_current_arbiter`](crate::Dispatcher::attach_current_arbiter))
//! when it stops answering. An async processor that blocks instead of awaiting holds up every
//! other message on its thread, and on an HTTP worker every request too; asyncio's debug mode
//! reports slow callbacks the same way.
//!
//! Every router stamps its thread's [`Heartbeat`] each [`BEAT`]. One watchdog thread per
//! dispatcher reads the stamps each [`BEAT`]; a stamp older than the stall threshold
//! ([`IoSettings::stall_warn`](crate::IoSettings::stall_warn)) counts one stall and logs a
//! warning naming the thread, once per stall, and a line when the thread answers again. The
//! watchdog only observes: it never stops or restarts anything. It ends when every thread it
//! watches has stopped (their routers are gone) or the dispatcher is dropped.

use std::sync::atomic::{AtomicBool, AtomicU64, Ordering::Relaxed};
use std::sync::{Arc, Weak};
use std::time::{Duration, Instant};

use parking_lot::Mutex;

/// How often a router stamps its heartbeat, and how often the watchdog looks.
pub(crate) const BEAT: Duration = Duration::from_millis(25);

/// One watched thread's last sign of life.
#[derive(Debug)]
pub(crate) struct Heartbeat {
    /// The thread's name (for the warning).
    thread: String,
    epoch: Instant,
    /// Milliseconds since `epoch` at the last stamp.
    at: AtomicU64,
    stalled: AtomicBool,
}

impl Heartbeat {
    /// Stamps now.
    pub(crate) fn stamp(&self) {
        self.at
            .store(self.epoch.elapsed().as_millis() as u64, Relaxed);
    }
}

/// The watched threads and the stall count, shared by the dispatcher and its watchdog thread.
#[derive(Debug)]
pub(crate) struct Watch {
    epoch: Instant,
    stall: Duration,
    beats: Mutex<Vec<Arc<Heartbeat>>>,
    stalls: AtomicU64,
}

impl Watch {
    /// A watch with no threads yet; `stall` of zero watches nothing.
    pub(crate) fn new(stall: Duration) -> Arc<Watch> {
        Arc::new(Watch {
            epoch: Instant::now(),
            stall,
            beats: Mutex::new(Vec::new()),
            stalls: AtomicU64::new(0),
        })
    }

    /// A heartbeat for a thread named `thread`, watched from now on.
    pub(crate) fn heartbeat(&self, thread: String) -> Arc<Heartbeat> {
        let beat = Arc::new(Heartbeat {
            thread,
            epoch: self.epoch,
            at: AtomicU64::new(self.epoch.elapsed().as_millis() as u64),
            stalled: AtomicBool::new(false),
        });
        self.beats.lock().push(beat.clone());
        beat
    }

    /// Stalls seen so far.
    pub(crate) fn stalls(&self) -> u64 {
        self.stalls.load(Relaxed)
    }

    /// Starts the watchdog thread (nothing when the threshold is zero).
    pub(crate) fn start(self: &Arc<Watch>) {
        if self.stall.is_zero() {
            return;
        }
        let watch = Arc::downgrade(self);
        let spawned = std::thread::Builder::new()
            .name("mailroom-watchdog".into())
            .spawn(move || while look(&watch) {});
        if let Err(e) = spawned {
            tracing::error!(error = %e, "cannot start the watchdog thread; stalls will not be reported");
        }
    }
}

/// One look after one beat; false once there is nothing left to watch.
fn look(watch: &Weak<Watch>) -> bool {
    std::thread::sleep(BEAT);
    let Some(watch) = watch.upgrade() else {
        return false;
    };
    let now = watch.epoch.elapsed().as_millis() as u64;
    let stall = watch.stall.as_millis() as u64;
    let mut beats = watch.beats.lock();
    // A heartbeat held by the watch alone belongs to a router that is gone with its thread.
    beats.retain(|b| Arc::strong_count(b) > 1);
    for b in beats.iter() {
        let age = now.saturating_sub(b.at.load(Relaxed));
        if age > stall {
            if !b.stalled.swap(true, Relaxed) {
                watch.stalls.fetch_add(1, Relaxed);
                tracing::warn!(
                    thread = %b.thread,
                    silent_ms = age,
                    threshold_ms = stall,
                    "a thread running Mailroom's actors has not answered: something on it blocks \
                     (blocking work belongs on a CPU route)"
                );
            }
        } else if b.stalled.swap(false, Relaxed) {
            tracing::info!(thread = %b.thread, "the thread answers again");
        }
    }
    !beats.is_empty()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_silent_thread_is_one_stall_and_a_gone_one_ends_the_watch() {
        let watch = Watch::new(Duration::from_millis(500));
        let beat = watch.heartbeat("worker".into());
        let weak = Arc::downgrade(&watch);
        // Stamped at every look: no stall.
        for _ in 0..4 {
            beat.stamp();
            assert!(look(&weak));
        }
        assert_eq!(watch.stalls(), 0);
        // Silent for longer than the threshold: one stall, however many looks see it.
        let silent = Instant::now();
        while silent.elapsed() < Duration::from_millis(700) {
            assert!(look(&weak));
        }
        assert_eq!(watch.stalls(), 1);
        // Back, then silent again: a second stall.
        beat.stamp();
        assert!(look(&weak));
        let silent = Instant::now();
        while silent.elapsed() < Duration::from_millis(700) {
            assert!(look(&weak));
        }
        assert_eq!(watch.stalls(), 2);
        // Its router gone: nothing left to watch.
        drop(beat);
        assert!(!look(&weak));
    }
}
