//! The cluster: several Mailroom nodes sharing the work through NATS JetStream (feature
//! `cluster`). The embedded journal stays the storage of a single node; a cluster node keeps
//! nothing of its own on disk.
//!
//! What lives where (names start with the cluster's `name`, `P` below):
//! - per route, `P_work_<kind>`, a work-queue stream on file storage, holding at most the
//!   route's capacity (queued, delayed and running; a publish past it is refused: `route full`).
//!   One stream message per accepted message, on subject `P.work.<kind>.<id>` (so any node reads
//!   a waiting message by its id), its body the [`Record::Accepted`] a journal would hold, its
//!   JetStream message id the message's id (a publish retried after a lost answer is stored
//!   once). Admission answers only after JetStream has acknowledged the publish.
//! - per route, one durable pull consumer `P_<kind>`: every node pulls from it, at most the
//!   route's concurrency at a time per node, asking only for as many as it has free slots.
//! - `P_messages`, a key-value bucket: each message's [`Outcome`] by id, made (`create`) by the
//!   node that takes the message or by a cancel, whichever comes first, then changed only by
//!   compare-and-set on its revision: a message cancelled on one node and started on another
//!   ends one way only, and a redelivered message that already finished is acknowledged without
//!   running again. A waiter listens to its own message's updates (a plain subscription).
//! - `P_keys` (idempotency keys, `kind.key` to id) and `P_dead` (dead letters by id). A
//!   replayed letter is removed from `P_dead` (its delete marker too, which would count toward
//!   the bucket's limit), after its message's entry is marked replayed: that mark, not the
//!   letter, keeps a late delivery of the message from filing the letter again.
//!
//! A pulled message runs on this node's own [`Dispatcher`] (routers, supervised workers, the
//! CPU pool, all in memory): the cluster only decides when and where. One delivery is one
//! attempt; a failed attempt with retries left is handed back to JetStream (`nak`) with the
//! route's backoff; a delayed message is handed back until its due time. While an attempt runs
//! the node tells JetStream it is making progress; a node that dies stops doing so and the
//! message is delivered to another node after `ack_wait`.
//!
//! Why not a [`Storage`](crate::Storage): a storage is one node's write-ahead log, read back
//! into that node's memory at start-up. A cluster's state must be read and changed by every node
//! at any time, so it lives in NATS, and each change is a compare-and-set there (what the
//! single node's index does in memory).
//!
//! Failure: while NATS cannot be reached, admission refuses with
//! [`StorageError::Unavailable`], reads fail with [`ClusterError::Unreachable`], and the client
//! reconnects by itself. A refusal before the publish keeps nothing; a publish whose answer was
//! lost (tried twice) may have been stored, so the message may run (the client was told to try
//! again; with its idempotency key it gets the same id). A terminal state that cannot be written
//! is retried 120 times (two to twelve minutes) while the delivery is kept alive; if the node
//! dies first, the message is delivered again and runs again (at least once).

use std::collections::HashMap;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering::Relaxed};
use std::sync::Arc;
use std::time::{Duration, Instant};

use async_nats::jetstream::{self, consumer, kv, stream};
use bytes::Bytes;
use futures_util::{StreamExt, TryStreamExt};
use parking_lot::Mutex;
use serde::{Deserialize, Serialize};

use crate::dead_letters::DeadLetter;
use crate::dispatcher::{Dispatcher, DispatcherBuilder, ShutdownReport};
use crate::envelope::{unix_ms, ErrorClass, ErrorInfo, Kind, Message, MessageId, Outcome, Status};
use crate::error::{BuildError, CancelError, Rejected, ReplayError};
use crate::processor::Pool;
use crate::route::RouteInfo;
use crate::storage::{Accepted, Record, StorageError};

mod setup;
mod work;

pub use setup::resources;
use setup::{
    consumer_name, ensure_bucket, ensure_consumer, ensure_stream, key_name, stream_name, subject,
};

/// Where the cluster's NATS server is and what this node is called (`[cluster]` in the
/// service's configuration).
#[derive(Debug, Clone, PartialEq)]
pub struct ClusterSettings {
    /// The NATS server, e.g. `nats://127.0.0.1:4222`.
    pub nats_url: String,
    /// Prefix of every stream, consumer and bucket: nodes with the same name share the work.
    pub name: String,
    /// This node's name, as shown in a message's outcome and in logs.
    pub node: String,
    /// How long JetStream waits for a delivered message's acknowledgement (or a sign of
    /// progress, sent every third of it while an attempt runs) before delivering it to another
    /// node: the time from a node's death to its messages running elsewhere.
    pub ack_wait: Duration,
}

