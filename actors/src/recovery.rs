//! Recovery and compaction: turning the records in [`crate::storage`] back into message state
//! at start-up, and telling the storage which records are still needed.
//!
//! Recovery folds the records, oldest first, into what each message last was: every message
//! that had not finished is admitted again under its own id, kind, payload, key, attempt count
//! and acceptance time (a delayed one keeps its due time; one that was running at the crash
//! runs again, its `attempts` showing it); finished outcomes within `result_ttl` come back with
//! their idempotency keys; dead letters come back unless they were replayed. A message whose
//! kind has no route any more fails at once, with an error saying so, rather than being lost.
//!
//! Compaction keeps an `Accepted` record only while its message is unfinished (rewritten with
//! its current attempt count), a `Finished` one only while the outcome is held, a dead letter
//! only while it is filed; `Started` and `Replayed` records are never needed once older records
//! are gone, except a `Replayed` record that a copy of its letter's `Dead` record (made while the
//! letter was being replayed) may follow: recovery lets `Replayed` win wherever the copy is, and
//! that record is kept while the process runs (a restart keeps it only if the copy is still
//! there). What changed while a segment was being compacted is
//! written again after the copies, so the last record of a message is always its latest state.

use std::collections::{BTreeMap, HashSet};
use std::sync::atomic::Ordering::Relaxed;
use std::sync::{Arc, Weak};
use std::time::{Duration, Instant};

use crate::dead_letters::DeadLetter;
use crate::dispatcher::Core;
use crate::envelope::{unix_ms, Envelope, ErrorClass, ErrorInfo, MessageId, Outcome, Status};
use crate::ledger::Ledger;
use crate::storage::{Accepted, Keep, Record, RecordKind};
use crate::store::NewRecord;

/// What the records say, message by message.
#[derive(Debug, Default)]
pub(crate) struct Recovered {
    unfinished: BTreeMap<MessageId, Accepted>,
    finished: Vec<(Arc<Outcome>, Option<String>)>,
    dead: BTreeMap<MessageId, DeadLetter>,
    /// Letters whose `Dead` record came after their `Replayed` one (a compaction copied it
    /// during the replay): not filed, and their `Replayed` record is kept.
    copied_after_replay: Vec<MessageId>,
}

impl Recovered {
    /// Folds records, oldest first. A message's `Finished` record wins over any `Accepted` copy
    /// of it, and a letter's `Replayed` record over any `Dead` copy of it, wherever the copy is.
    pub(crate) fn fold(records: Vec<Record>) -> Recovered {
        let mut r = Recovered::default();
        let mut finished_ids = HashSet::new();
        let mut replayed = HashSet::new();
        // A `Started` may come before the `Accepted` copy compaction wrote after it.
        let mut early_starts: std::collections::HashMap<MessageId, u32> = Default::default();
        for record in records {
            match record {
                Record::Accepted(mut a) => {
                    if finished_ids.contains(&a.id) {
                        continue;
                    }
                    if let Some(n) = early_starts.remove(&a.id) {
                        a.attempts = a.attempts.max(n);
                    }
                    let attempts = a.attempts;
                    r.unfinished
                        .entry(a.id)
                        .and_modify(|e| e.attempts = e.attempts.max(attempts))
                        .or_insert(a);
                }
                Record::Started { id, attempt } => match r.unfinished.get_mut(&id) {
                    Some(a) => a.attempts = a.attempts.max(attempt),
                    None if !finished_ids.contains(&id) => {
                        let n = early_starts.entry(id).or_default();
                        *n = (*n).max(attempt);
                    }
                    None => {}
                },
                Record::Finished { outcome, key } => {
                    r.unfinished.remove(&outcome.id);
                    if finished_ids.insert(outcome.id) {
                        r.finished.push((outcome, key));
                    }
                }
                Record::Dead(d) if replayed.contains(&d.id) => {
                    r.copied_after_replay.push(d.id);
                }
                Record::Dead(d) => {
                    r.dead.insert(d.id, d);
                }
                Record::Replayed { id } => {
                    r.dead.remove(&id);
                    replayed.insert(id);
                }
            }
        }
        r.finished.sort_by_key(|(o, _)| finished_at_ms(o));
        r
    }
}

fn finished_at_ms(o: &Outcome) -> u64 {
    o.accepted_at_ms + o.timings.total_ms.max(0.0) as u64
}

