//! A precise sleep for the built-in `sleep` (and `chaos`) processors: one thread keeps every
//! pending deadline in a heap and wakes each sleeper within about a tenth of a millisecond of
//! its deadline.
//!
//! tokio's timer counts in whole milliseconds: a deadline is rounded up to the next one, and the
//! event loop's `epoll_wait` rounds its timeout up again, so under load a 100 ms sleep ended
//! 1.3–1.5 ms late (the server's run-time histogram), and the sleeps that fell in one
//! millisecond all ended together, in a burst the event loop then answered one by one. Here the
//! thread waits on a futex for the deadline itself (the kernel's timer slack, 50 µs, is the
//! lateness) and wakes the sleeper's task on its own event loop. At 1,000 connections of
//! 100 ms sleeps that was about 2 % more requests a second (BENCHMARKS.md, "Issue 12, session
//! 21").
//!
//! Failure: nothing here fails. A sleep dropped before its deadline marks its entry stale and
//! lets go of its task's waker; stale entries are swept out once they outnumber half the heap
//! and 64 more, so just after a drop the heap holds at most twice the sleeps pending, plus 128
//! (a stale entry is a few dozen bytes, and leaves at its deadline or in the next sweep).

use std::cmp::Reverse;
use std::collections::BinaryHeap;
use std::future::Future;
use std::pin::Pin;
use std::sync::atomic::{AtomicU8, Ordering};
use std::sync::{Arc, OnceLock};
use std::task::{Context, Poll};
use std::time::{Duration, Instant};

use futures_util::task::AtomicWaker;
use parking_lot::{Condvar, Mutex};

/// Sleeps for `d`, counted from now: ends no earlier than that, and within about a tenth of a
/// millisecond after it when the machine is not overloaded.
pub(crate) fn sleep(d: Duration) -> Sleep {
    Sleep {
        deadline: Instant::now() + d,
        slot: None,
    }
}

/// The future of [`sleep`].
pub(crate) struct Sleep {
    deadline: Instant,
    /// Its entry in the heap, once polled before its deadline.
    slot: Option<Arc<Slot>>,
}

/// A sleep's entry: waiting, due (woken by the timer thread), or stale (dropped before).
const WAITING: u8 = 0;
const DUE: u8 = 1;
const STALE: u8 = 2;

/// What the timer thread and one sleeper share.
struct Slot {
    state: AtomicU8,
    waker: AtomicWaker,
}

/// One pending deadline (ordered by deadline, then by arrival).
struct Entry {
    at: Instant,
    seq: u64,
    slot: Arc<Slot>,
}

impl PartialEq for Entry {
    fn eq(&self, other: &Self) -> bool {
        (self.at, self.seq) == (other.at, other.seq)
    }
}
impl Eq for Entry {}
impl PartialOrd for Entry {
    fn partial_cmp(&self, other: &Self) -> Option<std::cmp::Ordering> {
        Some(self.cmp(other))
    }
}
impl Ord for Entry {
    fn cmp(&self, other: &Self) -> std::cmp::Ordering {
        (self.at, self.seq).cmp(&(other.at, other.seq))
    }
}

/// The heap (earliest first), and how many of its entries are stale.
#[derive(Default)]
struct Heap {
    entries: BinaryHeap<Reverse<Entry>>,
    next_seq: u64,
    stale: usize,
}

/// The heap and the timer thread's wake-up.
#[derive(Default)]
struct Timers {
    heap: Mutex<Heap>,
    changed: Condvar,
}

/// The process's timers; the thread starts with the first sleep.
fn timers() -> &'static Timers {
    static TIMERS: OnceLock<&'static Timers> = OnceLock::new();
    TIMERS.get_or_init(|| {
        let t: &'static Timers = Box::leak(Box::default());
        std::thread::Builder::new()
            .name("mailroom-timer".into())
            .spawn(move || t.run())
            .expect("the timer thread starts");
        t
    })
}

impl Timers {
    fn add(&self, at: Instant, slot: Arc<Slot>) {
        let mut h = self.heap.lock();
        let seq = h.next_seq;
        h.next_seq += 1;
        let earliest = h.entries.peek().is_none_or(|Reverse(e)| at < e.at);
        h.entries.push(Reverse(Entry { at, seq, slot }));
        drop(h);
        if earliest {
            self.changed.notify_one();
        }
    }