/// What a cluster node could not do.
#[derive(Debug, Clone, thiserror::Error)]
pub enum ClusterError {
    /// The NATS server could not be reached at start-up.
    #[error("cannot connect to NATS at {url}: {reason}")]
    Connect {
        /// The URL tried.
        url: String,
        /// What the client said.
        reason: String,
    },
    /// A stream, consumer or bucket could not be created, or exists with settings that do not
    /// fit (e.g. a stream of the same name that is not a work queue).
    #[error("NATS JetStream set-up: {0}")]
    Setup(String),
    /// NATS is unreachable now (the node reconnects by itself).
    #[error("NATS is unreachable: {0}")]
    Unreachable(String),
    /// The local dispatcher could not be built.
    #[error(transparent)]
    Build(#[from] BuildError),
}

fn unreachable(e: impl std::fmt::Display) -> ClusterError {
    ClusterError::Unreachable(e.to_string())
}

/// A message's entry in the `P_messages` bucket.
#[derive(Debug, Clone, Serialize, Deserialize)]
struct Entry {
    outcome: Outcome,
    /// The node that ran (or runs) its last attempt.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    node: Option<String>,
    /// When its last attempt started, Unix milliseconds.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    started_ms: Option<u64>,
    /// The error of each failed or lost attempt, for the dead letter.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    errors: Vec<ErrorInfo>,
    /// Attempts that ended with an error (what the route's retries count).
    #[serde(default)]
    failures: u32,
    /// Attempts whose node stopped before it reported (run again, up to [`MAX_LOST_RUNS`]).
    #[serde(default)]
    lost: u32,
    /// Of a dead message: JetStream's delivery count when it died, so that later deliveries
    /// count the tries to file its dead letter.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    died_at_delivery: Option<i64>,
    /// Of a dead message whose letter was replayed: the replay's id. Written before the letter
    /// is removed, so that a late delivery of the message does not file the letter again.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    replayed_as: Option<MessageId>,
}

/// Bytes of idempotency keys the cluster keeps (the oldest are forgotten past it).
const KEYS_BYTES: usize = 64 * 1024 * 1024;

/// How many times a message is run again because the node running it died, on top of its
/// retries: a message that kills every node that runs it ends after this many.
pub const MAX_LOST_RUNS: u32 = 2;

/// Deepest payload a cluster node admits (as deep as a single node's HTTP admission allows).
const MAX_PAYLOAD_DEPTH: usize = 128;
/// Deepest record, entry or dead letter read back from NATS: a payload or result, plus the few
/// levels it is wrapped in. Anything deeper is refused unread (dropping or cloning a value that
/// deep would run out of stack).
pub(super) const MAX_READ_DEPTH: usize = MAX_PAYLOAD_DEPTH + 8;

/// Most claims a node remembers whose answer NATS lost ([`Inner::unanswered`]); beyond it, such
/// a claim counts as a lost attempt when it comes back, as one whose node died does.
const MAX_UNANSWERED: usize = 4096;

/// Most waits for an outcome (`?wait=true`, a long-poll, each item of a batch that waits) a node
/// listens for at once, each a NATS subscription: past it, a wait answers at once with the
/// message's state as it is (as one that timed out does).
const MAX_WAITERS: usize = 16_384;

/// Most dead-letter listings a node runs at once (the others wait their turn).
const MAX_LISTINGS: usize = 4;

/// About how many bytes of letters one listing reads from NATS before it stops (at least one
/// letter), so that a page of letters with large payloads holds a few MiB, not a thousand
/// payloads.
const LISTING_BYTES: usize = 2 * 1024 * 1024;

/// Letters one listing reads from NATS at a time.
const LISTING_CHUNK: usize = 8;

/// Claims of this node whose answer NATS lost, for one message: each entry it may have
/// written (a claim that read back its own earlier claim wrote a second), and when.
struct Unanswered {
    at: Instant,
    written: Vec<Bytes>,
}

/// Each message's claims remembered at most (the oldest first let go).
const UNANSWERED_PER_MESSAGE: usize = 4;

/// Remembers an unanswered claim ([`Inner::unanswered`]). One older than twice `ack_wait` (and
/// a minute) is forgotten when room is needed: by then its message has come back to this node,
/// or gone to another, where the claim counts as a lost attempt either way.
fn remember_unanswered(inner: &Inner, id: MessageId, mut claim: Unanswered) {
    let mut unanswered = inner.unanswered.lock();
    if unanswered.len() >= MAX_UNANSWERED {
        let keep = inner.settings.ack_wait * 2 + Duration::from_secs(60);
        unanswered.retain(|_, u| u.at.elapsed() < keep);
    }
    if unanswered.len() < MAX_UNANSWERED {
        let extra = claim.written.len().saturating_sub(UNANSWERED_PER_MESSAGE);
        claim.written.drain(..extra);
        unanswered.insert(id, claim);
    }
}

impl Entry {
    /// The entry of an accepted message that no node has taken yet.
    fn of(acc: &Accepted) -> Entry {
        Entry {
            outcome: waiting_outcome(acc).outcome,
            node: None,
            started_ms: None,
            errors: Vec::new(),
            failures: 0,
            lost: 0,
            died_at_delivery: None,
            replayed_as: None,
        }
    }

    fn encode(&self) -> Bytes {
        serde_json::to_vec(self)
            .expect("an entry always serializes")
            .into()
    }

    /// `None` past [`MAX_READ_DEPTH`] levels (which no node writes).
    fn decode(bytes: &[u8]) -> Option<Entry> {
        crate::storage::decode_within(bytes, MAX_READ_DEPTH)
    }

    /// The outcome as a reader sees it now (timings of an unfinished message run to now).
    fn current(mut self) -> ClusterOutcome {
        if !self.outcome.status.is_terminal() {
            let now = unix_ms();
            let accepted = self.outcome.accepted_at_ms;
            self.outcome.timings.total_ms = now.saturating_sub(accepted) as f64;
            self.outcome.timings.queued_ms =
                self.started_ms.unwrap_or(now).saturating_sub(accepted) as f64;
        }
        ClusterOutcome {
            outcome: self.outcome,
            node: self.node,
        }
    }
}

/// A message's state as a cluster node reports it: its [`Outcome`], and the node that ran (or
/// runs) its last attempt.
#[derive(Debug, Clone, Serialize, PartialEq)]
pub struct ClusterOutcome {
    /// The outcome, as a single node reports it.
    #[serde(flatten)]
    pub outcome: Outcome,
    /// The node of its last attempt (none before it first runs).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub node: Option<String>,
}

/// A route as the cluster runs it: its settings, its subject and its consumer.
struct ClusterRoute {
    kind: Kind,
    stream: String,
    /// The stream, for reading a waiting message by its subject.
    handle: stream::Stream,
    subject: String,
    consumer: String,
    retries: u32,
    backoff: Duration,
    capacity: u64,
    /// How many of its messages this node runs at once.
    slots: usize,
    /// This node's count of messages it accepted, and of terminal states it wrote.
    accepted: AtomicU64,
    finished: [AtomicU64; Status::ALL.len()],
}

/// The figures of one route: the cluster's, from JetStream (`None` when NATS did not answer
/// within 2 s, or cannot be reached), and this node's own.
#[derive(Debug, Clone, Serialize, PartialEq)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub struct ClusterRouteStats {
    /// The route's kind.
    #[cfg_attr(feature = "openapi", schema(value_type = String))]
    pub kind: Kind,
    /// Messages in the stream not yet delivered (queued cluster-wide).
    pub pending: Option<u64>,
    /// Messages delivered and not yet acknowledged: running, delayed, or waiting for a retry.
    pub ack_pending: Option<u64>,
    /// Messages delivered more than once (retries, delays, and redeliveries after a node died).
    pub redelivered: Option<u64>,
    /// Messages this node accepted.
    pub accepted_here: u64,
    /// Terminal states this node wrote, by status.
    pub finished_here: std::collections::BTreeMap<String, u64>,
}

