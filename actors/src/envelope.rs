//! The types every part of Mailroom shares: message ids, kinds, the [`Message`] a caller submits,
//! the [`Envelope`] that travels from the router to a processor, the [`Status`] lifecycle and the
//! [`Outcome`] a caller reads back.
//!
//! Nothing here does I/O or fails at run time: constructors that can reject input (such as
//! [`Kind::new`]) return a `Result` and never panic.

use std::borrow::Cow;
use std::collections::HashSet;
use std::fmt;
use std::str::FromStr;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, OnceLock};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use parking_lot::Mutex;
use serde::{Deserialize, Deserializer, Serialize, Serializer};
use serde_json::Value;

/// A message's id: unique within the process, sortable by acceptance time, shown as a ULID.
///
/// The high 64 bits are `unix_ms << 16 | sequence`, advanced with one atomic operation so ids
/// taken in one process are strictly increasing; the low 64 bits are random per process, so two
/// processes do not mint the same id.
#[derive(Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct MessageId(u128);

static LAST_TICK: AtomicU64 = AtomicU64::new(0);
static PROCESS_BITS: OnceLock<u64> = OnceLock::new();

impl MessageId {
    /// Mints a new id, greater than every id minted before it in this process.
    pub fn next() -> MessageId {
        let now = (unix_ms() << 16) & !0xffff;
        let prev = LAST_TICK
            .fetch_update(Ordering::Relaxed, Ordering::Relaxed, |last| {
                Some(if now > last { now } else { last + 1 })
            })
            .unwrap_or_else(|last| last);
        let tick = if now > prev { now } else { prev + 1 };
        let low = *PROCESS_BITS.get_or_init(|| fastrand::u64(..));
        MessageId(((tick as u128) << 64) | low as u128)
    }

    /// The id as a ULID (to write it without allocating).
    pub(crate) fn as_ulid(self) -> ulid::Ulid {
        ulid::Ulid(self.0)
    }

    /// The raw 128-bit value.
    pub fn as_u128(self) -> u128 {
        self.0
    }

    /// Builds an id from its raw value (for stores that persist ids).
    pub fn from_u128(raw: u128) -> MessageId {
        MessageId(raw)
    }

    /// Milliseconds since the Unix epoch at which the id was minted.
    pub fn timestamp_ms(self) -> u64 {
        (self.0 >> 80) as u64
    }

    /// A cheap, well-spread hash of the id, used to pick a store shard.
    pub(crate) fn spread(self) -> u64 {
        ((self.0 >> 64) as u64 ^ self.0 as u64).wrapping_mul(0x9E37_79B9_7F4A_7C15)
    }
}

impl fmt::Display for MessageId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        fmt::Display::fmt(&ulid::Ulid(self.0), f)
    }
}

impl fmt::Debug for MessageId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "MessageId({self})")
    }
}

/// The text was not a message id (a 26-character ULID).
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("not a message id (expected a 26-character ULID): {0:?}")]
pub struct BadMessageId(pub String);

impl FromStr for MessageId {
    type Err = BadMessageId;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        ulid::Ulid::from_string(s)
            .map(|u| MessageId(u.0))
            .map_err(|_| BadMessageId(s.to_owned()))
    }
}

impl Serialize for MessageId {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        let mut text = [0u8; ulid::ULID_LEN];
        s.serialize_str(self.as_ulid().array_to_str(&mut text))
    }
}

impl<'de> Deserialize<'de> for MessageId {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let s = <std::borrow::Cow<'de, str>>::deserialize(d)?;
        s.parse().map_err(serde::de::Error::custom)
    }
}

/// A route key: `[a-z0-9_.-]{1,64}`.
///
/// Kinds are interned for the life of the process (there are as many as there are routes), so a
/// `Kind` is a plain `&'static str` and copying one costs nothing on the hot path.
#[derive(Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct Kind(&'static str);

/// The text is not a valid kind.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("invalid kind {0:?}: expected 1 to 64 characters from a-z, 0-9, '_', '.', '-'")]
pub struct BadKind(pub String);

