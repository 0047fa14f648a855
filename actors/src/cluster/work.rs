//! The work of a cluster node: pulling each route's messages from its consumer, claiming each
//! delivery in the `messages` bucket, running it on the node's own dispatcher, and settling
//! it: acknowledged once its terminal state is written, handed back (`nak`) for a retry or a
//! due time, left unacknowledged when NATS is away (JetStream delivers it again after
//! `ack_wait`; its entry says whether it already ended).

use std::sync::atomic::Ordering::Relaxed;
use std::sync::Arc;
use std::time::{Duration, Instant};

use async_nats::jetstream::{self, consumer, kv, AckKind};
use bytes::Bytes;
use futures_util::StreamExt;
use tokio::sync::Semaphore;

use super::{status_index, ClusterRoute, Entry, Inner, MAX_LOST_RUNS};
use crate::dead_letters::DeadLetter;
use crate::envelope::{unix_ms, ErrorClass, ErrorInfo, Message, Status};
use crate::error::Rejected;
use crate::storage::{Accepted, Record};

/// Pulls route `i`'s messages for as long as the node runs: asks for as many as it has free
/// slots, so nothing waits here that another node could run.
pub(super) async fn pull(inner: Arc<Inner>, i: usize) {
    let route = &inner.routes[i];
    let slots = Arc::new(Semaphore::new(route.slots));
    loop {
        let consumer: Result<consumer::PullConsumer, _> = async {
            let s = inner
                .js
                .get_stream(&route.stream)
                .await
                .map_err(|e| e.to_string())?;
            s.get_consumer(&route.consumer)
                .await
                .map_err(|e| e.to_string())
        }
        .await;
        let consumer = match consumer {
            Ok(c) => c,
            Err(e) => {
                tracing::warn!(kind = %route.kind, error = %e, "cannot reach the route's consumer; trying again");
                actix_rt::time::sleep(Duration::from_secs(1)).await;
                continue;
            }
        };
        loop {
            // Wait for one free slot, then ask for as many as are free.
            let first = slots.clone().acquire_owned().await.expect("never closed");
            let free = slots.available_permits() + 1;
            let batch = consumer
                .fetch()
                .max_messages(free)
                .expires(Duration::from_secs(2))
                .messages()
                .await;
            let mut batch = match batch {
                Ok(b) => b,
                Err(e) => {
                    drop(first);
                    tracing::debug!(kind = %route.kind, error = %e, "fetch failed; trying again");
                    actix_rt::time::sleep(Duration::from_millis(500)).await;
                    break;
                }
            };
            let mut first = Some(first);
            let mut failed = false;
            while let Some(m) = batch.next().await {
                match m {
                    Ok(m) => {
                        let permit = match first.take() {
                            Some(p) => p,
                            None => slots.clone().acquire_owned().await.expect("never closed"),
                        };
                        let inner = inner.clone();
                        actix_rt::spawn(async move {
                            inner.running.fetch_add(1, Relaxed);
                            handle(&inner, i, m).await;
                            inner.running.fetch_sub(1, Relaxed);
                            drop(permit);
                        });
                    }
                    Err(e) => {
                        tracing::debug!(kind = %route.kind, error = %e, "pull interrupted");
                        failed = true;
                        break;
                    }
                }
            }
            if failed {
                actix_rt::time::sleep(Duration::from_millis(500)).await;
                break;
            }
        }
    }
}

/// What to do with a delivery once its entry is read.
enum Claim {
    /// Run it (the entry now says `running`, at this revision).
    Run(Entry, u64),
    /// Already dealt with (acknowledged or handed back).
    Done,
}

/// One delivery of one message: claim it, run it on this node's dispatcher, write its outcome,
/// and acknowledge it (or hand it back for a retry).
async fn handle(inner: &Inner, i: usize, m: jetstream::Message) {
    let route = &inner.routes[i];
    // Written by a node's admission, which bounds a payload's depth: read as deep as that
    // allows, plus the record's own levels (deeper is not a record of ours).
    let acc = match crate::storage::decode_within::<Record>(&m.payload, super::MAX_READ_DEPTH) {
        Some(Record::Accepted(a)) => a,
        _ => {
            tracing::warn!(kind = %route.kind, "a message in the work stream is not an accepted message; dropped");
            let _ = m.ack_with(AckKind::Term).await;
            return;
        }
    };
    let (entry, revision) = match claim(inner, route, &acc, &m).await {
        Claim::Run(e, r) => (e, r),
        Claim::Done => return,
    };
    inner.running_ids.lock().insert(acc.id);
    run(inner, route, &acc, &m, entry, revision).await;
    inner.running_ids.lock().remove(&acc.id);
}