/// This node's view of the cluster.
#[derive(Debug, Clone, Serialize, PartialEq)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub struct ClusterStats {
    /// This node's name.
    pub node: String,
    /// The cluster's name (prefix of its streams, consumers and buckets).
    pub name: String,
    /// Whether the node is connected to NATS now.
    pub connected: bool,
    /// Messages running on this node now.
    pub running_here: u64,
    /// Dead letters held by the cluster (`None` when NATS did not answer within 2 s, or cannot
    /// be reached).
    pub dead_letters: Option<u64>,
    /// Every route, whether or not NATS answered.
    pub routes: Vec<ClusterRouteStats>,
}

struct Inner {
    settings: ClusterSettings,
    client: async_nats::Client,
    js: jetstream::Context,
    messages: kv::Store,
    keys: kv::Store,
    dead: kv::Store,
    routes: Vec<ClusterRoute>,
    by_kind: HashMap<&'static str, usize>,
    local: Dispatcher,
    draining: AtomicBool,
    running: AtomicU64,
    /// The messages running here now (what a shutdown leaves to other nodes).
    running_ids: Mutex<std::collections::HashSet<MessageId>>,
    /// Claims this node wrote whose answer it never got (NATS went away meanwhile): each
    /// message's entry as written. When the message comes back to this node and its entry is
    /// exactly that, the claim landed and the message never ran: it runs now, and no attempt is
    /// counted lost. At most [`MAX_UNANSWERED`].
    unanswered: Mutex<HashMap<MessageId, Unanswered>>,
    /// The last [`Cluster::stats`] and when it was read: read at most once a second, however
    /// many pages and scrapers ask.
    stats: futures_util::lock::Mutex<Option<(Instant, ClusterStats)>>,
    tasks: Mutex<Vec<actix_rt::task::JoinHandle<()>>>,
    /// Waits listening now, at most [`MAX_WAITERS`].
    waiters: Arc<tokio::sync::Semaphore>,
    /// Dead-letter listings running now, at most [`MAX_LISTINGS`].
    listings: tokio::sync::Semaphore,
}

/// A node of a Mailroom cluster: admits messages into JetStream and runs its share of them.
/// Cheap to clone.
#[derive(Clone)]
pub struct Cluster(Arc<Inner>);

impl Cluster {
    /// Connects to NATS, creates the streams, consumers and buckets that are missing (and checks
    /// those that exist), builds this node's dispatcher from `builder` (its routes run one
    /// attempt per delivery: retries are JetStream's), and starts pulling. Must run inside an
    /// actix `System`.
    pub async fn join(
        settings: ClusterSettings,
        builder: DispatcherBuilder,
    ) -> Result<Cluster, ClusterError> {
        let name = settings.name.clone();
        let retries = builder.retries();
        let builder = builder.one_attempt_per_run();
        let result_ttl = builder.settings().result_ttl;
        let result_bytes = builder.settings().max_result_bytes;
        let dead_bytes = builder.settings().max_dead_letter_bytes;
        let max_results = builder.settings().max_results;
        let max_dead = builder.settings().max_dead_letters;
        let cpu_threads = builder.settings().cpu.resolved_threads();
        // A message's entry, which counts its failures, is kept `result_ttl` after its last
        // change: a retry that waits longer would find it gone and start counting again.
        // Checked before anything starts, so the error is this one whether NATS is up or not.
        let kept = result_ttl.max(Duration::from_secs(60));
        let mut routes_by_name: Vec<_> = retries.iter().collect();
        routes_by_name.sort();
        for (kind, &(retries, backoff)) in routes_by_name {
            let longest = work::longest_backoff(backoff, retries) + settings.ack_wait;
            if retries > 0 && longest >= kept {
                return Err(ClusterError::Setup(format!(
                    "route {kind}: its last retry may wait {} ms (its backoff doubled per retry, \
                     plus ack_wait), not less than the result TTL ({} ms) for which a message's \
                     failures are kept: lower its retries or backoff, or keep results longer",
                    longest.as_millis(),
                    kept.as_millis()
                )));
            }
        }
        let local = builder.build()?;
        let client = async_nats::ConnectOptions::new()
            .name(format!("mailroom {}", settings.node))
            .connection_timeout(Duration::from_secs(5))
            .max_reconnects(None)
            .reconnect_delay_callback(|n| Duration::from_millis((n as u64 * 100).min(1000)))
            .connect(&settings.nats_url)
            .await
            .map_err(|e| ClusterError::Connect {
                url: settings.nats_url.clone(),
                reason: e.to_string(),
            })?;
        let js = jetstream::new(client.clone());
        let infos = local.routes();
        let mut routes = Vec::with_capacity(infos.len());
        let mut by_kind = HashMap::new();
        for (i, info) in infos.iter().enumerate() {
            let (retries, backoff) = retries
                .get(info.kind.as_str())
                .copied()
                .unwrap_or((0, Duration::ZERO));
            let slots = match info.pool {
                Pool::Cpu => info.concurrency.min(cpu_threads * 4).max(1),
                Pool::Io => info.concurrency,
            };
            let stream = stream_name(&name, info.kind.as_str());
            let subject = subject(&name, info.kind.as_str());
            let handle = ensure_stream(&js, &stream, &subject, info.capacity).await?;
            let route = ClusterRoute {
                kind: info.kind,
                stream,
                handle,
                subject,
                consumer: consumer_name(&name, info.kind.as_str()),
                retries,
                backoff,
                capacity: info.capacity,
                slots,
                accepted: AtomicU64::new(0),
                finished: Default::default(),
            };
            ensure_consumer(&route, settings.ack_wait).await?;
            by_kind.insert(info.kind.as_str(), i);
            routes.push(route);
        }
        // An entry is made when a node takes its message (or a cancel does) and written again
        // at each change, so keeping each for the result TTL after its last change keeps every
        // outcome that long (an attempt that outlives its entry writes its end afresh). Keys
        // are kept as long. Past `max_results` / the byte bounds the oldest go first.
        let keep = result_ttl.max(Duration::from_secs(60));
        let bucket = |b: &str| format!("{name}_{b}");
        let messages =
            ensure_bucket(&js, &bucket("messages"), keep, max_results, result_bytes).await?;
        let keys = ensure_bucket(&js, &bucket("keys"), keep, max_results, KEYS_BYTES).await?;
        let dead =
            ensure_bucket(&js, &bucket("dead"), Duration::ZERO, max_dead, dead_bytes).await?;
        let cluster = Cluster(Arc::new(Inner {
            settings,
            client,
            js,
            messages,
            keys,
            dead,
            routes,
            by_kind,
            local,
            draining: AtomicBool::new(false),
            running: AtomicU64::new(0),
            running_ids: Mutex::new(Default::default()),
            unanswered: Mutex::new(HashMap::new()),
            stats: futures_util::lock::Mutex::new(None),
            waiters: Arc::new(tokio::sync::Semaphore::new(MAX_WAITERS)),
            listings: tokio::sync::Semaphore::new(MAX_LISTINGS),
            tasks: Mutex::new(Vec::new()),
        }));
        cluster.start();
        tracing::info!(
            node = %cluster.0.settings.node,
            cluster = %name,
            url = %cluster.0.settings.nats_url,
            routes = cluster.0.routes.len(),
            "joined the cluster"
        );
        Ok(cluster)
    }