impl Kind {
    /// Validates and interns a kind.
    pub fn new(name: &str) -> Result<Kind, BadKind> {
        if !Kind::is_valid(name) {
            return Err(BadKind(name.to_owned()));
        }
        static INTERNED: OnceLock<Mutex<HashSet<&'static str>>> = OnceLock::new();
        let mut set = INTERNED.get_or_init(Default::default).lock();
        if let Some(&k) = set.get(name) {
            return Ok(Kind(k));
        }
        let leaked: &'static str = Box::leak(name.to_owned().into_boxed_str());
        set.insert(leaked);
        Ok(Kind(leaked))
    }

    /// Whether `name` matches `[a-z0-9_.-]{1,64}`.
    pub fn is_valid(name: &str) -> bool {
        (1..=64).contains(&name.len())
            && name
                .bytes()
                .all(|b| matches!(b, b'a'..=b'z' | b'0'..=b'9' | b'_' | b'.' | b'-'))
    }

    /// The kind's name.
    pub fn as_str(self) -> &'static str {
        self.0
    }
}

impl fmt::Display for Kind {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.0)
    }
}

impl fmt::Debug for Kind {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "Kind({})", self.0)
    }
}

impl Serialize for Kind {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_str(self.0)
    }
}

impl<'de> Deserialize<'de> for Kind {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let s = <std::borrow::Cow<'de, str>>::deserialize(d)?;
        Kind::new(&s).map_err(serde::de::Error::custom)
    }
}

/// Which event source a message came from.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize, Default)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
#[serde(rename_all = "snake_case")]
pub enum Source {
    /// Rust code calling the [`Dispatcher`](crate::Dispatcher) directly.
    #[default]
    Library,
    /// The HTTP API.
    Http,
    /// The newline-delimited JSON TCP source.
    Tcp,
    /// A `[[schedule]]` timer.
    Timer,
    /// A replay of a dead letter.
    Replay,
}

/// What a caller submits: a kind, a JSON payload and optional timing.
///
/// ```
/// use mailroom_actors::Message;
/// use std::time::Duration;
/// let m = Message::new("sleep", serde_json::json!({"ms": 10}))
///     .delay(Duration::from_millis(50))
///     .timeout(Duration::from_secs(1))
///     .key("order-17");
/// assert_eq!(m.kind(), "sleep");
/// ```
#[derive(Debug, Clone, PartialEq)]
pub struct Message {
    pub(crate) kind: Cow<'static, str>,
    pub(crate) payload: Value,
    pub(crate) delay: Option<Duration>,
    pub(crate) timeout: Option<Duration>,
    pub(crate) key: Option<String>,
    pub(crate) source: Source,
    pub(crate) replay_of: Option<MessageId>,
    pub(crate) client: Option<ClientId>,
}

impl Message {
    /// A message of `kind` carrying `payload`.
    pub fn new(kind: impl Into<Cow<'static, str>>, payload: Value) -> Message {
        Message {
            kind: kind.into(),
            payload,
            delay: None,
            timeout: None,
            key: None,
            source: Source::Library,
            replay_of: None,
            client: None,
        }
    }

    /// Runs the message no earlier than `delay` after it is accepted (asyncio's `call_later`).
    pub fn delay(mut self, delay: Duration) -> Message {
        self.delay = (!delay.is_zero()).then_some(delay);
        self
    }

    /// The message's own run timeout, overriding its route's.
    pub fn timeout(mut self, timeout: Duration) -> Message {
        self.timeout = Some(timeout);
        self
    }

    /// An idempotency key: while a message of the same kind with this key is remembered, a
    /// second submission returns the first one's id instead of running again.
    pub fn key(mut self, key: impl Into<String>) -> Message {
        self.key = Some(key.into());
        self
    }

    /// Names who submitted the message (a token, an address, a tenant): a route with
    /// [`RouteSettings::max_per_client`](crate::RouteSettings::max_per_client) holds at most
    /// that many unfinished messages of one client.
    pub fn client(mut self, client: impl Into<ClientId>) -> Message {
        self.client = Some(client.into());
        self
    }

    /// Marks which source the message came from (default [`Source::Library`]).
    pub fn source(mut self, source: Source) -> Message {
        self.source = source;
        self
    }

    /// The status it has once accepted: `delayed` with a delay, else `queued`.
    pub fn delayed_status(&self) -> Status {
        if self.delay.is_some() {
            Status::Delayed
        } else {
            Status::Queued
        }
    }