/// Puts recovered state back into a freshly built dispatcher and hands the unfinished
/// messages to their routers. Logs what it did, by state.
pub(crate) fn restore(core: &Core, recovered: Recovered) {
    let ledger = &core.ledger;
    let started = Instant::now();
    let now_ms = unix_ms();
    let ttl_ms = u64::try_from(core.settings.result_ttl.as_millis()).unwrap_or(u64::MAX);
    let mut outcomes = 0usize;
    for (outcome, key) in recovered.finished {
        let age = now_ms.saturating_sub(finished_at_ms(&outcome));
        if age < ttl_ms {
            let outcome = Arc::try_unwrap(outcome).unwrap_or_else(|a| Outcome::clone(&a));
            ledger
                .store
                .restore(outcome, key, Duration::from_millis(age));
            outcomes += 1;
        }
    }
    let dead_letters = recovered.dead.len();
    for d in recovered.dead.into_values() {
        ledger.dead.push(d);
    }
    ledger
        .dead
        .copied_after_replay(recovered.copied_after_replay);
    let (mut queued, mut delayed, mut rerun, mut unroutable) = (0usize, 0usize, 0usize, 0usize);
    let now = Instant::now();
    let mut envs = Vec::with_capacity(recovered.unfinished.len());
    for a in recovered.unfinished.into_values() {
        let route = ledger.by_kind.get(a.kind.as_str()).copied();
        let age = Duration::from_millis(now_ms.saturating_sub(a.id.timestamp_ms()));
        let due = a
            .due_ms
            .filter(|&d| d > now_ms)
            .map(|d| now + Duration::from_millis(d - now_ms));
        let mut record = NewRecord {
            id: a.id,
            kind: a.kind,
            source: a.source,
            key: a.key.clone(),
            delayed: due.is_some(),
            replay_of: a.replay_of,
            accepted_at_ms: a.id.timestamp_ms(),
            accepted: now.checked_sub(age).unwrap_or(now),
            attempts: a.attempts,
            // Its record is on disk: a duplicate of its key needs no commit to wait for.
            commit: None,
        };
        let ticket = match ledger.store.insert(record.clone(), None) {
            Ok(t) => t,
            Err(_) => {
                // Its key now names another message: the store evicted an old outcome that held
                // the key (by count or bytes, before its `result_ttl`), a new message took the
                // key, and the old outcome came back at start. The unfinished message runs
                // without the key rather than not at all.
                record.key = None;
                ledger
                    .store
                    .insert(record, None)
                    .unwrap_or_else(|_| unreachable!("a record without a key is never refused"))
            }
        };
        let Some(index) = route else {
            unroutable += 1;
            let error = ErrorInfo::new(
                ErrorClass::Error,
                format!(
                    "no route for kind {} after the restart; the message could not run",
                    a.kind
                ),
            );
            if let Some(f) = ledger
                .store
                .finish(&ticket, Status::Failed, None, Some(error))
            {
                ledger.ended(None, f);
            }
            continue;
        };
        let stats = &ledger.routes[index].stats;
        stats.accepted.fetch_add(1, Relaxed);
        // Over the route's capacity if need be: these were accepted before.
        stats.in_flight.fetch_add(1, Relaxed);
        match (due.is_some(), a.attempts > 0) {
            (true, _) => delayed += 1,
            (false, true) => rerun += 1,
            (false, false) => queued += 1,
        }
        envs.push(Envelope {
            id: a.id,
            kind: a.kind,
            payload: a.payload,
            source: a.source,
            attempt: a.attempts,
            not_before: due,
            timeout: a.timeout_ms.map(Duration::from_millis),
            key: a.key,
            replay_of: a.replay_of,
            route: index,
            ticket,
            history: Vec::new(),
            _share: None,
            commit: None,
        });
    }
    core.hand_off_batch(envs);
    tracing::info!(
        queued,
        delayed,
        rerun,
        unroutable,
        outcomes,
        dead_letters,
        elapsed_ms = started.elapsed().as_millis() as u64,
        "storage: recovered {} unfinished messages ({queued} queued, {delayed} delayed, {rerun} running at the stop, run again; {unroutable} with no route, failed), {outcomes} outcomes, {dead_letters} dead letters",
        queued + delayed + rerun + unroutable,
    );
}

/// Compacts the storage once: asks it to drop what is no longer needed, then writes again the
/// latest state of any message that changed while its records were being copied.
pub(crate) fn compact(ledger: &Ledger) {
    let store = &ledger.store;
    let dead = &ledger.dead;
    // `behind`: an older segment stays, whose records are still read at start-up: keep what
    // overrides them (a message's `Finished`, a dead letter's `Replayed`, the attempts of an
    // unfinished message), or they would bring back what has ended.
    let mut keep = |kind: RecordKind, id: MessageId, behind: bool| -> Keep {
        let unfinished = || store.get(id).filter(|o| !o.status.is_terminal());
        match kind {
            RecordKind::Accepted => match unfinished() {
                Some(now) => Keep::WithAttempts(now.attempts),
                None => Keep::Drop,
            },
            RecordKind::Started if behind && unfinished().is_some() => Keep::AsIs,
            RecordKind::Finished if behind => Keep::AsIs,
            RecordKind::Finished => match store.get(id) {
                Some(now) if now.status.is_terminal() => Keep::AsIs,
                _ => Keep::Drop,
            },
            RecordKind::Dead if dead.keeps_dead(id) => Keep::AsIs,
            RecordKind::Replayed if behind || dead.keeps_replayed(id) => Keep::AsIs,
            RecordKind::Dead | RecordKind::Started | RecordKind::Replayed => Keep::Drop,
        }
    };
    match ledger.storage.compact(&mut keep) {
        Ok(done) => {
            for &(kind, id) in &done.kept {
                match kind {
                    RecordKind::Accepted => {
                        if let Some(now) = store.get(id).filter(|o| o.status.is_terminal()) {
                            ledger.storage.write(&Record::Finished {
                                outcome: now,
                                key: store.key(id),
                            });
                        }
                    }
                    RecordKind::Dead if dead.get(id).is_none() => {
                        ledger.storage.write(&Record::Replayed { id });
                    }
                    _ => {}
                }
            }
            if done.segments > 0 {
                tracing::debug!(
                    segments = done.segments,
                    read = done.read,
                    kept = done.kept.len(),
                    "storage: compacted"
                );
            }
        }
        Err(e) => tracing::warn!(error = %e, "storage: compaction failed; it is tried again later"),
    }
}