    /// Starts one puller per route.
    fn start(&self) {
        let mut tasks = self.0.tasks.lock();
        for i in 0..self.0.routes.len() {
            tasks.push(actix_rt::spawn(work::pull(self.0.clone(), i)));
        }
    }

    /// This node's dispatcher (its routes' figures, its processors).
    pub fn dispatcher(&self) -> &Dispatcher {
        &self.0.local
    }

    /// This node's name.
    pub fn node(&self) -> &str {
        &self.0.settings.node
    }

    /// Whether the node is connected to NATS now.
    pub fn is_connected(&self) -> bool {
        self.0.client.connection_state() == async_nats::connection::State::Connected
    }

    /// Admits a message: checks it as a single node would, remembers its idempotency key, and
    /// publishes it to its route's stream; returns once JetStream has acknowledged the publish
    /// (an `Ok` survives the death of this node). With a key that is already known, returns the
    /// earlier message's id.
    pub async fn accept(&self, msg: Message) -> Result<MessageId, Rejected> {
        match self.prepare(msg).await? {
            Prepared::Known(id, _) => Ok(id),
            Prepared::New(p) => self.commit(p).await,
        }
    }

    /// Checks a message and takes its idempotency key: everything of admission but the publish.
    async fn prepare(&self, msg: Message) -> Result<Prepared, Rejected> {
        let inner = &self.0;
        if inner.draining.load(Relaxed) {
            return Err(Rejected::ShuttingDown(Box::new(msg)));
        }
        let (msg, index) = inner.local.admissible(msg)?;
        if !self.is_connected() {
            return Err(refused(msg, "NATS is unreachable"));
        }
        let route = &inner.routes[index];
        let id = MessageId::next();
        let record = accepted_record(id, route.kind, &msg);
        // A message too big for one NATS message could never be published, and one nested too
        // deep could not be read back: refused as invalid (a 422, not a 503 that a client
        // would retry for ever).
        let encoded: Bytes = record.encode().into();
        let (size, limit) = (encoded.len(), inner.client.server_info().max_payload);
        let refusal = if size + 1024 > limit {
            Some(format!(
                "the message takes {size} bytes as a record, more than the NATS server's \
                 max_payload ({limit} bytes, less 1 KiB for headers) allows"
            ))
        } else if !crate::storage::nests_within(&encoded, MAX_PAYLOAD_DEPTH + 2) {
            Some(format!(
                "its payload nests deeper than {MAX_PAYLOAD_DEPTH} levels"
            ))
        } else {
            None
        };
        if let Some(reason) = refusal {
            return Err(Rejected::Invalid {
                reason,
                message: Box::new(msg),
            });
        }
        let key = msg.key.as_ref().map(|k| key_name(route.kind, k));
        if let Some(k) = &key {
            match inner.keys.create(k, id.to_string().into()).await {
                Ok(_) => {}
                Err(e) if e.kind() == kv::CreateErrorKind::AlreadyExists => {
                    let held = match inner.keys.entry(k.clone()).await {
                        Ok(Some(e)) => e,
                        Ok(None) => {
                            return Err(refused(msg, "the idempotency key changed meanwhile"))
                        }
                        Err(e) => return Err(refused(msg, e)),
                    };
                    let first = std::str::from_utf8(&held.value)
                        .ok()
                        .and_then(|s| s.parse::<MessageId>().ok());
                    if let Some(first) = first {
                        match self.duplicate(first, index, &msg).await {
                            Ok(Some(id)) => return Ok(Prepared::Known(id, index)),
                            Err(e) => return Err(refused(msg, e)),
                            // The key names a message that never made it: this one takes it.
                            Ok(None) => {}
                        }
                    }
                    match inner
                        .keys
                        .update(k, id.to_string().into(), held.revision)
                        .await
                    {
                        Ok(_) => {}
                        Err(e) => return Err(refused(msg, e)),
                    }
                }
                Err(e) => return Err(refused(msg, e)),
            }
        }
        Ok(Prepared::New(Admission {
            route: index,
            record,
            encoded,
            key,
            msg,
        }))
    }

    /// Publishes a prepared message; gives its key back if JetStream refuses it.
    async fn commit(&self, p: Admission) -> Result<MessageId, Rejected> {
        let inner = &self.0;
        let route = &inner.routes[p.route];
        let id = p.record.id();
        let mut published = self.publish(route, id, p.encoded.clone()).await;
        if published.as_ref().is_err_and(|e| !full(e)) && self.is_connected() {
            // The answer was lost, or the publish was: once more under the same id is stored
            // once either way (JetStream's duplicate window).
            published = self.publish(route, id, p.encoded.clone()).await;
        }
        match published {
            Ok(()) => {
                route.accepted.fetch_add(1, Relaxed);
                Ok(id)
            }
            Err(e) if full(&e) => {
                // Refused for certain: the key is free again.
                if let Some(k) = &p.key {
                    let _ = inner.keys.purge(k).await;
                }
                Err(Rejected::QueueFull {
                    message: Box::new(p.msg),
                    capacity: route.capacity as usize,
                })
            }
            // Perhaps stored, perhaps not: the client is told to try again. With its idempotency
            // key it then gets this id (published again if it never arrived); without one the
            // message may run as well as its retry (at least once).
            Err(e) => Err(refused(p.msg, e)),
        }
    }

