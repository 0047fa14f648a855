//! The watchdog: reports a thread that runs a dispatcher's actors (an I/O arbiter, the System
//! arbiter when there are CPU routes, or a thread that runs the async routes too, such as an
//! HTTP worker: see [`Dispatcher::attach_current_arbiter`](crate::Dispatcher::attach_current_arbiter))
//! when it stops answering. An async processor that blocks instead of awaiting holds up every
//! other message on its thread, and on an HTTP worker every request too; asyncio's debug mode
//! reports slow callbacks the same way. Something else that holds a thread that long (a very
//! large `gather` admitted at once, a long recovery at start-up) is reported too.
//!
//! With a stall threshold ([`IoSettings::stall_warn`](crate::IoSettings::stall_warn)) above
//! zero, each watched thread stamps its [`Heartbeat`] every [`BEAT`], and one watchdog thread
//! per process looks at the stamps of every dispatcher's threads every [`BEAT`]: a stamp older
//! than the threshold counts one stall and logs a warning naming the thread, once per stall, and
//! a line when the thread answers again. The watchdog only observes: it never stops or restarts
//! anything. A thread whose stamping has stopped for good (its arbiter stopped, dropping its
//! heartbeat) is no longer watched. With a threshold of zero nothing is stamped or watched.

use std::sync::atomic::{AtomicBool, AtomicU64, Ordering::Relaxed};
use std::sync::{Arc, OnceLock, Weak};
use std::time::{Duration, Instant};

use parking_lot::Mutex;

/// How often a watched thread stamps its heartbeat, and how often the watchdog looks.
pub(crate) const BEAT: Duration = Duration::from_millis(50);

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

/// One dispatcher's watched threads and its stall count.
#[derive(Debug)]
pub(crate) struct Watch {
    epoch: Instant,
    stall: Duration,
    beats: Mutex<Vec<Arc<Heartbeat>>>,
    stalls: AtomicU64,
}

/// Every dispatcher's watch, looked at by the one watchdog thread.
static WATCHES: Mutex<Vec<Weak<Watch>>> = Mutex::new(Vec::new());
static WATCHDOG: OnceLock<()> = OnceLock::new();

impl Watch {
    /// A watch with no threads yet; with a `stall` threshold of zero, it watches nothing.
    pub(crate) fn new(stall: Duration) -> Arc<Watch> {
        let watch = Arc::new(Watch {
            epoch: Instant::now(),
            stall,
            beats: Mutex::new(Vec::new()),
            stalls: AtomicU64::new(0),
        });
        if !stall.is_zero() {
            WATCHES.lock().push(Arc::downgrade(&watch));
            WATCHDOG.get_or_init(|| {
                let spawned = std::thread::Builder::new()
                    .name("mailroom-watchdog".into())
                    .spawn(|| loop {
                        std::thread::sleep(BEAT);
                        // A watch is dropped with its dispatcher only: one with no thread
                        // watched yet may be about to get its first.
                        WATCHES.lock().retain(|w| w.upgrade().map(|w| w.look()).is_some());
                    });
                if let Err(e) = spawned {
                    tracing::error!(error = %e, "cannot start the watchdog thread; stalls will not be reported");
                }
            });
        }
        watch
    }

    /// A heartbeat for a thread named `thread`, watched from now on; `None` when the watchdog
    /// is off.
    pub(crate) fn heartbeat(&self, thread: String) -> Option<Arc<Heartbeat>> {
        if self.stall.is_zero() {
            return None;
        }
        let beat = Arc::new(Heartbeat {
            thread,
            epoch: self.epoch,
            at: AtomicU64::new(self.epoch.elapsed().as_millis() as u64),
            stalled: AtomicBool::new(false),
        });
        self.beats.lock().push(beat.clone());
        Some(beat)
    }

    /// Stalls seen so far.
    pub(crate) fn stalls(&self) -> u64 {
        self.stalls.load(Relaxed)
    }

    /// One look at every watched thread; whether any is still watched.
    fn look(&self) -> bool {
        let now = self.epoch.elapsed().as_millis() as u64;
        let stall = self.stall.as_millis() as u64;
        let mut beats = self.beats.lock();
        // A heartbeat held by the watch alone belongs to a thread that stopped stamping for good.
        beats.retain(|b| Arc::strong_count(b) > 1);
        for b in beats.iter() {
            let age = now.saturating_sub(b.at.load(Relaxed));
            if age > stall {
                if !b.stalled.swap(true, Relaxed) {
                    self.stalls.fetch_add(1, Relaxed);
                    tracing::warn!(
                        thread = %b.thread,
                        silent_ms = age,
                        threshold_ms = stall,
                        "a thread running Mailroom's actors has not answered: something on it \
                         blocks (blocking work belongs on a CPU route)"
                    );
                }
            } else if b.stalled.swap(false, Relaxed) {
                tracing::info!(thread = %b.thread, "the thread answers again");
            }
        }
        !beats.is_empty()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn look_for(watch: &Watch, d: Duration) {
        let t = Instant::now();
        while t.elapsed() < d {
            std::thread::sleep(BEAT);
            assert!(watch.look());
        }
    }

    #[test]
    fn a_silent_thread_is_one_stall_and_a_gone_one_is_no_longer_watched() {
        let watch = Watch::new(Duration::ZERO);
        assert!(
            watch.heartbeat("off".into()).is_none(),
            "a zero threshold watches nothing"
        );
        let watch = Watch {
            stall: Duration::from_millis(500),
            ..Arc::into_inner(watch).unwrap()
        };
        let beat = watch.heartbeat("worker".into()).unwrap();
        // Stamped at every look: no stall.
        for _ in 0..4 {
            beat.stamp();
            std::thread::sleep(BEAT);
            assert!(watch.look());
        }
        assert_eq!(watch.stalls(), 0);
        // Silent for longer than the threshold: one stall, however many looks see it.
        look_for(&watch, Duration::from_millis(700));
        assert_eq!(watch.stalls(), 1);
        // Back, then silent again: a second stall.
        beat.stamp();
        assert!(watch.look());
        look_for(&watch, Duration::from_millis(700));
        assert_eq!(watch.stalls(), 2);
        // Its thread gone: nothing left to watch.
        drop(beat);
        assert!(!watch.look());
    }
}
