//! The ledger: the only way a message's state changes once it is accepted. It owns the index
//! (`store`), the storage that makes changes durable, and the dead letters, and it holds the
//! routing table for its counters: each start, each terminal transition and each death goes
//! through here, which writes it to storage and counts it in the route's ledger, in that order,
//! before anyone waiting for it is told.
//!
//! The runtime actors get this (with the `Drain` state) instead of the whole dispatcher: the
//! router to fail what it cannot deliver and to sweep, the workers and CPU jobs to start and
//! settle messages.
//!
//! Failure: a record that cannot be written at admission withdraws the message (`withdraw`:
//! it leaves the index and its route, the caller is refused); later records are not waited
//! for, so a crash before they reach the disk means the message runs again (at least once).

use std::sync::atomic::{AtomicBool, AtomicU64, Ordering::Relaxed};
use std::sync::Arc;
use std::time::{Duration, Instant};

use parking_lot::Mutex;

use crate::dead_letters::{DeadLetter, DeadLetters};
use crate::envelope::{
    unix_ms, Envelope, ErrorClass, ErrorInfo, Message, MessageId, Outcome, Status,
};
use crate::error::{CancelError, Rejected};
use crate::metrics::{RejectReason, RouteStats};
use crate::route::Route;
use crate::storage::{Accepted, Receipt, Record, Storage, StorageError};
use crate::store::{Finished, Store, Ticket};

/// The routing table, the index, the storage and the dead letters.
pub(crate) struct Ledger {
    pub(crate) routes: Vec<Route>,
    /// Route index by kind, looked up for every message: hashed with foldhash, not SipHash.
    pub(crate) by_kind: foldhash::HashMap<&'static str, usize>,
    pub(crate) store: Box<dyn Store>,
    /// Where every change of a message's state is written (see [`crate::storage`]).
    pub(crate) storage: Arc<dyn Storage>,
    /// Whether `storage` outlives the process (records are only made when it does).
    pub(crate) durable: bool,
    pub(crate) dead: DeadLetters,
}

/// Where the dispatcher is in its life: shared by admission, the routers and the workers.
#[derive(Default)]
pub(crate) struct Drain {
    /// Set when shutdown begins: nothing new is accepted.
    pub(crate) draining: AtomicBool,
    /// Admissions between their `draining` check and their hand-off to a router; shutdown
    /// waits for these so a message accepted just as draining begins is still drained.
    pub(crate) admitting: AtomicU64,
    /// The moment after which nothing more may run (set when shutdown begins).
    pub(crate) deadline: Mutex<Option<Instant>>,
    /// With durable storage, messages shutdown keeps stored rather than running them.
    pub(crate) kept: AtomicU64,
}

impl Ledger {
    /// The route of `kind`.
    pub(crate) fn route_of(&self, kind: crate::envelope::Kind) -> Option<&Route> {
        self.by_kind.get(kind.as_str()).map(|&i| &self.routes[i])
    }

    /// Moves a message to a terminal state and counts it; `None` if it had already finished.
    pub(crate) fn finish(
        &self,
        route: usize,
        ticket: &Ticket,
        status: Status,
        result: Option<serde_json::Value>,
        error: Option<ErrorInfo>,
    ) -> Option<Arc<Outcome>> {
        let finished = self.store.finish(ticket, status, result, error)?;
        Some(self.ended(Some(route), finished))
    }

    /// The last step of every terminal transition: counts it, writes it to storage and tells
    /// the waiters (in that order, so whoever is woken sees it counted).
    pub(crate) fn ended(&self, route: Option<usize>, finished: Finished) -> Arc<Outcome> {
        let outcome = finished.outcome();
        let route = route.or_else(|| self.by_kind.get(outcome.kind.as_str()).copied());
        if let Some(route) = route {
            self.count_finished(&self.routes[route].stats, outcome);
        }
        if self.durable {
            // Not waited for: an outcome lost in a crash means the message runs again.
            self.storage.write(&Record::Finished {
                outcome: outcome.clone(),
                key: finished.key().map(str::to_owned),
            });
        }
        finished.publish()
    }

    /// queued | delayed → running, written to storage (so `attempts` survives a restart).
    pub(crate) fn start(&self, ticket: &Ticket) -> Result<u32, Status> {
        let attempt = self.start_unwritten(ticket)?;
        self.write_started(ticket.id, attempt);
        Ok(attempt)
    }

    /// [`Ledger::start`] without its `Started` record, for an attempt that may end at once: the
    /// caller writes the record ([`Ledger::write_started`]) unless the attempt completes before
    /// anything else happens, when the `Finished` record appended next says all it would.
    pub(crate) fn start_unwritten(&self, ticket: &Ticket) -> Result<u32, Status> {
        self.store.start(ticket)
    }

    /// Has the storage commit the records it holds lazily now ([`Storage::hurry`]): for a
    /// message that began early and whose attempt ended before its `Accepted` record was durable.
    pub(crate) fn hurry(&self) {
        if self.durable {
            self.storage.hurry();
        }
    }

    /// Writes a `Started` record (with durable storage).
    pub(crate) fn write_started(&self, id: MessageId, attempt: u32) {
        if self.durable {
            self.storage.write(&Record::Started { id, attempt });
        }
    }

    fn count_finished(&self, stats: &RouteStats, outcome: &Outcome) {
        let ms = |ms: f64| Duration::try_from_secs_f64(ms / 1000.0).unwrap_or_default();
        let ran = outcome.attempts > 0 && outcome.status != Status::Cancelled;
        stats.finished(
            outcome.status,
            ms(outcome.timings.total_ms),
            ran.then(|| ms(outcome.timings.run_ms)),
        );
    }