    /// Publishes an accepted message to its route's stream (its subject ends with the message's
    /// id, which is also the JetStream message id) and waits for JetStream's acknowledgement.
    async fn publish(
        &self,
        route: &ClusterRoute,
        id: MessageId,
        encoded: Bytes,
    ) -> Result<(), String> {
        let id = id.to_string();
        let publish = jetstream::message::PublishMessage::build()
            .payload(encoded)
            .message_id(id.clone());
        let ack = self
            .0
            .js
            .send_publish(format!("{}.{id}", route.subject), publish)
            .await
            .map_err(|e| e.to_string())?;
        ack.await.map(drop).map_err(|e| e.to_string())
    }

    /// A message whose idempotency key names `first`: `first` once that message is in the
    /// cluster for good, `None` if it never made it (its admission failed, and the key was
    /// left behind). Its admission may still be in progress on another node (or have failed
    /// there): within the stream's duplicate window, publishing it again under its id is stored
    /// once whatever happened, so that is done before answering.
    async fn duplicate(
        &self,
        first: MessageId,
        route: usize,
        msg: &Message,
    ) -> Result<Option<MessageId>, String> {
        if self
            .status(first)
            .await
            .map_err(|e| e.to_string())?
            .is_some()
        {
            return Ok(Some(first));
        }
        if unix_ms().saturating_sub(first.timestamp_ms()) > 60_000 {
            return Ok(None);
        }
        let record = accepted_record(first, self.0.routes[route].kind, msg);
        self.publish(&self.0.routes[route], first, record.encode().into())
            .await?;
        Ok(Some(first))
    }

    /// The message's current state; `Ok(None)` if unknown (never accepted, or expired): its
    /// entry once a node has taken it, else its record while it waits in its stream.
    pub async fn status(&self, id: MessageId) -> Result<Option<ClusterOutcome>, ClusterError> {
        if let Some((e, _)) = self.entry(id).await? {
            return Ok(Some(e.current()));
        }
        if let Some(acc) = self.waiting(id).await? {
            return Ok(Some(waiting_outcome(&acc)));
        }
        // Taken, run and acknowledged between the two reads: its entry is there now.
        Ok(self.entry(id).await?.map(|(e, _)| e.current()))
    }

    /// The accepted message `id` as it waits in its stream (no node has taken it yet).
    /// Also says where: its route and its stream sequence.
    async fn waiting(&self, id: MessageId) -> Result<Option<Accepted>, ClusterError> {
        Ok(self.waiting_at(id).await?.map(|(acc, _, _)| acc))
    }

    async fn waiting_at(
        &self,
        id: MessageId,
    ) -> Result<Option<(Accepted, usize, u64)>, ClusterError> {
        for (i, r) in self.0.routes.iter().enumerate() {
            match r
                .handle
                .direct_get_last_for_subject(format!("{}.{id}", r.subject))
                .await
            {
                Ok(m) => {
                    if let Some(Record::Accepted(acc)) =
                        crate::storage::decode_within::<Record>(&m.payload, MAX_READ_DEPTH)
                    {
                        return Ok(Some((acc, i, m.sequence)));
                    }
                }
                Err(e) if e.kind() == stream::DirectGetErrorKind::NotFound => {}
                Err(e) => return Err(unreachable(e)),
            }
        }
        Ok(None)
    }

    /// Waits up to `max` for the message to finish and returns its state at that point;
    /// `Ok(None)` if unknown. Listens to the updates of this one message's entry (a plain NATS
    /// subscription to its bucket subject, dropped on return), so a node hears only about the
    /// messages someone waits for.
    pub async fn wait(
        &self,
        id: MessageId,
        max: Duration,
    ) -> Result<Option<ClusterOutcome>, ClusterError> {
        if max.is_zero() {
            return self.status(id).await;
        }
        // Subscribed before the state is read: an update after the read is heard.
        let Some(mut updates) = self.updates(id).await? else {
            return self.status(id).await; // as many waits as a node listens for: no wait
        };
        let now = match self.status(id).await? {
            Some(o) if !o.outcome.status.is_terminal() => o,
            other => return Ok(other),
        };
        let end = tokio::time::Instant::now() + max;
        match updates.until_terminal(end).await {
            Some(o) => Ok(Some(o)),
            None => Ok(self.status(id).await?.or(Some(now))),
        }
    }

    /// The updates of message `id`'s entry, or `None` when the node already listens for
    /// [`MAX_WAITERS`] waits.
    async fn updates(&self, id: MessageId) -> Result<Option<Updates>, ClusterError> {
        let Ok(permit) = self.0.waiters.clone().try_acquire_owned() else {
            return Ok(None);
        };
        let subject = format!("$KV.{}_messages.{id}", self.0.settings.name);
        let sub = self
            .0
            .client
            .subscribe(subject)
            .await
            .map_err(unreachable)?;
        Ok(Some(Updates {
            sub,
            _permit: permit,
        }))
    }

    /// [`Cluster::accept`], then [`Cluster::wait`] up to `max` (`?wait=true`): listening for
    /// the outcome begins before the message is published, so no read of its state is needed.
    pub async fn send_timeout(
        &self,
        msg: Message,
        max: Duration,
    ) -> Result<ClusterOutcome, Rejected> {
        let p = match self.prepare(msg).await? {
            Prepared::Known(id, route) => return Ok(self.read_or_queued(id, route, max).await),
            Prepared::New(p) => p,
        };
        let (id, waiting) = match &p.record {
            Record::Accepted(a) => (a.id, waiting_outcome(a)),
            _ => unreachable!("prepare makes Accepted records"),
        };
        // Without a subscription (NATS just went away, or the node listens for as many waits
        // as it does) the answer is read afterwards.
        let mut updates = self.updates(id).await.ok().flatten();
        self.commit(p).await?;
        let end = tokio::time::Instant::now() + max;
        if let Some(updates) = &mut updates {
            if let Some(o) = updates.until_terminal(end).await {
                return Ok(o);
            }
        }
        Ok(self.status(id).await.ok().flatten().unwrap_or(waiting))
    }