    /// The kind, as submitted.
    pub fn kind(&self) -> &str {
        &self.kind
    }

    /// The payload.
    pub fn payload(&self) -> &Value {
        &self.payload
    }

    /// Takes the payload back out of the message.
    pub fn into_payload(self) -> Value {
        self.payload
    }
}

/// An accepted message on its way through the router to a processor.
#[derive(Debug)]
pub struct Envelope {
    /// The id minted at acceptance.
    pub id: MessageId,
    /// The route key.
    pub kind: Kind,
    /// The JSON payload.
    pub payload: Value,
    /// The source it came from.
    pub source: Source,
    /// The attempt about to run (1 for the first run).
    pub attempt: u32,
    /// Run no earlier than this (a delay, or a retry's backoff).
    pub not_before: Option<Instant>,
    /// The message's own run timeout, if it set one.
    pub timeout: Option<Duration>,
    /// The idempotency key, if any.
    pub key: Option<String>,
    /// The dead letter this message replays, if any.
    pub replay_of: Option<MessageId>,
    /// Index of the route in the routing table.
    pub(crate) route: usize,
    /// The store's handle to the message's record.
    pub(crate) ticket: crate::store::Ticket,
    /// The error of every failed attempt so far (kept only on routes that retry).
    pub(crate) history: Vec<ErrorInfo>,
    /// The message's place in its client's share of the route, given back when the envelope
    /// is dropped (the message has ended).
    pub(crate) _share: Option<crate::route::ShareSlot>,
    /// Set while the message runs ahead of its `Accepted` record (a pure message, with
    /// durable storage): its attempt is settled only once this says the record is durable.
    pub(crate) commit: Option<std::sync::Arc<crate::commit::Commit>>,
}

impl Envelope {
    /// The message as its submitter sent it, to hand back with a refusal.
    pub(crate) fn message(&self) -> Message {
        let mut msg = Message::new(self.kind.as_str(), self.payload.clone());
        msg.source = self.source;
        msg.key = self.key.clone();
        msg.timeout = self.timeout;
        msg.replay_of = self.replay_of;
        msg
    }
}

/// Where a message is in its lifecycle:
/// `queued → (delayed) → running → completed | failed | timed_out | cancelled | dead`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
#[serde(rename_all = "snake_case")]
pub enum Status {
    /// Accepted, waiting for its processor.
    Queued,
    /// Accepted, waiting for its time (a delay, or a retry's backoff).
    Delayed,
    /// Its processor is working on it.
    Running,
    /// Finished with a result.
    Completed,
    /// Finished with an error, on a route without retries.
    Failed,
    /// Its run timeout elapsed, on a route without retries.
    TimedOut,
    /// Cancelled before it ran (by a caller, or by shutdown).
    Cancelled,
    /// Failed on every one of its attempts; kept in the dead letters.
    Dead,
}

impl Status {
    /// Every status, in lifecycle order.
    pub const ALL: [Status; 8] = [
        Status::Queued,
        Status::Delayed,
        Status::Running,
        Status::Completed,
        Status::Failed,
        Status::TimedOut,
        Status::Cancelled,
        Status::Dead,
    ];

    /// Whether the message has reached its final state.
    pub fn is_terminal(self) -> bool {
        !matches!(self, Status::Queued | Status::Delayed | Status::Running)
    }

    /// The status as written in the API (`timed_out`, …).
    pub fn as_str(self) -> &'static str {
        match self {
            Status::Queued => "queued",
            Status::Delayed => "delayed",
            Status::Running => "running",
            Status::Completed => "completed",
            Status::Failed => "failed",
            Status::TimedOut => "timed_out",
            Status::Cancelled => "cancelled",
            Status::Dead => "dead",
        }
    }
}