/// Runs a claimed message on this node's dispatcher and settles the delivery.
async fn run(
    inner: &Inner,
    route: &ClusterRoute,
    acc: &Accepted,
    m: &jetstream::Message,
    mut entry: Entry,
    revision: u64,
) {
    // Run, telling JetStream every third of ack_wait that the attempt is alive.
    let mut msg = Message::new(acc.kind.as_str(), acc.payload.clone()).source(acc.source);
    msg.timeout = acc.timeout_ms.map(Duration::from_millis);
    let run = inner.local.send(msg);
    tokio::pin!(run);
    let mut beat = actix_rt::time::interval(inner.settings.ack_wait / 3);
    beat.tick().await;
    let result = loop {
        tokio::select! {
            r = &mut run => break r,
            _ = beat.tick() => { let _ = m.ack_with(AckKind::Progress).await; }
        }
    };
    let ran = match result {
        Ok(o) => o,
        Err(Rejected::Invalid { reason, .. }) => {
            // Accepted by a node whose routes allowed it, refused by this one's (a deploy
            // changed the route): that does not pass, so it fails here rather than going round.
            let error = ErrorInfo::new(
                ErrorClass::Invalid,
                format!("this node's route refuses it: {reason}"),
            );
            entry.outcome.status = Status::Failed;
            entry.outcome.error = Some(error.clone());
            entry.errors.push(error);
            entry.outcome.timings.total_ms = unix_ms().saturating_sub(acc.id.timestamp_ms()) as f64;
            if write(inner, acc, m, &entry, revision).await.is_ok() {
                route.finished[status_index(Status::Failed)].fetch_add(1, Relaxed);
                let _ = m.ack().await;
            }
            return;
        }
        Err(r) => {
            // This node cannot run it now (degraded, shutting down): back to the queue, not an
            // attempt.
            let back = Duration::from_secs(1);
            tracing::debug!(id = %acc.id, reason = r.reason(), "not run here; handed back");
            entry.outcome.status = Status::Queued;
            entry.outcome.attempts = entry.outcome.attempts.saturating_sub(1);
            // Handed back only if the entry says so: else it is no longer ours to hand back.
            if write(inner, acc, m, &entry, revision).await.is_ok() {
                let _ = m.ack_with(AckKind::Nak(Some(back))).await;
            }
            return;
        }
    };
    let now = unix_ms();
    let started = entry.started_ms.unwrap_or(now);
    entry.outcome.timings.run_ms = ran.timings.run_ms;
    entry.outcome.timings.queued_ms = started.saturating_sub(acc.id.timestamp_ms()) as f64;
    entry.outcome.timings.total_ms = now.saturating_sub(acc.id.timestamp_ms()) as f64;
    let ack = match ran.status {
        Status::Completed => {
            entry.outcome.status = Status::Completed;
            entry.outcome.result = ran.result.clone();
            entry.outcome.error = None;
            AckKind::Ack
        }
        Status::Failed | Status::TimedOut => {
            let error = ran
                .error
                .clone()
                .unwrap_or_else(|| ErrorInfo::new(ErrorClass::Error, "failed"));
            entry.errors.push(error.clone());
            entry.failures += 1;
            entry.outcome.error = Some(error.clone());
            if entry.failures <= route.retries {
                entry.outcome.status = Status::Queued;
                let back = backoff(route.backoff, entry.failures);
                if write(inner, acc, m, &entry, revision).await.is_ok() {
                    let _ = m.ack_with(AckKind::Nak(Some(back))).await;
                }
                // Not written: leave it unacknowledged; it comes back after ack_wait.
                return;
            }
            if route.retries > 0 {
                // Filed once the terminal state is written (below).
                entry.outcome.status = Status::Dead;
                entry.died_at_delivery = m.info().ok().map(|i| i.delivered);
            } else {
                entry.outcome.status = ran.status;
            }
            AckKind::Ack
        }
        // Cancelled by this node's own shutdown: another node (or this one later) runs it.
        _ => {
            entry.outcome.status = Status::Queued;
            entry.outcome.attempts = entry.outcome.attempts.saturating_sub(1);
            if write(inner, acc, m, &entry, revision).await.is_ok() {
                let _ = m.ack_with(AckKind::Nak(None)).await;
            }
            return;
        }
    };
    // A result too big for one NATS message, or nested too deep to be read back, cannot be
    // kept: the message fails, saying so.
    let limit = inner.client.server_info().max_payload;
    let encoded = entry.encode();
    let unkept = if encoded.len() + 1024 > limit {
        Some(format!(
            "its result is larger than the NATS server's max_payload ({limit} bytes)"
        ))
    } else if !crate::storage::nests_within(&encoded, super::MAX_READ_DEPTH) {
        Some("its result nests too deep to be kept".to_owned())
    } else {
        None
    };
    if let Some(why) = unkept {
        entry.outcome.status = Status::Failed;
        entry.outcome.result = None;
        entry.outcome.error = Some(ErrorInfo::new(ErrorClass::Error, why));
    }
    if write(inner, acc, m, &entry, revision).await.is_ok() {
        route.finished[status_index(entry.outcome.status)].fetch_add(1, Relaxed);
        if entry.outcome.status == Status::Dead && !filed(inner, acc, &entry, m).await {
            return; // handed back: its next delivery files it
        }
        let _ = m.ack_with(ack).await;
    }
}