    /// [`Cluster::wait`] for a message known to be accepted: as it was accepted if its state
    /// cannot be read now.
    async fn read_or_queued(&self, id: MessageId, route: usize, max: Duration) -> ClusterOutcome {
        match self.wait(id, max).await {
            Ok(Some(o)) => o,
            _ => ClusterOutcome {
                outcome: Outcome {
                    id,
                    kind: self.0.routes[route].kind,
                    status: Status::Queued,
                    result: None,
                    error: None,
                    attempts: 0,
                    source: crate::Source::Http,
                    accepted_at_ms: id.timestamp_ms(),
                    timings: Default::default(),
                    replay_of: None,
                },
                node: None,
            },
        }
    }

    /// Cancels a queued or delayed message, whichever node accepted it.
    pub async fn cancel(
        &self,
        id: MessageId,
    ) -> Result<Result<ClusterOutcome, CancelError>, ClusterError> {
        loop {
            let (entry, revision) = match self.entry(id).await? {
                Some(x) => x,
                None => {
                    // Still in its stream: its entry is made here, cancelled. A node taking it
                    // at the same moment makes it too; only one of the two makes it.
                    let Some((acc, route, seq)) = self.waiting_at(id).await? else {
                        if self.entry(id).await?.is_some() {
                            continue; // taken meanwhile
                        }
                        return Ok(Err(CancelError::Unknown(id)));
                    };
                    let mut done = Entry::of(&acc);
                    cancelled(&mut done);
                    match self.0.messages.create(id.to_string(), done.encode()).await {
                        Ok(_) => {
                            // Its place in the route is free at once, not at its due time (if
                            // a node holds the delivery, it finds the entry and acknowledges).
                            let _ = self.0.routes[route].handle.delete_message(seq).await;
                            return Ok(Ok(self.0.counted_cancel(done)));
                        }
                        Err(e) if e.kind() == kv::CreateErrorKind::AlreadyExists => continue,
                        Err(e) => return Err(unreachable(e)),
                    }
                }
            };
            let status = entry.outcome.status;
            if !matches!(status, Status::Queued | Status::Delayed) {
                return Ok(Err(CancelError::TooLate { id, status }));
            }
            let mut done = entry;
            cancelled(&mut done);
            match self
                .0
                .messages
                .update(id.to_string(), done.encode(), revision)
                .await
            {
                Ok(_) => return Ok(Ok(self.0.counted_cancel(done))),
                Err(e) if e.kind() == kv::UpdateErrorKind::WrongLastRevision => continue,
                Err(e) => return Err(unreachable(e)),
            }
        }
    }

    /// Up to `limit` dead letters of the whole cluster, oldest first, after the id `after`: fewer
    /// once 2 MiB of letters are read (read eight at a time, so at most 2 MiB and eight more
    /// letters; at least one), and `more` says whether any may follow. A node runs four
    /// listings at once; the others wait their turn.
    pub async fn dead_letters(
        &self,
        after: Option<MessageId>,
        limit: usize,
    ) -> Result<ListedLetters, ClusterError> {
        let _turn = self.0.listings.acquire().await.expect("never closed");
        // The keys are the subjects of the bucket's stream, asked in a request: the bucket's
        // `keys()` would leave a JetStream consumer behind on the server for 30 s per listing,
        // and a client listing often enough made the server refuse to make more (seen: every
        // listing after the thousandth within half a minute failed).
        let dead = &self.0.dead;
        let subjects: Vec<(String, usize)> = dead
            .stream
            .info_with_subjects(format!("{}>", dead.prefix))
            .await
            .map_err(unreachable)?
            .try_collect()
            .await
            .map_err(unreachable)?;
        let after = after.map(|a| a.to_string());
        let mut keys: Vec<String> = subjects
            .into_iter()
            .filter_map(|(s, _)| s.strip_prefix(dead.prefix.as_str()).map(str::to_owned))
            .filter(|k| after.as_ref().is_none_or(|a| k > a))
            .collect();
        keys.sort();
        // Read a few keys at a time, until `limit` letters or about LISTING_BYTES of them are
        // read, or the keys run out: a key whose letter is gone (replayed meanwhile) or
        // unreadable does not end the list early.
        let (mut letters, mut rest, mut bytes) = (Vec::new(), &keys[..], 0);
        while letters.len() < limit && bytes < LISTING_BYTES && !rest.is_empty() {
            let n = (limit - letters.len()).min(LISTING_CHUNK).min(rest.len());
            let (now, later) = rest.split_at(n);
            rest = later;
            let reads = now.iter().map(|k| self.0.dead.get(k.clone()));
            for got in futures_util::future::join_all(reads).await {
                let Some(v) = got.map_err(unreachable)? else {
                    continue;
                };
                if let Some(dl) = crate::storage::decode_within::<DeadLetter>(&v, MAX_READ_DEPTH) {
                    bytes += v.len();
                    letters.push(dl);
                }
            }
        }
        Ok(ListedLetters {
            letters,
            more: !rest.is_empty(),
        })
    }

    /// One dead letter, whole.
    pub async fn dead_letter(&self, id: MessageId) -> Result<Option<DeadLetter>, ClusterError> {
        let got = self.0.dead.get(id.to_string()).await.map_err(unreachable)?;
        Ok(got.and_then(|v| crate::storage::decode_within(&v, MAX_READ_DEPTH)))
    }

