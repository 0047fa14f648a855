//! Setting up a cluster on the NATS server: the names of its stream, consumers and buckets,
//! and creating what is missing. Existing resources are checked: a stream of the cluster's name
//! that is not a work queue, or has other subjects, stops start-up with an error saying so (it
//! is never changed or deleted); consumers are updated to the routes' settings (a deploy that
//! changed a route).

use std::time::Duration;

use async_nats::jetstream::{self, consumer, kv, stream};

use super::{ClusterError, ClusterRoute};
use crate::envelope::Kind;

/// Names of what a cluster called `name` with these routes uses on the NATS server: the
/// streams and consumers (one of each per route) and the buckets (for `check-config`).
pub fn resources(name: &str, kinds: &[&str]) -> Vec<String> {
    let mut out = Vec::new();
    for k in kinds {
        out.push(format!(
            "stream {} (work queue, file storage, subjects {}.>, at most the route's capacity), \
             consumer {}",
            stream_name(name, k),
            subject(name, k),
            consumer_name(name, k)
        ));
    }
    for b in ["messages", "keys", "dead"] {
        out.push(format!("key-value bucket {name}_{b}"));
    }
    out
}

/// A kind as a subject token or a consumer name: `.` (which JetStream gives a meaning) becomes
/// `~` (which no kind contains).
pub(super) fn token(kind: &str) -> String {
    kind.replace('.', "~")
}

pub(super) fn subject(name: &str, kind: &str) -> String {
    format!("{name}.work.{}", token(kind))
}

pub(super) fn stream_name(name: &str, kind: &str) -> String {
    format!("{name}_work_{}", token(kind))
}

pub(super) fn consumer_name(name: &str, kind: &str) -> String {
    format!("{name}_{}", token(kind))
}

/// An idempotency key as a bucket key: the kind, then the key's bytes in hex (a user's key
/// may hold anything; bucket keys may not).
pub(super) fn key_name(kind: Kind, key: &str) -> String {
    let mut out = String::with_capacity(kind.as_str().len() + 1 + key.len() * 2);
    out.push_str(&token(kind.as_str()));
    out.push('.');
    for b in key.bytes() {
        out.push_str(&format!("{b:02x}"));
    }
    out
}

/// A route's work stream: a work queue on file storage holding at most the route's capacity
/// of messages (queued, delayed and running: a work queue drops a message once it is
/// acknowledged); past it a publish is refused, so the route is bounded over the whole cluster
/// as it is on one node.
///
/// Each message has a subject of its own, `SUBJECT.<id>`, so any node can read a waiting
/// message by its id (a direct get).
pub(super) async fn ensure_stream(
    js: &jetstream::Context,
    stream: &str,
    subject: &str,
    capacity: u64,
) -> Result<stream::Stream, ClusterError> {
    let config = stream::Config {
        name: stream.to_owned(),
        subjects: vec![format!("{subject}.>")],
        retention: stream::RetentionPolicy::WorkQueue,
        storage: stream::StorageType::File,
        duplicate_window: Duration::from_secs(120),
        max_messages: capacity.min(i64::MAX as u64) as i64,
        discard: stream::DiscardPolicy::New,
        allow_direct: true,
        ..Default::default()
    };
    // Nodes starting together race to create it: one that loses finds it made by another.
    let found = match js.get_stream(stream).await {
        Ok(s) => Ok(s),
        Err(_) => match js.create_stream(config.clone()).await {
            Ok(s) => return Ok(s),
            Err(e) => js.get_stream(stream).await.map_err(|_| e),
        },
    };
    match found {
        Ok(mut s) => {
            let info = s
                .info()
                .await
                .map_err(|e| ClusterError::Setup(e.to_string()))?;
            if info.config.retention != stream::RetentionPolicy::WorkQueue {
                return Err(ClusterError::Setup(format!(
                    "stream {stream} exists but is not a work queue; remove it or choose another \
                     cluster name"
                )));
            }
            if info.config.subjects != config.subjects {
                return Err(ClusterError::Setup(format!(
                    "stream {stream} exists with subjects {:?}, expected {:?}",
                    info.config.subjects, config.subjects
                )));
            }
            if info.config.max_messages != config.max_messages
                || info.config.discard != config.discard
                || !info.config.allow_direct
            {
                // A deploy that changed the route's capacity.
                let mut updated = info.config.clone();
                updated.max_messages = config.max_messages;
                updated.discard = config.discard;
                updated.allow_direct = true;
                js.update_stream(updated).await.map_err(|e| {
                    ClusterError::Setup(format!("cannot update the limits of {stream}: {e}"))
                })?;
            }
            Ok(s)
        }
        Err(e) => Err(ClusterError::Setup(format!(
            "cannot create stream {stream}: {e}"
        ))),
    }
}

