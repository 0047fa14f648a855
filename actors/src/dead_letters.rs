//! Dead letters: messages that failed on every one of their attempts, kept with their payload and
//! the error of each attempt so they can be inspected and replayed. Bounded: past
//! `max_dead_letters` the oldest is dropped, with a warning in the log.

use std::collections::VecDeque;

use parking_lot::Mutex;
use serde::Serialize;
use serde_json::Value;

use crate::envelope::{ErrorInfo, Kind, MessageId, Source};

/// A message that exhausted its retries.
#[derive(Debug, Clone, PartialEq, Serialize)]
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
    list: Mutex<VecDeque<DeadLetter>>,
    cap: usize,
}

impl DeadLetters {
    pub(crate) fn new(cap: usize) -> DeadLetters {
        DeadLetters {
            list: Mutex::new(VecDeque::new()),
            cap: cap.max(1),
        }
    }

    /// Files a dead letter; when the list is full the oldest is dropped and returned.
    pub(crate) fn push(&self, dl: DeadLetter) -> Option<DeadLetter> {
        let mut list = self.list.lock();
        let dropped = if list.len() >= self.cap {
            list.pop_front()
        } else {
            None
        };
        list.push_back(dl);
        dropped
    }

    pub(crate) fn list(&self) -> Vec<DeadLetter> {
        self.list.lock().iter().cloned().collect()
    }

    pub(crate) fn take(&self, id: MessageId) -> Option<DeadLetter> {
        let mut list = self.list.lock();
        let i = list.iter().position(|d| d.id == id)?;
        list.remove(i)
    }

    pub(crate) fn restore(&self, dl: DeadLetter) {
        let mut list = self.list.lock();
        let at = list.partition_point(|d| d.id < dl.id);
        list.insert(at, dl);
    }

    pub(crate) fn len(&self) -> usize {
        self.list.lock().len()
    }
}
