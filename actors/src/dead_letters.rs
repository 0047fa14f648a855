//! Dead letters: messages that failed on every one of their attempts, kept with their payload and
//! the error of each attempt so they can be inspected and replayed. Bounded by count
//! (`max_dead_letters`) and by bytes (`max_dead_letter_bytes`): past either, the oldest are
//! dropped, with a warning in the log. Kept in id order, so they are listed a page at a time
//! (`after` an id).

use std::collections::{HashSet, VecDeque};
use std::sync::Arc;

use parking_lot::Mutex;
use serde::{Deserialize, Serialize};
use serde_json::Value;

use crate::envelope::{approx_bytes, ErrorInfo, Kind, MessageId, Source};
use crate::error::ReplayError;

/// A message that exhausted its retries.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub struct DeadLetter {
    /// The message's id.
    #[cfg_attr(feature = "openapi", schema(value_type = String))]
    pub id: MessageId,
    /// Its kind.
    #[cfg_attr(feature = "openapi", schema(value_type = String))]
    pub kind: Kind,
    /// Its payload, as submitted.
    pub payload: Value,
    /// How many attempts ran.
    pub attempts: u32,
    /// The error of each attempt, in order.
    pub errors: Vec<ErrorInfo>,
    /// When it was declared dead, Unix milliseconds.
    pub died_at_ms: u64,
    /// Where it came from.
    pub source: Source,
    /// The dead letter it was itself replaying, if any.
    #[serde(skip_serializing_if = "Option::is_none")]
    #[cfg_attr(feature = "openapi", schema(value_type = Option<String>))]
    pub replay_of: Option<MessageId>,
}

pub(crate) struct DeadLetters {
    inner: Mutex<Held>,
    cap: usize,
    max_bytes: usize,
}

/// The dead letters in id order (oldest accepted first), their bytes, those being replayed now
/// (still held, so compaction keeps their records, until the replay is durable), and the
/// replayed ones whose `Dead` record a compaction copied during their replay.
#[derive(Default)]
struct Held {
    list: VecDeque<Arc<DeadLetter>>,
    bytes: usize,
    replaying: Vec<MessageId>,
    /// Their copy may follow their `Replayed` record in storage, so that record stays for the
    /// life of the process (recovery ignores a `Dead` record after a `Replayed` one).
    copied: HashSet<MessageId>,
}

impl DeadLetter {
    /// About how many bytes the payload takes (its text, plus a little per JSON node).
    pub fn payload_bytes(&self) -> usize {
        approx_bytes(&self.payload)
    }

    /// About how many bytes this dead letter holds (payload and errors).
    pub(crate) fn approx_bytes(&self) -> usize {
        self.payload_bytes()
            + self
                .errors
                .iter()
                .map(|e| e.message.len() + 32)
                .sum::<usize>()
            + 128
    }
}

impl Held {
    fn insert(&mut self, dl: Arc<DeadLetter>) {
        self.bytes += dl.approx_bytes();
        let at = self.list.partition_point(|d| d.id < dl.id);
        self.list.insert(at, dl);
    }

    fn remove(&mut self, at: usize) -> Option<Arc<DeadLetter>> {
        let dl = self.list.remove(at)?;
        self.bytes -= dl.approx_bytes();
        Some(dl)
    }

    fn position(&self, id: MessageId) -> Result<usize, usize> {
        self.list.binary_search_by(|d| d.id.cmp(&id))
    }
}

impl DeadLetters {
    /// At most `cap` dead letters and `max_bytes` of them; past either the oldest are dropped.
    pub(crate) fn new(cap: usize, max_bytes: usize) -> DeadLetters {
        DeadLetters {
            inner: Mutex::new(Held::default()),
            cap: cap.max(1),
            max_bytes,
        }
    }

    /// Files a dead letter; returns the oldest ones dropped to stay within the bounds: never
    /// the new one itself (even when it alone is over the byte bound), nor one being replayed
    /// (it leaves once its replay is durable, or stays if that is refused, so the bounds may be
    /// passed by as many letters as are being replayed at once).
    pub(crate) fn push(&self, dl: DeadLetter) -> Vec<Arc<DeadLetter>> {
        let id = dl.id;
        let mut held = self.inner.lock();
        held.insert(Arc::new(dl));
        let mut dropped = Vec::new();
        while held.list.len() > self.cap || held.bytes > self.max_bytes {
            let oldest =
                (held.list.iter()).position(|d| d.id != id && !held.replaying.contains(&d.id));
            let Some(at) = oldest else { break };
            dropped.extend(held.remove(at));
        }
        dropped
    }

    /// Up to `limit` dead letters with ids after `after` (from the oldest when `None`).
    pub(crate) fn page(&self, after: Option<MessageId>, limit: usize) -> Vec<Arc<DeadLetter>> {
        let held = self.inner.lock();
        let from = match after {
            None => 0,
            Some(a) => match held.position(a) {
                Ok(i) => i + 1,
                Err(i) => i,
            },
        };
        held.list.iter().skip(from).take(limit).cloned().collect()
    }

    pub(crate) fn get(&self, id: MessageId) -> Option<Arc<DeadLetter>> {
        let held = self.inner.lock();
        held.position(id).ok().map(|i| held.list[i].clone())
    }

    pub(crate) fn take(&self, id: MessageId) -> Option<Arc<DeadLetter>> {
        let mut held = self.inner.lock();
        let at = held.position(id).ok()?;
        held.remove(at)
    }

    pub(crate) fn restore(&self, dl: Arc<DeadLetter>) {
        self.inner.lock().insert(dl);
    }