pub(super) async fn ensure_consumer(
    route: &ClusterRoute,
    ack_wait: Duration,
) -> Result<(), ClusterError> {
    // Created, or updated to these settings if it exists (a deploy that changed a route).
    route
        .handle
        .create_consumer(consumer::pull::Config {
            durable_name: Some(route.consumer.clone()),
            filter_subject: format!("{}.>", route.subject),
            ack_policy: consumer::AckPolicy::Explicit,
            ack_wait,
            max_deliver: -1,
            max_ack_pending: route.capacity.min(i64::MAX as u64) as i64,
            ..Default::default()
        })
        .await
        .map(drop)
        .map_err(|e| ClusterError::Setup(format!("consumer {}: {e}", route.consumer)))
}

/// A key-value bucket on file storage, one value per key, each kept at most `max_age` (zero:
/// until deleted), at most `max_values` and `max_bytes` of them: past either, the oldest go
/// first (the bucket's stream is set to discard old values; a bucket that refused new ones
/// would stop the cluster). An existing bucket is brought to these limits.
pub(super) async fn ensure_bucket(
    js: &jetstream::Context,
    bucket: &str,
    max_age: Duration,
    max_values: usize,
    max_bytes: usize,
) -> Result<kv::Store, ClusterError> {
    let setup = |e: &dyn std::fmt::Display| ClusterError::Setup(format!("bucket {bucket}: {e}"));
    let store = match js.get_key_value(bucket).await {
        Ok(store) => store,
        Err(_) => match js
            .create_key_value(kv::Config {
                bucket: bucket.to_owned(),
                history: 1,
                max_age,
                max_bytes: max_bytes.min(i64::MAX as usize) as i64,
                storage: stream::StorageType::File,
                ..Default::default()
            })
            .await
        {
            Ok(store) => store,
            // Nodes starting together race to create it: one that loses (its create differs
            // from the limits the winner has set since) finds it made by another.
            Err(e) => js.get_key_value(bucket).await.map_err(|_| setup(&e))?,
        },
    };
    let mut s = js
        .get_stream(format!("KV_{bucket}"))
        .await
        .map_err(|e| setup(&e))?;
    let config = s.info().await.map_err(|e| setup(&e))?.config.clone();
    let mut want = config.clone();
    want.discard = stream::DiscardPolicy::Old;
    want.max_age = max_age;
    want.max_messages = max_values.min(i64::MAX as usize) as i64;
    want.max_bytes = max_bytes.min(i64::MAX as usize) as i64;
    if want != config {
        js.update_stream(want).await.map_err(|e| setup(&e))?;
    }
    Ok(store)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_are_valid_nats_tokens() {
        assert_eq!(subject("mr", "a.b-c_d"), "mr.work.a~b-c_d");
        assert_eq!(consumer_name("mr", "a.b"), "mr_a~b");
        let k = Kind::new("echo").unwrap();
        assert_eq!(key_name(k, "a b/é"), "echo.6120622fc3a9");
    }
}