/// How much nicer than the process the compactor runs on Linux (see [`start_compactor`]).
#[cfg(target_os = "linux")]
const COMPACTOR_NICE: i32 = 10;

/// Starts the thread that compacts the storage every second, until the dispatcher is gone or
/// shutting down. A thread of its own: compaction reads and writes files. On Linux it runs at
/// a lower CPU priority ([`COMPACTOR_NICE`] above the process's nice value, at most 19, as
/// RocksDB's compaction threads can): on a busy machine, the threads that answer requests and
/// write the journal come first, and compaction takes what they leave (about a tenth of a busy
/// thread's share, so it does not stop; when it holds a lock they wait on, they sleep and it
/// runs). If the priority cannot be lowered it runs as it is.
pub(crate) fn start_compactor(core: &Core) {
    let weak: Weak<Ledger> = Arc::downgrade(&core.ledger);
    let drain = core.drain.clone();
    let spawned = std::thread::Builder::new()
        .name("mailroom-compactor".into())
        .spawn(move || {
            // On Linux a nice value is the calling thread's own, not the process's.
            #[cfg(target_os = "linux")]
            {
                use rustix::process::{getpriority_process, setpriority_process};
                let nicer = getpriority_process(None)
                    .and_then(|now| setpriority_process(None, (now + COMPACTOR_NICE).min(19)));
                if let Err(e) = nicer {
                    tracing::debug!(error = %e, "storage: cannot lower the compactor's priority");
                }
            }
            loop {
                std::thread::sleep(Duration::from_secs(1));
                let Some(ledger) = weak.upgrade() else { return };
                if drain.draining.load(Relaxed) {
                    return;
                }
                ledger.store.sweep();
                compact(&ledger);
            }
        });
    if let Err(e) = spawned {
        tracing::error!(error = %e, "storage: cannot start the compactor thread; the journal will not be compacted");
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::envelope::{Kind, Source, Timings};
    use crate::storage::tests::accepted;
    use serde_json::json;

    fn finished(id: MessageId) -> Record {
        Record::Finished {
            outcome: Arc::new(Outcome {
                id,
                kind: Kind::new("echo").unwrap(),
                status: Status::Completed,
                result: Some(json!(1)),
                error: None,
                attempts: 1,
                source: Source::Http,
                accepted_at_ms: id.timestamp_ms(),
                timings: Timings::default(),
                replay_of: None,
            }),
            key: Some("k".into()),
        }
    }

    fn dead(id: MessageId) -> Record {
        Record::Dead(DeadLetter {
            id,
            kind: Kind::new("echo").unwrap(),
            payload: json!(1),
            attempts: 1,
            errors: vec![],
            died_at_ms: 0,
            source: Source::Http,
            replay_of: None,
        })
    }

    #[test]
    fn the_latest_state_of_each_message_wins() {
        let (a, b, c) = (MessageId::next(), MessageId::next(), MessageId::next());
        let r = Recovered::fold(vec![
            accepted(a),
            accepted(b),
            Record::Started { id: a, attempt: 1 },
            Record::Started { id: a, attempt: 2 },
            finished(b),
            // A compaction copy written after the message finished does not bring it back.
            accepted(b),
            accepted(c),
            dead(c),
            finished(c),
            Record::Replayed { id: c },
            // A compaction's copy of the dead letter, made while it was being replayed and
            // written after its `Replayed` record, does not bring it back either.
            dead(c),
        ]);
        assert_eq!(r.unfinished.keys().copied().collect::<Vec<_>>(), vec![a]);
        assert_eq!(r.unfinished[&a].attempts, 2);
        let done: Vec<MessageId> = r.finished.iter().map(|(o, _)| o.id).collect();
        assert!(done.contains(&b) && done.contains(&c) && done.len() == 2);
        assert!(r.dead.is_empty(), "a replayed dead letter stays replayed");
        assert_eq!(
            r.copied_after_replay,
            [c],
            "and its Replayed record is kept"
        );
    }
}