/// Reads a delivery's entry and decides: acknowledge a message that already ended, hand back a
/// delayed one until it is due, bury one whose node died too often, or mark it running here.
async fn claim(
    inner: &Inner,
    route: &ClusterRoute,
    acc: &Accepted,
    m: &jetstream::Message,
) -> Claim {
    let key = acc.id.to_string();
    // Every read and write of this claim is given up on by then (see `answered`).
    let deadline = tokio::time::Instant::now() + inner.settings.ack_wait / 2;
    // This node's last claim of it, if NATS lost the answer to that claim; and what this claim
    // wrote last (a write whose answer is lost may still land, and then be read back below).
    let unanswered = inner.unanswered.lock().remove(&acc.id);
    let mut mine: Option<Bytes> = None;
    // The common case, a first delivery of a message that is due: no node has taken it, so it
    // has no entry yet. Taking it is creating its entry (which fails if a cancel, or another
    // node, made one first: then the entry is read below).
    if unanswered.is_none() && acc.due_ms.is_none_or(|d| d <= unix_ms()) {
        let fresh = first_run(inner, acc);
        let bytes = fresh.encode();
        mine = Some(bytes.clone());
        match answered(deadline, inner.messages.create(&key, bytes.clone())).await {
            Some(Ok(rev)) => return Claim::Run(fresh, rev),
            Some(Err(e)) if e.kind() == kv::CreateErrorKind::AlreadyExists => {}
            _ => return unanswered_claim(inner, acc, m, vec![bytes]).await,
        }
    }
    loop {
        let got = match answered(deadline, inner.messages.entry(key.clone())).await {
            Some(Ok(g)) => g,
            failed => {
                if let Some(Err(e)) = failed {
                    tracing::debug!(id = %acc.id, error = %e, "cannot read the entry; handed back");
                }
                // What this node knows of its own claims is kept for the next delivery.
                let mut written = unanswered.map_or_else(Vec::new, |u| u.written);
                written.extend(mine);
                return unanswered_claim(inner, acc, m, written).await;
            }
        };
        let got = got.filter(|e| e.operation == kv::Operation::Put);
        let read = match got {
            Some(e) => match Entry::decode(&e.value) {
                Some(v) => Some((v, e.revision, e.value)),
                None => {
                    // An entry this node cannot read (nested too deep, or written by a newer
                    // version): taking it over would loop, and dropping it could lose the
                    // message during an upgrade. Handed back for a minute, loudly.
                    tracing::error!(id = %acc.id, "its entry cannot be read here; handed back for a minute");
                    let _ = m
                        .ack_with(AckKind::Nak(Some(Duration::from_secs(60))))
                        .await;
                    return Claim::Done;
                }
            },
            None => None,
        };
        let (entry, revision, raw) = match read {
            Some(x) => x,
            None => {
                // No node has taken it yet (or its entry expired): hand a delayed one back
                // until it is due, else take it.
                if let Some(due) = acc.due_ms.filter(|&d| d > unix_ms()) {
                    let wait = Duration::from_millis(due.saturating_sub(unix_ms()));
                    let _ = m.ack_with(AckKind::Nak(Some(wait))).await;
                    return Claim::Done;
                }
                let fresh = first_run(inner, acc);
                let bytes = fresh.encode();
                mine = Some(bytes.clone());
                match answered(deadline, inner.messages.create(&key, bytes.clone())).await {
                    Some(Ok(rev)) => return Claim::Run(fresh, rev),
                    Some(Err(e)) if e.kind() == kv::CreateErrorKind::AlreadyExists => continue,
                    _ => return unanswered_claim(inner, acc, m, vec![bytes]).await,
                }
            }
        };
        if entry.outcome.status.is_terminal() {
            // Delivered again after it ended: its node died between writing the end and the
            // acknowledgement, so the dead letter may not be filed yet (filing is idempotent).
            if entry.outcome.status == Status::Dead && !filed(inner, acc, &entry, m).await {
                return Claim::Done;
            }
            let _ = m.ack().await;
            return Claim::Done;
        }
        if let Some(due) = acc.due_ms.filter(|&d| d > unix_ms()) {
            let wait = Duration::from_millis(due.saturating_sub(unix_ms()));
            let _ = m.ack_with(AckKind::Nak(Some(wait))).await;
            return Claim::Done;
        }
        // Running here by this node's own claim, whose answer NATS lost: it never ran, so this
        // is the same attempt, not a lost one.
        let own = entry.outcome.status == Status::Running
            && (mine.as_ref() == Some(&raw)
                || unanswered
                    .as_ref()
                    .is_some_and(|u| u.written.contains(&raw)));
        let attempt = entry.outcome.attempts + u32::from(!own);
        let mut next = entry.clone();
        if entry.outcome.status == Status::Running && !own {
            // Its last attempt never reported: the node running it died (or lost NATS for
            // longer than ack_wait). Run it again, a bounded number of times.
            let error = ErrorInfo::new(
                ErrorClass::Error,
                format!(
                    "node {} stopped during attempt {} before it finished",
                    entry.node.as_deref().unwrap_or("?"),
                    entry.outcome.attempts
                ),
            );
            tracing::warn!(id = %acc.id, error = %error.message, "running it again");
            next.errors.push(error.clone());
            next.outcome.error = Some(error);
            next.lost += 1;
        }
        if next.lost > MAX_LOST_RUNS {
            next.outcome.status = if route.retries > 0 {
                Status::Dead
            } else {
                Status::Failed
            };
            if next.outcome.status == Status::Dead {
                next.died_at_delivery = m.info().ok().map(|i| i.delivered);
            }
            next.outcome.timings.total_ms = unix_ms().saturating_sub(acc.id.timestamp_ms()) as f64;
            let ended = inner.messages.update(&key, next.encode(), revision);
            match answered(deadline, ended).await {
                Some(Ok(_)) => {
                    route.finished[status_index(next.outcome.status)].fetch_add(1, Relaxed);
                    if next.outcome.status == Status::Dead && !filed(inner, acc, &next, m).await {
                        return Claim::Done;
                    }
                    let _ = m.ack().await;
                    return Claim::Done;
                }
                Some(Err(e)) if e.kind() == kv::UpdateErrorKind::WrongLastRevision => continue,
                // Unknown whether it ended: the next delivery reads the entry again.
                _ => {
                    let _ = m.ack_with(AckKind::Nak(Some(Duration::from_secs(1)))).await;
                    return Claim::Done;
                }
            }
        }
        next.outcome.status = Status::Running;
        next.outcome.error = None;
        next.outcome.attempts = attempt;
        next.node = Some(inner.settings.node.clone());
        next.started_ms = Some(unix_ms());
        let bytes = next.encode();
        mine = Some(bytes.clone());
        match answered(
            deadline,
            inner.messages.update(&key, bytes.clone(), revision),
        )
        .await
        {
            Some(Ok(rev)) => return Claim::Run(next, rev),
            Some(Err(e)) if e.kind() == kv::UpdateErrorKind::WrongLastRevision => continue,
            _ => {
                // If it did not land, the entry read (this node's own claim) is still there.
                let mut written = vec![bytes];
                if own {
                    written.insert(0, raw);
                }
                return unanswered_claim(inner, acc, m, written).await;
            }
        }
    }
}

