//! Event sources: actors that turn outside events into submitted messages. Each one submits
//! through the [`Dispatcher`](crate::Dispatcher), so admission control, validation and the ledger
//! apply to every source alike. The HTTP source lives in the server crate (it needs actix-web);
//! [`Submission`], the JSON object a client sends, is shared by HTTP and TCP.

pub mod tcp;
pub mod timer;

use std::time::Duration;

use serde::Deserialize;
use serde_json::Value;

use crate::envelope::{Message, Source};

/// The object a client submits over HTTP (`POST /v1/messages`) or TCP (one per line):
/// `{"kind", "payload"?, "delay_ms"?, "timeout_ms"?, "key"?}`. Unknown fields are refused, so a
/// typo (`"delay": 5`) is an error rather than silently ignored.
#[derive(Debug, Clone, PartialEq, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
#[serde(deny_unknown_fields)]
pub struct Submission {
    /// The route key.
    pub kind: String,
    /// The payload (JSON; `null` when absent).
    #[serde(default)]
    pub payload: Value,
    /// Run no earlier than this many milliseconds after acceptance.
    #[serde(default)]
    pub delay_ms: Option<u64>,
    /// The message's own run timeout, in milliseconds.
    #[serde(default)]
    pub timeout_ms: Option<u64>,
    /// Idempotency key.
    #[serde(default)]
    pub key: Option<String>,
}

impl Submission {
    /// The message this submission asks for, marked as coming from `source`.
    pub fn into_message(self, source: Source) -> Message {
        let mut m = Message::new(self.kind, self.payload).source(source);
        if let Some(d) = self.delay_ms {
            m = m.delay(Duration::from_millis(d));
        }
        if let Some(t) = self.timeout_ms {
            m = m.timeout(Duration::from_millis(t));
        }
        if let Some(k) = self.key {
            m = m.key(k);
        }
        m
    }
}

/// Whether `given` is one of `tokens` (shared by HTTP's bearer check and TCP's `"token"`). The
/// comparison does not stop at the first differing byte, so its time says nothing about how much
/// of a token was right.
pub fn token_accepted(tokens: &[String], given: &str) -> bool {
    tokens.iter().any(|t| {
        let (t, g) = (t.as_bytes(), given.as_bytes());
        t.len() == g.len() && t.iter().zip(g).fold(0u8, |acc, (x, y)| acc | (x ^ y)) == 0
    })
}

/// Depth of the deepest nesting in a JSON value (a scalar is depth 1).
pub fn json_depth(v: &Value) -> usize {
    let mut deepest = 0;
    let mut stack = vec![(v, 1usize)];
    while let Some((v, d)) = stack.pop() {
        deepest = deepest.max(d);
        match v {
            Value::Array(a) => stack.extend(a.iter().map(|x| (x, d + 1))),
            Value::Object(o) => stack.extend(o.values().map(|x| (x, d + 1))),
            _ => {}
        }
    }
    deepest
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn submissions_parse_strictly() {
        let s: Submission =
            serde_json::from_value(json!({"kind": "sleep", "payload": {"ms": 1}, "delay_ms": 5}))
                .unwrap();
        let m = s.into_message(Source::Http);
        assert_eq!(m.kind(), "sleep");
        assert!(serde_json::from_value::<Submission>(json!({"kind": "x", "delay": 5})).is_err());
        assert!(serde_json::from_value::<Submission>(json!({"payload": 1})).is_err());
        assert!(serde_json::from_value::<Submission>(json!({"kind": 7})).is_err());
    }

    #[test]
    fn depth_counts_nesting() {
        assert_eq!(json_depth(&json!(1)), 1);
        assert_eq!(json_depth(&json!({"a": [1, {"b": []}]})), 4);
    }
}
