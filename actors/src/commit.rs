//! The commit of a message that began before its `Accepted` record was on disk (a pure
//! message, see [`Processor::pure`](crate::Processor::pure) and
//! [`Processor::pure_when`](crate::Processor::pure_when)): set once, by whoever waits for
//! the record's receipt, and read by whoever ends the attempt before it does. Nothing of such a
//! message is shown (its outcome written, counted or told) until the commit says the record is
//! durable.
//!
//! With durable storage a message with an idempotency key has one too, kept beside its key:
//! set from its record's receipt by a task of its own (whether or not its caller waits), and
//! waited for by a duplicate of the key, which is answered only once it is set, and refused if
//! the record could not be written.
//!
//! Failure: a commit set to an error means the record could not be written; whoever ends the
//! attempt (its worker or CPU pool thread, or
//! [`Ledger::undeliverable`](crate::ledger::Ledger::undeliverable) when the route stopped) then
//! takes the message back (it leaves no trace) instead of settling it. Steps waiting for a
//! commit ([`Commit::then`]: a `Started` record, a settlement) run in the order they were added.
//! A commit whose setter is dropped before its receipt is settled is set by a task that waits
//! for the receipt (or, failing that, a thread; failing both, to [`StorageError::Closed`]).

use std::sync::atomic::{AtomicU8, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};

use tokio::sync::Notify;

use crate::storage::{Step, StorageError};

/// Whether a message's `Accepted` record reached the disk: unknown until [`Commit::set`].
#[derive(Default)]
pub(crate) struct Commit {
    state: Mutex<State>,
    notify: Notify,
    /// The result's kind, readable without the lock ([`UNKNOWN`], [`DURABLE`] or [`FAILED`]):
    /// a message's attempt asks several times, and by then it is nearly always known durable.
    known: AtomicU8,
}

/// [`Commit::known`]: not set yet.
const UNKNOWN: u8 = 0;
/// [`Commit::known`]: set to `Ok`.
const DURABLE: u8 = 1;
/// [`Commit::known`]: set to an error (the error itself is in the state).
const FAILED: u8 = 2;

#[derive(Default)]
struct State {
    result: Option<Result<(), StorageError>>,
    /// Steps waiting for the result ([`Commit::then`]).
    steps: Vec<Step>,
    /// [`Commit::set`] is running the waiting steps: a step added meanwhile joins them, after
    /// those before it (so steps run in the order they were added).
    running: bool,
}

impl std::fmt::Debug for Commit {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Commit")
            .field("result", &self.lock().result)
            .finish_non_exhaustive()
    }
}

impl Commit {
    /// An unset commit, shared by the admission that sets it and the envelope that reads it.
    pub(crate) fn new() -> Arc<Commit> {
        Arc::new(Commit::default())
    }

    fn lock(&self) -> MutexGuard<'_, State> {
        // Steps run outside the lock, so it is never poisoned by one; nothing else panics.
        self.state.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Records the receipt's result, wakes whoever waits and runs the steps waiting for it, in
    /// the order they were added, on this thread; only the first call counts.
    pub(crate) fn set(&self, result: Result<(), StorageError>) {
        let mut state = self.lock();
        if state.result.is_some() {
            return;
        }
        state.result = Some(result.clone());
        let known = if result.is_ok() { DURABLE } else { FAILED };
        self.known.store(known, Ordering::Release);
        state.running = true;
        loop {
            let steps = std::mem::take(&mut state.steps);
            if steps.is_empty() {
                state.running = false;
                break;
            }
            drop(state);
            for step in steps {
                step(result.clone());
            }
            state = self.lock();
        }
        drop(state);
        self.notify.notify_waiters();
    }

    /// The result, if it is known.
    pub(crate) fn get(&self) -> Option<Result<(), StorageError>> {
        match self.known.load(Ordering::Acquire) {
            UNKNOWN => None,
            DURABLE => Some(Ok(())),
            _ => self.lock().result.clone(),
        }
    }

    /// Whether the result is not known yet.
    pub(crate) fn is_pending(&self) -> bool {
        self.known.load(Ordering::Acquire) == UNKNOWN
    }

    /// Waits (async) until the result is known.
    pub(crate) async fn settled(&self) {
        loop {
            let notified = self.notify.notified();
            tokio::pin!(notified);
            notified.as_mut().enable();
            if self.get().is_some() {
                return;
            }
            notified.await;
        }
    }

    /// Runs `step` with the result: now, on this thread, if it is known and every step added
    /// before has run; else on the thread that sets it, after those. Nothing waits, so no thread
    /// is held or started for it.
    pub(crate) fn then(&self, step: impl FnOnce(Result<(), StorageError>) + Send + 'static) {
        let mut state = self.lock();
        match state.result.clone() {
            Some(result) if !state.running => {
                drop(state);
                step(result);
            }
            _ => state.steps.push(Box::new(step)),
        }
    }
}