/// The answer to one of a claim's reads or writes, if it comes before `deadline`: half of
/// `ack_wait` after the claim began, so a node has given up on a claim before JetStream would
/// deliver the message again (to it or to another node). The client's own timeout for a
/// JetStream answer (5 s) may end a write sooner.
async fn answered<T>(
    deadline: tokio::time::Instant,
    io: impl std::future::Future<Output = T>,
) -> Option<T> {
    tokio::time::timeout_at(deadline, io).await.ok()
}

/// A claim whose write failed without an answer or with no answer in time (NATS went away
/// meanwhile), so it may have landed: remembers the entries this node's claims may have left
/// (`written`), so that when the message comes back to this node and finds one, it runs as
/// this same attempt rather than one lost by a dead node; then hands the delivery back for a
/// second.
async fn unanswered_claim(
    inner: &Inner,
    acc: &Accepted,
    m: &jetstream::Message,
    written: Vec<Bytes>,
) -> Claim {
    tracing::debug!(id = %acc.id, remembered = written.len(), "claim not settled; handed back");
    if !written.is_empty() {
        let claim = super::Unanswered {
            at: Instant::now(),
            written,
        };
        super::remember_unanswered(inner, acc.id, claim);
    }
    let _ = m.ack_with(AckKind::Nak(Some(Duration::from_secs(1)))).await;
    Claim::Done
}

