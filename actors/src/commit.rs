//! The commit of a message that began before its `Accepted` record was on disk (a pure
//! processor's, see [`Processor::pure`](crate::Processor::pure)): set once, by whoever waits for
//! the record's receipt, and read by the worker before it settles the attempt. Nothing of such a
//! message is shown (its outcome written, counted or told) until the commit says the record is
//! durable.
//!
//! Failure: a commit set to an error means the record could not be written; the worker then
//! takes the message back (it leaves no trace) instead of settling it. A commit whose setter
//! cannot start the thread that waits for it is set to [`StorageError::Closed`].

use std::sync::{Arc, Condvar, Mutex};

use tokio::sync::Notify;

use crate::storage::StorageError;

/// Whether a message's `Accepted` record reached the disk: unknown until [`Commit::set`].
#[derive(Debug, Default)]
pub(crate) struct Commit {
    state: Mutex<Option<Result<(), StorageError>>>,
    set: Condvar,
    notify: Notify,
}

impl Commit {
    /// An unset commit, shared by the admission that sets it and the envelope that reads it.
    pub(crate) fn new() -> Arc<Commit> {
        Arc::new(Commit::default())
    }

    /// Records the receipt's result and wakes whoever waits; only the first call counts.
    pub(crate) fn set(&self, result: Result<(), StorageError>) {
        let mut state = self.state.lock().unwrap_or_else(|p| p.into_inner());
        if state.is_none() {
            *state = Some(result);
        }
        drop(state);
        self.set.notify_all();
        self.notify.notify_waiters();
    }

    /// The result, if it is known.
    pub(crate) fn get(&self) -> Option<Result<(), StorageError>> {
        self.state.lock().unwrap_or_else(|p| p.into_inner()).clone()
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

    /// Waits (blocking the thread) until the result is known, and returns it.
    pub(crate) fn wait_blocking(&self) -> Result<(), StorageError> {
        let mut state = self.state.lock().unwrap_or_else(|p| p.into_inner());
        loop {
            if let Some(r) = state.as_ref() {
                return r.clone();
            }
            state = self.set.wait(state).unwrap_or_else(|p| p.into_inner());
        }
    }
}

/// Runs `then` with the commit's result: at once if it is known, else once it is, on a thread of
/// its own (never on this one, which may be the one that sets it). If that thread cannot be
/// started, `then` is dropped unrun, and the error logged.
pub(crate) fn then(
    commit: Arc<Commit>,
    then: impl FnOnce(Result<(), StorageError>) + Send + 'static,
) {
    if let Some(result) = commit.get() {
        return then(result);
    }
    let spawned = std::thread::Builder::new()
        .name("mailroom-settle".into())
        .spawn(move || then(commit.wait_blocking()));
    if let Err(e) = spawned {
        tracing::error!(error = %e, "cannot start a thread to wait for a message's commit");
    }
}

/// Sets a commit from a receipt it owns: by [`Setter::resolve`], or, if dropped first (the
/// caller's future went away while it waited), on a thread of its own. So a commit is always set.
pub(crate) struct Setter {
    pub(crate) commit: Arc<Commit>,
    pub(crate) receipt: Option<crate::storage::Receipt>,
}

impl Setter {
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

impl Drop for Setter {
    fn drop(&mut self) {
        let Some(receipt) = self.receipt.take() else {
            return;
        };
        let commit = self.commit.clone();
        let spawned = std::thread::Builder::new()
            .name("mailroom-commit".into())
            .spawn(move || commit.set(receipt.wait_blocking()));
        if let Err(e) = spawned {
            tracing::error!(error = %e, "cannot start a thread to finish an abandoned commit");
            self.commit.set(Err(StorageError::Closed));
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[actix_rt::test]
    async fn a_commit_wakes_async_and_blocking_waiters_once_set_and_keeps_its_first_result() {
        let commit = Commit::new();
        assert!(commit.get().is_none());
        let blocking = {
            let c = commit.clone();
            std::thread::spawn(move || c.wait_blocking())
        };
        let waiting = {
            let c = commit.clone();
            actix_rt::spawn(async move { c.settled().await })
        };
        commit.set(Err(StorageError::Closed));
        commit.set(Ok(()));
        waiting.await.unwrap();
        assert!(matches!(
            blocking.join().unwrap(),
            Err(StorageError::Closed)
        ));
        assert!(matches!(commit.get(), Some(Err(StorageError::Closed))));
    }
}