    /// Declares a message dead and files it in the dead letters. The dead letter is filed first,
    /// so whoever is told of the death finds it there; it is taken back if the message had
    /// already finished (a shutdown raced it).
    pub(crate) fn bury(&self, env: Envelope, error: ErrorInfo) {
        let (id, kind, route, attempts) = (env.id, env.kind, env.route, env.attempt);
        let letter = DeadLetter {
            id,
            kind,
            payload: env.payload,
            attempts,
            errors: env.history,
            died_at_ms: unix_ms(),
            source: env.source,
            replay_of: env.replay_of,
        };
        if self.durable {
            self.storage.write(&Record::Dead(letter.clone()));
        }
        let dropped = self.dead.push(letter);
        if self
            .finish(route, &env.ticket, Status::Dead, None, Some(error))
            .is_some()
        {
            tracing::warn!(%id, %kind, attempts, "message is dead after its last attempt");
            for old in dropped {
                tracing::warn!(id = %old.id, kind = %old.kind, "dead letters are full (count or bytes): dropped the oldest");
            }
        } else {
            self.dead.take(id);
            for old in dropped {
                self.dead.restore(old);
            }
        }
    }

    /// Fails messages whose router or worker has stopped for good (which only a bug outside
    /// the processors' panic guard can cause), so they end now rather than at shutdown. One
    /// that began before its record was durable ends once the record is (or, refused, leaves
    /// no trace), as its worker would have settled it.
    pub(crate) fn undeliverable(self: &Arc<Self>, envs: Vec<Envelope>, what: &'static str) {
        for mut env in envs {
            let commit = env.commit.take();
            let ledger = self.clone();
            let end = move |committed: Result<(), StorageError>| match committed {
                Ok(()) => {
                    tracing::error!(id = %env.id, kind = %env.kind, "the route's {what} has stopped: failing the message");
                    let error = ErrorInfo::new(
                        ErrorClass::Error,
                        format!(
                            "the route's {what} has stopped; the message could not be delivered"
                        ),
                    );
                    ledger.finish(env.route, &env.ticket, Status::Failed, None, Some(error));
                }
                Err(error) => {
                    tracing::debug!(id = %env.id, kind = %env.kind, %error, "taken back: its record could not be written");
                    ledger.take_back(env.route, &env.ticket);
                }
            };
            match commit {
                None => end(Ok(())),
                Some(commit) => commit.then(end),
            }
        }
    }

    /// queued | delayed → cancelled, counted, written and told.
    pub(crate) fn cancel(
        &self,
        id: MessageId,
        error: ErrorInfo,
    ) -> Result<Arc<Outcome>, CancelError> {
        let finished = self.store.cancel(id, error)?;
        Ok(self.ended(None, finished))
    }

    /// running → delayed, for a retry; false if it is no longer running.
    pub(crate) fn requeue(&self, ticket: &Ticket) -> bool {
        self.store.requeue(ticket)
    }

    /// Writes an envelope's `Accepted` record. The payload is lent to the record, not copied.
    /// A `lazy` record's waiter is in no hurry ([`Storage::append_lazy`]): whoever comes to
    /// need it before it is durable calls [`Ledger::hurry`].
    pub(crate) fn write_accepted(
        &self,
        env: &mut Envelope,
        due_ms: Option<u64>,
        lazy: bool,
    ) -> Receipt {
        let record = Record::Accepted(Accepted {
            id: env.id,
            kind: env.kind,
            payload: std::mem::take(&mut env.payload),
            source: env.source,
            key: env.key.clone(),
            due_ms,
            timeout_ms: env.timeout.map(millis_u64),
            replay_of: env.replay_of,
            attempts: env.attempt,
        });
        let receipt = if lazy {
            self.storage.append_lazy(&record)
        } else {
            self.storage.append(&record)
        };
        if let Record::Accepted(a) = record {
            env.payload = a.payload;
        }
        receipt
    }

    /// Takes back a message whose record could not be stored: it was never acknowledged, so it
    /// leaves no trace (its place, its key and its record in the index are given back).
    pub(crate) fn withdraw(&self, env: Envelope, error: StorageError) -> Rejected {
        self.refuse(env.route, &env.ticket, env.message(), error)
    }

    /// Refuses a message whose record could not be stored: counts the refusal, takes the
    /// message back ([`Ledger::take_back`]) and hands `message` back to the caller.
    pub(crate) fn refuse(
        &self,
        route: usize,
        ticket: &crate::store::Ticket,
        message: Message,
        error: StorageError,
    ) -> Rejected {
        self.routes[route].stats.rejected(RejectReason::Storage);
        self.take_back(route, ticket);
        Rejected::Storage {
            message: Box::new(message),
            error,
        }
    }

    /// Gives back a refused message's place, key and entry in the index, leaving no trace; for a
    /// message that began before its record was durable, whoever ends the attempt (its worker,
    /// the CPU pool thread that would run it, or [`Ledger::undeliverable`]) calls it again.
    /// Taking back twice is harmless: only the first claims the message.
    pub(crate) fn take_back(&self, route: usize, ticket: &crate::store::Ticket) {
        let route = &self.routes[route];
        // Claimed with the index's compare-and-set, so a cancel of the same message (its id
        // known through its idempotency key) cannot end it a second time. Its waiter, if any,
        // belongs to the caller being refused.
        let claimed = self
            .store
            .finish(ticket, Status::Cancelled, None, None)
            .is_some();
        self.store.remove(ticket);
        if claimed {
            route.stats.accepted.fetch_sub(1, Relaxed);
            route.release();
        }
    }
}

/// Milliseconds of `d`, saturating.
pub(crate) fn millis_u64(d: Duration) -> u64 {
    u64::try_from(d.as_millis()).unwrap_or(u64::MAX)
}