impl fmt::Display for Status {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// Why a message did not complete, as a coarse class a program can branch on.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
#[serde(rename_all = "snake_case")]
pub enum ErrorClass {
    /// The processor returned an error.
    Error,
    /// The processor panicked; the message carries the panic text.
    Panic,
    /// The run timeout elapsed (or an upstream did not answer in time).
    Timeout,
    /// Cancelled by a caller before it ran.
    Cancelled,
    /// Cancelled because the dispatcher shut down before it could run or finish.
    Shutdown,
    /// `fetch` refused a loopback, private or link-local target.
    Forbidden,
    /// `fetch` could not reach or read the upstream.
    Upstream,
    /// The payload was not valid for the processor.
    Invalid,
}

impl ErrorClass {
    /// The class as written in the API.
    pub fn as_str(self) -> &'static str {
        match self {
            ErrorClass::Error => "error",
            ErrorClass::Panic => "panic",
            ErrorClass::Timeout => "timeout",
            ErrorClass::Cancelled => "cancelled",
            ErrorClass::Shutdown => "shutdown",
            ErrorClass::Forbidden => "forbidden",
            ErrorClass::Upstream => "upstream",
            ErrorClass::Invalid => "invalid",
        }
    }
}

/// An error with its class, as reported in an [`Outcome`].
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub struct ErrorInfo {
    /// The coarse class.
    pub class: ErrorClass,
    /// What happened, in words.
    pub message: String,
}

impl ErrorInfo {
    /// Longest error message kept, in bytes: a processor (or a panic) that fails with a
    /// megabyte of text is recorded with its first 4 KiB and "…".
    pub const MAX_MESSAGE_BYTES: usize = 4096;

    /// An error of `class` saying `message` (cut to [`ErrorInfo::MAX_MESSAGE_BYTES`]).
    pub fn new(class: ErrorClass, message: impl Into<String>) -> ErrorInfo {
        let mut message = message.into();
        if message.len() > Self::MAX_MESSAGE_BYTES {
            message = crate::source::truncated(&message, Self::MAX_MESSAGE_BYTES).into_owned();
        }
        ErrorInfo { class, message }
    }
}

/// Who submitted a message, for per-client limits
/// ([`RouteSettings::max_per_client`](crate::RouteSettings::max_per_client)). Made without an
/// allocation for the service's own kinds (a token's place, an address), so naming every
/// message's client costs nothing on the hot path.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub enum ClientId {
    /// A name the application gives (a tenant, a user).
    Named(Arc<str>),
    /// The n-th of the server's accepted tokens (never the token's text).
    Token(usize),
    /// An IPv4 address, or an IPv6 /64 (the low 64 bits zeroed), which one host commonly holds
    /// whole.
    Address(std::net::IpAddr),
}

impl ClientId {
    /// The client of `peer`'s address: IPv4 (or IPv4-mapped) as is, IPv6 by its /64.
    pub fn address(peer: std::net::IpAddr) -> ClientId {
        use std::net::{IpAddr, Ipv6Addr};
        ClientId::Address(match peer {
            IpAddr::V6(v6) => match v6.to_ipv4_mapped() {
                Some(v4) => IpAddr::V4(v4),
                None => IpAddr::V6(Ipv6Addr::from(u128::from(v6) & !u128::from(u64::MAX))),
            },
            v4 => v4,
        })
    }
}

impl fmt::Display for ClientId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            ClientId::Named(n) => f.write_str(n),
            ClientId::Token(i) => write!(f, "token#{i}"),
            ClientId::Address(std::net::IpAddr::V6(v6)) => write!(f, "{v6}/64"),
            ClientId::Address(ip) => write!(f, "{ip}"),
        }
    }
}

impl From<&str> for ClientId {
    fn from(name: &str) -> ClientId {
        ClientId::Named(name.into())
    }
}

impl From<String> for ClientId {
    fn from(name: String) -> ClientId {
        ClientId::Named(name.into())
    }
}

/// About how many bytes `v` takes in memory (strings and numbers by their text, plus a small
/// fixed cost per node): what the byte budgets of kept outcomes and dead letters count.
pub(crate) fn approx_bytes(v: &Value) -> usize {
    const NODE: usize = 32;
    let mut total = 0;
    let mut stack = vec![v];
    while let Some(v) = stack.pop() {
        total += NODE;
        match v {
            Value::String(s) => total += s.len(),
            Value::Number(n) => total += n.as_str().len(),
            Value::Array(a) => stack.extend(a.iter()),
            Value::Object(o) => {
                total += o.keys().map(|k| k.len() + NODE).sum::<usize>();
                stack.extend(o.values());
            }
            Value::Null | Value::Bool(_) => {}
        }
    }
    total
}