    /// Replays a dead letter as a new message and removes it from the dead letters: admitted
    /// first (under a key of the letter, so two nodes replaying it at once make one message),
    /// then the message's entry is marked replayed (so a late delivery of the message does not
    /// file the letter again), then the letter is removed, leaving nothing in the bucket that
    /// counts toward `max_dead_letters`.
    pub async fn replay(
        &self,
        id: MessageId,
    ) -> Result<Result<MessageId, ReplayError>, ClusterError> {
        let key = id.to_string();
        let Some(entry) = self.0.dead.entry(key.clone()).await.map_err(unreachable)? else {
            return Ok(Err(ReplayError::Unknown(id)));
        };
        let Some(dl) = crate::storage::decode_within::<DeadLetter>(&entry.value, MAX_READ_DEPTH)
        else {
            return Ok(Err(ReplayError::Unknown(id)));
        };
        // Admitted first, under an idempotency key of this letter as it is now: two replays at
        // once (on two nodes) make one message, and a crash before the letter is removed leaves
        // the letter as well as its replay (at least once, never lost).
        let mut msg = Message::new(dl.kind.as_str(), dl.payload.clone())
            .source(crate::Source::Replay)
            .key(format!("replay-{}-{}", dl.id, entry.revision));
        msg.replay_of = Some(dl.id);
        let new = match self.accept(msg).await {
            Ok(new) => new,
            Err(r) => return Ok(Err(ReplayError::Rejected(r))),
        };
        self.mark_replayed(dl.id, new).await?;
        match self
            .0
            .dead
            .delete_expect_revision(&key, Some(entry.revision))
            .await
        {
            Ok(()) => {
                tracing::info!(id = %new, replay_of = %dl.id, kind = %dl.kind, "dead letter replayed");
                // The delete leaves a marker in the bucket's stream, which would count toward
                // `max_dead_letters` (and push the oldest letter out of a full bucket): removed
                // too. If that fails, it stays, and is logged.
                let marker = format!("{}{key}", self.0.dead.prefix);
                if let Err(e) = self.0.dead.stream.purge().filter(marker).await {
                    tracing::warn!(id = %dl.id, error = %e, "the replayed dead letter's delete marker stays, and counts toward max_dead_letters");
                }
                Ok(Ok(new))
            }
            // Replayed by another node at the same moment, as this same message.
            Err(e) if e.kind() == kv::DeleteErrorKind::WrongLastRevision => Ok(Ok(new)),
            Err(e) => Err(unreachable(e)),
        }
    }

    /// Marks the entry of the dead message `id` as replayed as `new` (compare-and-set, tried
    /// again while another write moves it on). An entry gone (past the bucket's keeping), or
    /// not dead, has nothing to mark: a late delivery of the message would run it again anyway.
    /// An entry this node cannot read is an error (the letter then stays).
    async fn mark_replayed(&self, id: MessageId, new: MessageId) -> Result<(), ClusterError> {
        loop {
            let Some((mut entry, revision)) = self.entry(id).await? else {
                return Ok(());
            };
            // Only a dead entry: one that is running again (its dead entry was pushed out, and
            // a late delivery runs it anew) is its node's to write (a mark would make that
            // node's write fail, and keep a letter of a second death from being filed).
            if entry.outcome.status != Status::Dead || entry.replayed_as.is_some() {
                return Ok(());
            }
            entry.replayed_as = Some(new);
            match self
                .0
                .messages
                .update(id.to_string(), entry.encode(), revision)
                .await
            {
                Ok(_) => return Ok(()),
                Err(e) if e.kind() == kv::UpdateErrorKind::WrongLastRevision => continue,
                Err(e) => return Err(unreachable(e)),
            }
        }
    }

    /// The routing table: this node's figures, with retries and backoff as the cluster applies
    /// them.
    pub fn routes(&self) -> Vec<RouteInfo> {
        let mut infos = self.0.local.routes();
        for info in &mut infos {
            if let Some(r) = self.0.route(info.kind) {
                info.retries = r.retries;
                info.backoff_ms = r.backoff.as_millis() as u64;
            }
        }
        infos
    }

    /// The cluster's figures per route (from JetStream) and this node's; read from NATS at
    /// most once a second (callers within the second share the reading).
    pub async fn stats(&self) -> ClusterStats {
        let mut cached = self.0.stats.lock().await;
        if let Some((at, stats)) = &*cached {
            if at.elapsed() < Duration::from_secs(1) {
                return stats.clone();
            }
        }
        let stats = self.read_stats().await;
        *cached = Some((Instant::now(), stats.clone()));
        stats
    }

    async fn read_stats(&self) -> ClusterStats {
        let inner = &self.0;
        let connected = self.is_connected();
        // Every route's consumer asked at once, each within 2 s; one that does not answer
        // leaves its route's cluster figures unknown, not the route out.
        let asks = inner.routes.iter().map(|r| async move {
            if !connected {
                return None;
            }
            let ask = async {
                let mut c: consumer::PullConsumer =
                    r.handle.get_consumer(&r.consumer).await.ok()?;
                c.info().await.ok().cloned()
            };
            actix_rt::time::timeout(Duration::from_secs(2), ask)
                .await
                .ok()
                .flatten()
        });
        let infos = futures_util::future::join_all(asks).await;
        let routes = inner
            .routes
            .iter()
            .zip(infos)
            .map(|(r, info)| ClusterRouteStats {
                kind: r.kind,
                pending: info.as_ref().map(|i| i.num_pending),
                ack_pending: info.as_ref().map(|i| i.num_ack_pending as u64),
                redelivered: info.as_ref().map(|i| i.num_redelivered as u64),
                accepted_here: r.accepted.load(Relaxed),
                finished_here: Status::ALL
                    .iter()
                    .enumerate()
                    .filter(|(_, s)| s.is_terminal())
                    .map(|(i, s)| (s.as_str().to_owned(), r.finished[i].load(Relaxed)))
                    .collect(),
            })
            .collect();
        // Asked of the server each time (the bucket's `status()` answers with the figures of
        // when this node opened it).
        let dead_letters = match connected {
            true => actix_rt::time::timeout(Duration::from_secs(2), inner.dead.stream.get_info())
                .await
                .ok()
                .and_then(Result::ok)
                .map(|info| info.state.messages),
            false => None,
        };
        ClusterStats {
            node: inner.settings.node.clone(),
            name: inner.settings.name.clone(),
            connected: self.is_connected(),
            running_here: inner.running.load(Relaxed),
            dead_letters,
            routes,
        }
    }

    /// Whether the node has begun to shut down.
    pub fn is_draining(&self) -> bool {
        self.0.draining.load(Relaxed)
    }