/// Where a message stands with its `Accepted` record, for whoever begins its attempt.
pub(crate) enum Standing<'a> {
    /// Known durable, or the message did not begin early (it has no commit).
    Durable,
    /// Still on its way: what must wait for it waits on this commit.
    Pending(&'a Arc<Commit>),
    /// It could not be written: the message is refused, and is not to run.
    Failed,
}

/// Where the message whose commit is `commit` stands (see [`Standing`]).
pub(crate) fn standing(commit: &Option<Arc<Commit>>) -> Standing<'_> {
    match commit {
        None => Standing::Durable,
        Some(c) => match c.get() {
            Some(Ok(())) => Standing::Durable,
            None => Standing::Pending(c),
            Some(Err(_)) => Standing::Failed,
        },
    }
}

/// Sets a commit from a receipt it owns: by [`Setter::resolve`], or, if dropped first (the
/// caller's future went away while it waited), by a task on `arbiter` (see
/// [`Receipt::then_on`](crate::storage::Receipt::then_on)). So a commit is always set.
pub(crate) struct Setter<'a> {
    pub(crate) commit: Arc<Commit>,
    pub(crate) receipt: Option<crate::storage::Receipt>,
    /// Where to finish waiting if the caller goes away.
    pub(crate) arbiter: Option<&'a actix_rt::ArbiterHandle>,
}

impl Setter<'_> {
    /// Waits for the receipt and sets the commit; returns the receipt's result.
    pub(crate) async fn resolve(mut self) -> Result<(), StorageError> {
        // The receipt stays in `self` while it is waited for: if this future is dropped, `drop`
        // waits for it instead.
        let receipt = self.receipt.as_mut().expect("taken only here or on drop");
        let result = receipt.wait().await;
        self.receipt = None;
        self.commit.set(result.clone());
        result
    }
}

impl Drop for Setter<'_> {
    fn drop(&mut self) {
        let Some(receipt) = self.receipt.take() else {
            return;
        };
        let commit = self.commit.clone();
        receipt.then_on(self.arbiter, move |result| commit.set(result));
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[actix_rt::test]
    async fn a_commit_wakes_its_waiters_once_set_and_keeps_its_first_result() {
        let commit = Commit::new();
        assert!(commit.get().is_none() && commit.is_pending());
        let waiting = {
            let c = commit.clone();
            actix_rt::spawn(async move { c.settled().await })
        };
        commit.set(Err(StorageError::Closed));
        commit.set(Ok(()));
        waiting.await.unwrap();
        assert!(matches!(commit.get(), Some(Err(StorageError::Closed))));
        assert!(!commit.is_pending());
        let durable = Commit::new();
        durable.set(Ok(()));
        durable.set(Err(StorageError::Closed));
        assert!(matches!(durable.get(), Some(Ok(()))) && !durable.is_pending());
    }

    #[test]
    fn a_step_runs_once_with_the_first_result_whether_it_came_before_or_after() {
        use std::sync::atomic::{AtomicUsize, Ordering::SeqCst};
        let commit = Commit::new();
        let ran = Arc::new(Mutex::new(Vec::new()));
        let before = ran.clone();
        commit.then(move |r| before.lock().unwrap().push(("before", r.is_ok())));
        assert!(
            ran.lock().unwrap().is_empty(),
            "nothing runs before the result"
        );
        // Set from another thread: the step runs there.
        let c = commit.clone();
        std::thread::spawn(move || c.set(Ok(()))).join().unwrap();
        commit.set(Err(StorageError::Closed)); // too late: runs nothing
        let after = ran.clone();
        commit.then(move |r| after.lock().unwrap().push(("after", r.is_ok())));
        assert_eq!(*ran.lock().unwrap(), [("before", true), ("after", true)]);
        // A step may add another (it runs outside the lock).
        let count = Arc::new(AtomicUsize::new(0));
        let failed = Commit::new();
        let (f, n) = (failed.clone(), count.clone());
        failed.then(move |r| {
            assert!(r.is_err());
            let n2 = n.clone();
            f.then(move |_| {
                n2.fetch_add(1, SeqCst);
            });
            n.fetch_add(1, SeqCst);
        });
        failed.set(Err(StorageError::Closed));
        assert_eq!(count.load(SeqCst), 2);
    }

    #[test]
    fn a_step_added_from_another_thread_while_the_steps_run_runs_after_them() {
        let order = Arc::new(Mutex::new(Vec::new()));
        let commit = Commit::new();
        let (c, o) = (commit.clone(), order.clone());
        commit.then(move |_| {
            // Another thread adds a step while this one runs: it must wait its turn.
            let (c, o2) = (c.clone(), o.clone());
            std::thread::spawn(move || c.then(move |_| o2.lock().unwrap().push("second")))
                .join()
                .unwrap();
            o.lock().unwrap().push("first");
        });
        commit.set(Ok(()));
        assert_eq!(*order.lock().unwrap(), ["first", "second"]);
    }
}