/// The entry of a message's first attempt, running here from now.
fn first_run(inner: &Inner, acc: &Accepted) -> Entry {
    let mut e = Entry::of(acc);
    e.outcome.status = Status::Running;
    e.outcome.attempts = acc.attempts + 1;
    e.node = Some(inner.settings.node.clone());
    e.started_ms = Some(unix_ms());
    e
}

/// Writes the entry of a claimed message (it is ours: revision `revision`). While NATS is away
/// it tries again, telling JetStream the delivery is alive, so the message is not given to
/// another node meanwhile; after 120 tries (two to twelve minutes: each may wait 5 s for an
/// answer) it gives up (the delivery then comes back after `ack_wait`, and its entry says
/// whether it still has to run).
async fn write(
    inner: &Inner,
    acc: &Accepted,
    m: &jetstream::Message,
    entry: &Entry,
    revision: u64,
) -> Result<(), ()> {
    let key = acc.id.to_string();
    let bytes = entry.encode();
    for n in 0..120u64 {
        match inner.messages.update(&key, bytes.clone(), revision).await {
            Ok(_) => return Ok(()),
            Err(e) if e.kind() == kv::UpdateErrorKind::WrongLastRevision => {
                match inner.messages.get(key.clone()).await {
                    // Our own write landed and only its answer was lost (NATS went away
                    // meanwhile), so the retry found the revision moved on: it is written.
                    Ok(Some(now)) if now == bytes => return Ok(()),
                    // Gone (it outlived the bucket's keeping while it ran): still ours,
                    // written afresh.
                    Ok(None) if inner.messages.create(&key, bytes.clone()).await.is_ok() => {
                        return Ok(());
                    }
                    // Changed: another node took it over; its outcome is that node's.
                    _ => {}
                }
                tracing::warn!(id = %acc.id, "its entry changed while it ran here (another node took it over); outcome not written");
                return Err(());
            }
            Err(e) => {
                if n == 0 {
                    tracing::warn!(id = %acc.id, error = %e, "cannot write its outcome yet; trying again");
                }
                let _ = m.ack_with(AckKind::Progress).await;
                actix_rt::time::sleep(Duration::from_millis(200 * (n + 1).min(5))).await;
            }
        }
    }
    tracing::warn!(id = %acc.id, "could not write its outcome; it will be delivered again");
    Err(())
}

/// Deliveries of a dead message that try to file its dead letter (5 s apart) before it is given
/// up on.
const FILING_TRIES: i64 = 12;