/// How long a message spent in each phase, in milliseconds.
#[derive(Debug, Clone, Copy, PartialEq, Default, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub struct Timings {
    /// From acceptance to the start of its last attempt (or to now / its end if it never ran).
    pub queued_ms: f64,
    /// Running time of its last attempt (0 if it never ran).
    pub run_ms: f64,
    /// From acceptance to its end (or to now while it is not finished).
    pub total_ms: f64,
}

/// A message's state as a caller reads it: its status and, once finished, its result or error.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub struct Outcome {
    /// The message's id.
    #[cfg_attr(feature = "openapi", schema(value_type = String))]
    pub id: MessageId,
    /// Its kind.
    #[cfg_attr(feature = "openapi", schema(value_type = String))]
    pub kind: Kind,
    /// Where it is in its lifecycle.
    pub status: Status,
    /// The processor's result, when `completed`.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub result: Option<Value>,
    /// Why it did not complete, when finished otherwise.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub error: Option<ErrorInfo>,
    /// How many attempts have started.
    pub attempts: u32,
    /// Which source submitted it.
    pub source: Source,
    /// Acceptance time, milliseconds since the Unix epoch.
    pub accepted_at_ms: u64,
    /// Time spent queued and running.
    pub timings: Timings,
    /// The dead letter this message replays, if any.
    #[serde(skip_serializing_if = "Option::is_none")]
    #[cfg_attr(feature = "openapi", schema(value_type = Option<String>))]
    pub replay_of: Option<MessageId>,
}

impl Outcome {
    /// Whether the message completed with a result.
    pub fn is_completed(&self) -> bool {
        self.status == Status::Completed
    }

    /// The outcome as JSON: the same bytes as `serde_json::to_vec(&outcome)`, written in one
    /// pass with the field names as fixed text and the id, kind and status copied as they are
    /// (none of them can hold a byte JSON escapes; serde escapes every name and string byte by
    /// byte, the largest part of an `echo` answer's cost). The HTTP API answers with it. It
    /// fails only where serde would: a result that cannot be written as JSON.
    pub fn to_json(&self) -> serde_json::Result<Vec<u8>> {
        // Every field by name: a field added to `Outcome` or `Timings` fails to compile here
        // until it is written below (and the test comparing the bytes with serde's covers it).
        let Outcome {
            id: _,
            kind: _,
            status: _,
            result: _,
            error: _,
            attempts: _,
            source: _,
            accepted_at_ms: _,
            timings:
                Timings {
                    queued_ms: _,
                    run_ms: _,
                    total_ms: _,
                },
            replay_of: _,
        } = self;
        let mut out = Vec::with_capacity(256);
        let mut id = [0u8; ulid::ULID_LEN];
        out.extend_from_slice(b"{\"id\":");
        plain_str(&mut out, self.id.as_ulid().array_to_str(&mut id));
        out.extend_from_slice(b",\"kind\":");
        plain_str(&mut out, self.kind.as_str());
        out.extend_from_slice(b",\"status\":");
        plain_str(&mut out, self.status.as_str());
        if let Some(result) = &self.result {
            out.extend_from_slice(b",\"result\":");
            serde_json::to_writer(&mut out, result)?;
        }
        if let Some(error) = &self.error {
            out.extend_from_slice(b",\"error\":");
            serde_json::to_writer(&mut out, error)?;
        }
        out.extend_from_slice(b",\"attempts\":");
        serde_json::to_writer(&mut out, &self.attempts)?;
        out.extend_from_slice(b",\"source\":");
        serde_json::to_writer(&mut out, &self.source)?;
        out.extend_from_slice(b",\"accepted_at_ms\":");
        serde_json::to_writer(&mut out, &self.accepted_at_ms)?;
        out.extend_from_slice(b",\"timings\":{\"queued_ms\":");
        serde_json::to_writer(&mut out, &self.timings.queued_ms)?;
        out.extend_from_slice(b",\"run_ms\":");
        serde_json::to_writer(&mut out, &self.timings.run_ms)?;
        out.extend_from_slice(b",\"total_ms\":");
        serde_json::to_writer(&mut out, &self.timings.total_ms)?;
        out.push(b'}');
        if let Some(replay_of) = self.replay_of {
            out.extend_from_slice(b",\"replay_of\":");
            plain_str(&mut out, replay_of.as_ulid().array_to_str(&mut id));
        }
        out.push(b'}');
        Ok(out)
    }
}