    /// Stops taking work, lets the attempts running here finish within `deadline`, then stops
    /// this node's dispatcher. Nothing is cancelled: what did not finish here stays in the
    /// stream (unacknowledged) and runs on another node, or on this one after a restart.
    pub async fn shutdown(&self, deadline: Duration) -> ShutdownReport {
        let started = Instant::now();
        self.0.draining.store(true, Relaxed);
        for t in self.0.tasks.lock().drain(..) {
            t.abort();
        }
        while self.0.running.load(Relaxed) > 0 && started.elapsed() < deadline {
            actix_rt::time::sleep(Duration::from_millis(20)).await;
        }
        let kept: Vec<MessageId> = self.0.running_ids.lock().iter().copied().collect();
        let local = self.0.local.shutdown(Duration::ZERO).await;
        // The attempts cut short hand their messages back (entry queued, nak): let them.
        let handing_back = Instant::now();
        while self.0.running.load(Relaxed) > 0 && handing_back.elapsed() < Duration::from_secs(3) {
            actix_rt::time::sleep(Duration::from_millis(20)).await;
        }
        // Acknowledgements sent last go out now; not forever if NATS is away.
        let _ = actix_rt::time::timeout(Duration::from_secs(2), self.0.client.flush()).await;
        ShutdownReport {
            drained: local.drained,
            unfinished: Vec::new(),
            kept,
            elapsed: started.elapsed(),
        }
    }

    async fn entry(&self, id: MessageId) -> Result<Option<(Entry, u64)>, ClusterError> {
        let got = self
            .0
            .messages
            .entry(id.to_string())
            .await
            .map_err(unreachable)?;
        match got.filter(|e| e.operation == kv::Operation::Put) {
            None => Ok(None),
            Some(e) => match Entry::decode(&e.value) {
                Some(v) => Ok(Some((v, e.revision))),
                // Not "absent": a cancel would try to create it and loop.
                None => Err(ClusterError::Unreachable(format!(
                    "the entry of message {id} cannot be read by this node (nested too deep, \
                     or written by a newer version)"
                ))),
            },
        }
    }
}

/// An accepted message as it waits in its stream: `delayed` before its due time, else `queued`.
fn waiting_outcome(acc: &Accepted) -> ClusterOutcome {
    let now = unix_ms();
    let accepted = acc.id.timestamp_ms();
    let waited = now.saturating_sub(accepted) as f64;
    ClusterOutcome {
        outcome: Outcome {
            id: acc.id,
            kind: acc.kind,
            status: match acc.due_ms {
                Some(due) if due > now => Status::Delayed,
                _ => Status::Queued,
            },
            result: None,
            error: None,
            attempts: acc.attempts,
            source: acc.source,
            accepted_at_ms: accepted,
            timings: crate::envelope::Timings {
                queued_ms: waited,
                run_ms: 0.0,
                total_ms: waited,
            },
            replay_of: acc.replay_of,
        },
        node: None,
    }
}

/// The record published for `msg`, accepted as message `id` (its delay counts from the id's
/// time, its acceptance).
fn accepted_record(id: MessageId, kind: Kind, msg: &Message) -> Record {
    Record::Accepted(Accepted {
        id,
        kind,
        payload: msg.payload.clone(),
        source: msg.source,
        key: msg.key.clone(),
        due_ms: msg.delay.map(|d| id.timestamp_ms() + d.as_millis() as u64),
        timeout_ms: msg.timeout.map(|t| t.as_millis() as u64),
        replay_of: msg.replay_of,
        attempts: 0,
    })
}

/// Whether a publish error is JetStream refusing a message to a full route.
fn full(error: &str) -> bool {
    error.contains("maximum messages exceeded")
}

/// Marks an entry cancelled before it ran.
fn cancelled(e: &mut Entry) {
    e.outcome.status = Status::Cancelled;
    e.outcome.error = Some(ErrorInfo::new(
        ErrorClass::Cancelled,
        "cancelled before it ran",
    ));
    let waited = unix_ms().saturating_sub(e.outcome.accepted_at_ms) as f64;
    e.outcome.timings.queued_ms = waited;
    e.outcome.timings.total_ms = waited;
}

/// A page of the cluster's dead letters ([`Cluster::dead_letters`]).
#[derive(Debug)]
#[non_exhaustive]
pub struct ListedLetters {
    /// The letters, oldest first.
    pub letters: Vec<DeadLetter>,
    /// Whether letters after the last one may remain (the listing stopped at its limit or its
    /// bytes).
    pub more: bool,
}

/// A wait's subscription to one message's entry, counted among the node's [`MAX_WAITERS`]
/// while it lives.
struct Updates {
    sub: async_nats::Subscriber,
    _permit: tokio::sync::OwnedSemaphorePermit,
}

impl Updates {
    /// The message's outcome once an update says it is terminal, or `None` at `end`.
    async fn until_terminal(&mut self, end: tokio::time::Instant) -> Option<ClusterOutcome> {
        while let Ok(Some(m)) = tokio::time::timeout_at(end, self.sub.next()).await {
            if let Some(e) = Entry::decode(&m.payload) {
                if e.outcome.status.is_terminal() {
                    return Some(e.current());
                }
            }
        }
        None
    }
}

/// A message checked and ready to publish, or the id an idempotency key already names.
enum Prepared {
    /// The message an idempotency key names, and its route.
    Known(MessageId, usize),
    New(Admission),
}

/// A message ready to publish: its route, its record (and that encoded, as admission checked
/// and publishes it), its idempotency key's bucket key, and the message itself (handed back if
/// it is refused).
struct Admission {
    route: usize,
    record: Record,
    encoded: Bytes,
    key: Option<String>,
    msg: Message,
}

fn refused(msg: Message, why: impl std::fmt::Display) -> Rejected {
    Rejected::Storage {
        message: Box::new(msg),
        error: StorageError::Unavailable(why.to_string()),
    }
}

fn status_index(s: Status) -> usize {
    Status::ALL.iter().position(|x| *x == s).unwrap_or(0)
}

impl Inner {
    fn route(&self, kind: Kind) -> Option<&ClusterRoute> {
        self.by_kind.get(kind.as_str()).map(|&i| &self.routes[i])
    }

    /// Counts a cancel this node wrote; its outcome.
    fn counted_cancel(&self, done: Entry) -> ClusterOutcome {
        if let Some(r) = self.route(done.outcome.kind) {
            r.finished[status_index(Status::Cancelled)].fetch_add(1, Relaxed);
        }
        done.current()
    }
}