    /// A sleep dropped before its deadline: counted, and the stale entries swept out once they
    /// outnumber half the heap and 64 more (so stale ≤ live + 128).
    fn forget(&self) {
        let mut h = self.heap.lock();
        h.stale += 1;
        if h.stale > h.entries.len() / 2 + 64 {
            h.entries
                .retain(|Reverse(e)| e.slot.state.load(Ordering::Acquire) == WAITING);
            h.stale = 0;
        }
    }

    /// The thread: wakes each sleeper at its deadline, and sleeps until the next one.
    fn run(&self) {
        let mut due = Vec::new();
        let mut h = self.heap.lock();
        loop {
            let now = Instant::now();
            while h.entries.peek().is_some_and(|Reverse(e)| e.at <= now) {
                let Reverse(e) = h.entries.pop().expect("peeked");
                match e.slot.state.compare_exchange(
                    WAITING,
                    DUE,
                    Ordering::AcqRel,
                    Ordering::Acquire,
                ) {
                    Ok(_) => due.push(e.slot),
                    Err(_) => h.stale = h.stale.saturating_sub(1), // dropped: nothing to wake
                }
            }
            if !due.is_empty() {
                // Woken outside the lock: a wake-up may take a system call.
                drop(h);
                for slot in due.drain(..) {
                    slot.waker.wake();
                }
                h = self.heap.lock();
                continue;
            }
            match h.entries.peek().map(|Reverse(e)| e.at) {
                Some(at) => {
                    self.changed.wait_until(&mut h, at);
                }
                None => self.changed.wait(&mut h),
            }
        }
    }
}

impl Future for Sleep {
    type Output = ();

    fn poll(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<()> {
        if let Some(slot) = &self.slot {
            slot.waker.register(cx.waker());
            return match slot.state.load(Ordering::Acquire) {
                DUE => Poll::Ready(()),
                _ => Poll::Pending,
            };
        }
        if Instant::now() >= self.deadline {
            return Poll::Ready(());
        }
        let slot = Arc::new(Slot {
            state: AtomicU8::new(WAITING),
            waker: AtomicWaker::new(),
        });
        slot.waker.register(cx.waker());
        timers().add(self.deadline, slot.clone());
        self.slot = Some(slot);
        Poll::Pending
    }
}

impl Drop for Sleep {
    fn drop(&mut self) {
        if let Some(slot) = &self.slot {
            let was =
                slot.state
                    .compare_exchange(WAITING, STALE, Ordering::AcqRel, Ordering::Acquire);
            if was.is_ok() {
                drop(slot.waker.take()); // the task need not outlive its sleep
                timers().forget();
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[actix_rt::test]
    async fn a_sleep_ends_no_earlier_than_its_deadline() {
        let start = Instant::now();
        let ended = |ms| async move {
            sleep(Duration::from_millis(ms)).await;
            Instant::now()
        };
        let (a, b, c) = futures_util::join!(ended(30), ended(10), ended(20));
        assert!(a - start >= Duration::from_millis(30), "{:?}", a - start);
        assert!(b - start >= Duration::from_millis(10), "{:?}", b - start);
        assert!(c - start >= Duration::from_millis(20), "{:?}", c - start);
        // Zero (or a deadline already past) ends at once, with no entry.
        let mut z = std::pin::pin!(sleep(Duration::ZERO));
        assert!(futures_util::poll!(z.as_mut()).is_ready());
    }

    #[test]
    fn dropped_sleeps_are_swept_out_of_the_heap() {
        // A heap of its own (no thread): 10 sleeps that stay, then 1,000 of an hour each
        // added and dropped, as `Sleep`'s drop does.
        let t = Timers::default();
        let at = Instant::now() + Duration::from_secs(3600);
        let slot = || {
            Arc::new(Slot {
                state: AtomicU8::new(WAITING),
                waker: AtomicWaker::new(),
            })
        };
        for _ in 0..10 {
            t.add(at, slot());
        }
        for i in 0..1000 {
            let s = slot();
            t.add(at, s.clone());
            s.state.store(STALE, Ordering::Release);
            t.forget();
            // At most twice the live entries and 128 stale ones, after every drop.
            let len = t.heap.lock().entries.len();
            assert!(len <= 2 * 10 + 128, "{len} entries after {i} drops");
        }
        let h = t.heap.lock();
        let live = h
            .entries
            .iter()
            .filter(|Reverse(e)| e.slot.state.load(Ordering::Acquire) == WAITING)
            .count();
        assert_eq!(live, 10);
    }
}