    /// Marks a dead letter as being replayed and returns it, or says why not. It stays listed
    /// (and its record kept, and the bounds do not drop it) until [`DeadLetters::end_replay`].
    pub(crate) fn begin_replay(&self, id: MessageId) -> Result<Arc<DeadLetter>, ReplayError> {
        let mut held = self.inner.lock();
        if held.replaying.contains(&id) {
            return Err(ReplayError::InProgress(id));
        }
        let at = held.position(id).map_err(|_| ReplayError::Unknown(id))?;
        let dl = held.list[at].clone();
        held.replaying.push(id);
        Ok(dl)
    }

    /// Ends a replay begun by [`DeadLetters::begin_replay`]: the dead letter is removed if its
    /// replay is durable (`replayed`), else left as it was.
    pub(crate) fn end_replay(&self, id: MessageId, replayed: bool) {
        let mut held = self.inner.lock();
        held.replaying.retain(|&r| r != id);
        if replayed {
            if let Ok(at) = held.position(id) {
                held.remove(at);
            }
        }
    }

    /// Compaction's question for a `Dead` record: whether it is still needed (its letter is
    /// held, being replayed or not). A copy made during a replay is noted, so that the
    /// `Replayed` record that may come before it is kept from then on
    /// ([`DeadLetters::keeps_replayed`]): not only while the copy is known to be there, since a
    /// compaction that drops the copy may still fail, or keep its segment after all. (Such races
    /// are rare and each costs one small record; a restart forgets those whose copy is gone.)
    pub(crate) fn keeps_dead(&self, id: MessageId) -> bool {
        let mut held = self.inner.lock();
        if held.position(id).is_err() {
            return false;
        }
        if held.replaying.contains(&id) {
            held.copied.insert(id);
        }
        true
    }

    /// Compaction's question for a `Replayed` record with no older records behind it: whether
    /// a copy of the letter's `Dead` record may follow it.
    pub(crate) fn keeps_replayed(&self, id: MessageId) -> bool {
        self.inner.lock().copied.contains(&id)
    }

    /// Notes letters whose `Dead` record recovery found after their `Replayed` one.
    pub(crate) fn copied_after_replay(&self, ids: impl IntoIterator<Item = MessageId>) {
        self.inner.lock().copied.extend(ids);
    }

    pub(crate) fn len(&self) -> usize {
        self.inner.lock().list.len()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::envelope::{ErrorClass, Kind};

    fn dl(bytes: usize) -> DeadLetter {
        DeadLetter {
            id: MessageId::next(),
            kind: Kind::new("k").unwrap(),
            payload: Value::String("x".repeat(bytes)),
            attempts: 1,
            errors: vec![ErrorInfo::new(ErrorClass::Error, "e")],
            died_at_ms: 0,
            source: Source::Library,
            replay_of: None,
        }
    }

    #[test]
    fn bounded_by_count_and_bytes_oldest_first_and_paged_by_id() {
        let d = DeadLetters::new(3, 10_000);
        let ids: Vec<MessageId> = (0..4)
            .map(|_| {
                let x = dl(10);
                let id = x.id;
                d.push(x);
                id
            })
            .collect();
        assert_eq!(d.len(), 3, "count bound");
        assert!(d.get(ids[0]).is_none(), "the oldest went first");
        let page = d.page(None, 2);
        assert_eq!(page.iter().map(|x| x.id).collect::<Vec<_>>(), ids[1..3]);
        let next = d.page(Some(ids[2]), 2);
        assert_eq!(next.iter().map(|x| x.id).collect::<Vec<_>>(), ids[3..4]);
        let big = dl(20_000);
        let big_id = big.id;
        let dropped = d.push(big);
        assert_eq!(dropped.len(), 3, "bytes bound: the others made room");
        assert_eq!(d.len(), 1);
        assert!(d.get(big_id).is_some(), "the new one is kept");
        assert!(d.take(big_id).is_some());
        assert_eq!(d.inner.lock().bytes, 0);
    }

    #[test]
    fn a_letter_being_replayed_is_not_dropped_and_its_records_are_kept_until_it_ends() {
        let d = DeadLetters::new(2, 10_000);
        let first = dl(10);
        let id = first.id;
        d.push(first);
        assert!(d.begin_replay(id).is_ok());
        assert!(matches!(
            d.begin_replay(id),
            Err(ReplayError::InProgress(_))
        ));
        // The bounds drop the oldest letter not being replayed.
        let (second, third) = (dl(10), dl(10));
        let second_id = second.id;
        d.push(second);
        let dropped = d.push(third);
        assert_eq!(
            dropped.iter().map(|x| x.id).collect::<Vec<_>>(),
            [second_id]
        );
        assert!(d.get(id).is_some());
        // A compaction during the replay keeps the `Dead` record, and notes the copy.
        assert!(d.keeps_dead(id));
        assert!(
            d.keeps_replayed(id),
            "the copy may follow the Replayed record"
        );
        d.end_replay(id, true);
        assert!(d.get(id).is_none());
        assert!(matches!(d.begin_replay(id), Err(ReplayError::Unknown(_))));
        assert!(
            !d.keeps_dead(id),
            "the copy is dropped once the letter is gone"
        );
        assert!(
            d.keeps_replayed(id),
            "and the Replayed record kept all the same (that compaction may not finish)"
        );
        // A refused replay leaves the letter as it was.
        let other = d.page(None, 1)[0].id;
        assert!(d.begin_replay(other).is_ok());
        d.end_replay(other, false);
        assert!(d.get(other).is_some());
        assert!(d.begin_replay(other).is_ok());
    }
}