/// Files the dead letter of a message whose entry says `dead`, or hands the delivery back (in
/// 5 s) when it cannot be filed now, so that its next delivery files it: true if filed (or given
/// up on after [`FILING_TRIES`] deliveries since the death, logged as an error), and the
/// delivery may be acknowledged.
async fn filed(inner: &Inner, acc: &Accepted, entry: &Entry, m: &jetstream::Message) -> bool {
    match bury(inner, acc, entry).await {
        Ok(()) => true,
        Err(e) => {
            // Counted from the delivery it died in; an entry written by an older node does not
            // say, and is tried for a minute after the death, as that node did.
            let tries = match (m.info().ok().map(|i| i.delivered), entry.died_at_delivery) {
                (Some(now), Some(died)) => now.saturating_sub(died).saturating_add(1),
                _ => {
                    let died = entry.outcome.accepted_at_ms
                        + entry.outcome.timings.total_ms.max(0.0) as u64;
                    let minute_on = unix_ms().saturating_sub(died) >= 60_000;
                    if minute_on {
                        FILING_TRIES
                    } else {
                        1
                    }
                }
            };
            if tries >= FILING_TRIES {
                tracing::error!(id = %acc.id, error = %e, tries, "cannot file the dead letter; given up (the message's entry still says dead)");
                return true;
            }
            tracing::warn!(id = %acc.id, error = %e, "cannot file the dead letter yet; tried again in 5 s");
            let _ = m.ack_with(AckKind::Nak(Some(Duration::from_secs(5)))).await;
            false
        }
    }
}

/// Files a dead letter in the cluster's bucket, once: not again if it is there, nor if it was
/// there and has been replayed since, as when the message is delivered again after a node died
/// between filing and acknowledging. A letter too big for one NATS message keeps only its last
/// error, cut short.
async fn bury(inner: &Inner, acc: &Accepted, entry: &Entry) -> Result<(), String> {
    let key = acc.id.to_string();
    match inner.dead.entry(key.clone()).await {
        // Filed already (or replayed by a node that left the letter's delete marker).
        Ok(Some(_)) => return Ok(()),
        Ok(None) => {}
        Err(e) => return Err(e.to_string()),
    }
    // Not there: never filed, or replayed since. A replay marks the message's entry before it
    // removes the letter, so the entry read now (after the letter was found gone) says so.
    match inner.messages.get(key.clone()).await {
        Ok(Some(now)) if Entry::decode(&now).is_some_and(|e| e.replayed_as.is_some()) => {
            return Ok(());
        }
        Ok(_) => {}
        Err(e) => return Err(e.to_string()),
    }
    let mut dl = DeadLetter {
        id: acc.id,
        kind: acc.kind,
        payload: acc.payload.clone(),
        attempts: entry.outcome.attempts,
        errors: entry.errors.clone(),
        died_at_ms: unix_ms(),
        source: acc.source,
        replay_of: acc.replay_of,
    };
    let mut bytes = serde_json::to_vec(&dl).expect("serializes");
    let limit = inner.client.server_info().max_payload;
    if bytes.len() + 1024 > limit {
        let last = dl.errors.pop().map(|mut e| {
            e.message = crate::source::truncated(&e.message, 256).into_owned();
            e
        });
        dl.errors = last.into_iter().collect();
        bytes = serde_json::to_vec(&dl).expect("serializes");
    }
    match inner.dead.create(key, Bytes::from(bytes)).await {
        Ok(_) => Ok(()),
        Err(e) if e.kind() == kv::CreateErrorKind::AlreadyExists => Ok(()),
        Err(e) => Err(e.to_string()),
    }
}

/// The longest wait before a route's last retry: its backoff doubled per retry, as [`backoff`]
/// draws it at most.
pub(super) fn longest_backoff(base: Duration, retries: u32) -> Duration {
    base.saturating_mul(1u32 << (retries.max(1) - 1).min(16))
}

/// The backoff before retry `n` (1 for the first): `base` doubled each time, half of it
/// fixed and half random, as a single node does.
fn backoff(base: Duration, n: u32) -> Duration {
    let full = base.saturating_mul(1u32 << (n.max(1) - 1).min(16));
    let half = full / 2;
    half + Duration::from_nanos(fastrand::u64(
        0..=half.as_nanos().min(u64::MAX as u128) as u64,
    ))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn backoff_doubles_with_jitter() {
        for n in 1..5 {
            let b = backoff(Duration::from_millis(100), n);
            let full = Duration::from_millis(100 * (1 << (n - 1)));
            assert!(b >= full / 2 && b <= full, "{n}: {b:?}");
        }
    }
}