/// Writes `s`, which has no byte JSON escapes (a base-32 id, a kind, a status), between quotes.
pub(crate) fn plain_str(out: &mut Vec<u8>, s: &str) {
    debug_assert!(s.bytes().all(|b| b >= 0x20 && b != b'"' && b != b'\\'));
    out.push(b'"');
    out.extend_from_slice(s.as_bytes());
    out.push(b'"');
}

pub(crate) fn unix_ms() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_millis() as u64)
        .unwrap_or(0)
}

/// Milliseconds, rounded to the microsecond.
pub(crate) fn millis(d: Duration) -> f64 {
    // Through u64, not u128: converting a u128 to f64 is a call of its own, and u64
    // microseconds cover 584,000 years.
    u64::try_from(d.as_micros()).unwrap_or(u64::MAX) as f64 / 1000.0
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn millis_are_the_microseconds_over_a_thousand() {
        for (d, want) in [
            (Duration::ZERO, 0.0),
            (Duration::from_nanos(999), 0.0),
            (Duration::from_micros(1_234_567), 1_234.567),
            (Duration::new(86_400 * 365, 1_000), 31_536_000_000.001),
            (Duration::MAX, u64::MAX as f64 / 1000.0),
        ] {
            assert_eq!(millis(d), want, "{d:?}");
            if d < Duration::from_secs(1 << 40) {
                assert_eq!(millis(d), d.as_micros() as f64 / 1000.0, "{d:?}");
            }
        }
    }

    #[test]
    fn an_outcome_writes_the_bytes_serde_writes() {
        let base = Outcome {
            id: MessageId::next(),
            kind: Kind::new("echo").unwrap(),
            status: Status::Completed,
            result: Some(
                serde_json::json!({"hello": "wörld \"q\" \\ \n\t\u{1}", "n": [1, 2.5, -3e300, null, true, {}], "z": {"a": 1}}),
            ),
            error: None,
            attempts: 1,
            source: Source::Http,
            accepted_at_ms: 1_764_000_000_123,
            timings: Timings {
                queued_ms: 0.012,
                run_ms: 1.0,
                total_ms: 123_456.789,
            },
            replay_of: None,
        };
        let cases = [
            base.clone(),
            Outcome {
                status: Status::Dead,
                result: None,
                error: Some(ErrorInfo::new(ErrorClass::Panic, "it said \"no\"\n\u{7f}")),
                attempts: 3,
                source: Source::Replay,
                replay_of: Some(MessageId::next()),
                timings: Timings::default(),
                ..base.clone()
            },
            Outcome {
                status: Status::Queued,
                result: None,
                kind: Kind::new("a.b-c_9").unwrap(),
                source: Source::Library,
                ..base.clone()
            },
            Outcome {
                result: Some(Value::String(String::new())),
                ..base.clone()
            },
        ];
        for o in cases {
            assert_eq!(
                String::from_utf8(o.to_json().unwrap()).unwrap(),
                serde_json::to_string(&o).unwrap()
            );
        }
    }

    #[test]
    fn ids_increase_and_round_trip_through_text() {
        let a = MessageId::next();
        let b = MessageId::next();
        assert!(b > a);
        assert!(b.to_string() > a.to_string(), "text order follows id order");
        assert_eq!(a.to_string().len(), 26);
        assert_eq!(a.to_string().parse::<MessageId>().unwrap(), a);
        assert!("nope".parse::<MessageId>().is_err());
        let age = unix_ms().abs_diff(a.timestamp_ms());
        assert!(
            age < 10_000,
            "id timestamp is the current time, off by {age} ms"
        );
    }

    #[test]
    fn kinds_are_validated_and_interned() {
        assert_eq!(Kind::new("echo").unwrap(), Kind::new("echo").unwrap());
        assert!(std::ptr::eq(
            Kind::new("a.b-c_1").unwrap().as_str(),
            Kind::new("a.b-c_1").unwrap().as_str()
        ));
        for bad in ["", "Echo", "has space", "ü", &"x".repeat(65)] {
            assert!(Kind::new(bad).is_err(), "{bad:?} should be refused");
        }
        assert!(Kind::new(&"x".repeat(64)).is_ok());
    }
}
