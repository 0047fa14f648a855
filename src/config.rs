//! `config.toml`: the service's configuration as data.
//!
//! Serde structs with `deny_unknown_fields` and defaults, and one loader that layers built-in
//! defaults < the file (`--config PATH`, else `./config.toml` when it exists) < environment
//! variables `MAILROOM_<SECTION>__<KEY>` < command-line flags. Unknown keys and bad values stop
//! start-up with an error naming the file (or variable), the key and what was expected. The server
//! turns a checked [`Config`] into the library's plain settings ([`Config::settings`]); the
//! library itself reads no files.

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use figment::providers::{Env, Format, Serialized, Toml};
use figment::Figment;
use mailroom_actors::processor::fetch::MAX_FETCH_TIMEOUT_MS;
use mailroom_actors::storage::{Fsync, Journal, JournalSettings, Memory, Storage, StorageError};
use mailroom_actors::{
    CpuSettings, Every, FetchSettings, IoSettings, Kind, RestartPolicy, RouteSettings, Schedule,
    Settings, TcpSettings,
};
use serde::{Deserialize, Serialize};
use serde_json::Value;

/// The processors the server knows (the library's built-ins).
pub const PROCESSORS: [&str; 6] = ["echo", "sleep", "fetch", "primes", "hash", "chaos"];

/// Kinds routed when the configuration has no `[routes]` table: every built-in except `chaos`.
pub const DEFAULT_ROUTES: [&str; 5] = ["echo", "sleep", "fetch", "primes", "hash"];

/// The whole configuration.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, Default)]
#[serde(deny_unknown_fields, default)]
pub struct Config {
    /// The HTTP server.
    pub server: ServerConfig,
    /// Dispatch-wide bounds.
    pub dispatch: DispatchConfig,
    /// The I/O and CPU pools.
    pub pools: PoolsConfig,
    /// The `fetch` processor.
    pub fetch: FetchConfig,
    /// One table per kind; empty means every built-in except `chaos` under its own name.
    pub routes: BTreeMap<String, RouteConfig>,
    /// Event sources besides HTTP.
    pub sources: SourcesConfig,
    /// Timer schedules.
    pub schedule: Vec<ScheduleConfig>,
    /// Where accepted work is kept so it survives a crash and a restart.
    pub storage: StorageConfig,
    /// Several nodes sharing the work through NATS JetStream; absent = one node.
    pub cluster: Option<ClusterConfig>,
}

/// `[cluster]`: this node joins a cluster of nodes that share the work through NATS JetStream
/// (`storage` is then unused: accepted work is kept by JetStream).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct ClusterConfig {
    /// The NATS server.
    pub nats_url: String,
    /// Prefix of every stream, consumer and bucket: nodes with the same name share the work.
    pub name: String,
    /// This node's name (default: host name and process id).
    pub node: Option<String>,
    /// How long JetStream waits for a sign of life from the node running a message before it
    /// delivers the message to another node.
    pub ack_wait_ms: u64,
}

impl Default for ClusterConfig {
    fn default() -> Self {
        ClusterConfig {
            nats_url: "nats://127.0.0.1:4222".into(),
            name: "mailroom".into(),
            node: None,
            ack_wait_ms: 30_000,
        }
    }
}

impl ClusterConfig {
    /// The library's settings for this node.
    pub fn settings(&self) -> mailroom_actors::ClusterSettings {
        mailroom_actors::ClusterSettings {
            nats_url: self.nats_url.clone(),
            name: self.name.clone(),
            node: self.node.clone().unwrap_or_else(|| {
                let host = std::fs::read_to_string("/proc/sys/kernel/hostname")
                    .map(|h| h.trim().to_owned())
                    .unwrap_or_else(|_| "node".into());
                format!("{host}-{}", std::process::id())
            }),
            ack_wait: Duration::from_millis(self.ack_wait_ms),
        }
    }
}

/// `storage.kind`
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum StorageKind {
    /// The embedded journal in `storage.path` (the default).
    Journal,
    /// Nothing on disk: message state is gone with the process.
    Memory,
}

/// `storage.fsync`
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum FsyncMode {
    /// Acknowledge a message only once its record is on disk (concurrent ones share an fsync).
    Always,
    /// fsync every `fsync_interval_ms`; acknowledge once written.
    Interval,
    /// Leave it to the operating system; acknowledge once written.
    Never,
}

/// `[storage]`
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct StorageConfig {
    /// `journal` or `memory`.
    pub kind: StorageKind,
    /// The journal's folder (relative to the working directory), created if missing.
    pub path: PathBuf,
    /// When a record counts as written.
    pub fsync: FsyncMode,
    /// With `fsync = "interval"`: how often.
    pub fsync_interval_ms: u64,
    /// A journal segment file is closed (and may be compacted) once it holds this many bytes.
    pub segment_bytes: u64,
}

impl Default for StorageConfig {
    fn default() -> Self {
        StorageConfig {
            kind: StorageKind::Journal,
            path: PathBuf::from("data"),
            fsync: FsyncMode::Always,
            fsync_interval_ms: 100,
            segment_bytes: 64 * 1024 * 1024,
        }
    }
}

/// `[server]`
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct ServerConfig {
    /// Address of the HTTP listener.
    pub bind: String,
    /// HTTP worker threads; 0 = one per core.
    pub workers: usize,
    /// Largest request body.
    pub max_body_bytes: usize,
    /// Most messages in one `POST /v1/batch`.
    pub max_batch: usize,
    /// Deepest JSON nesting accepted in a body.
    pub max_json_depth: usize,
    /// Longest `?wait=true` / `wait_ms` wait.
    pub max_wait_ms: u64,
    /// How long shutdown waits for queued and running messages.
    pub shutdown_timeout_ms: u64,
    /// Bearer tokens; empty = no auth.
    pub tokens: Vec<String>,
    /// A request body must arrive whole within this (else 408).
    pub body_timeout_ms: u64,
    /// Bytes of request bodies being read at once, over all connections; past it a body gets
    /// 503 (with `Retry-After`) instead of more memory.
    pub max_buffered_body_bytes: usize,
    /// One client's share of `max_buffered_body_bytes` (a client is its token, or its address:
    /// an IPv4 address or an IPv6 /64); past it that client's body gets 429. 0 = a sixteenth
    /// of `max_buffered_body_bytes`, at least `max_body_bytes` ([`ServerConfig::client_body_share`]).
    pub max_buffered_body_bytes_per_client: usize,
    /// Most HTTP connections one client (its address: an IPv4 address, an IPv6 /64) holds at
    /// once; a request on one more gets 429 and the connection is closed. 0 = a quarter of
    /// `max_connections` ([`ServerConfig::client_connection_share`]).
    pub max_connections_per_client: usize,
    /// Most HTTP connections open at once (past it, new ones wait in the listen backlog).
    pub max_connections: usize,
    /// Listen backlog of the HTTP and TCP listeners.
    pub backlog: u32,
}

impl ServerConfig {
    /// One client's share of the bodies being read: `max_buffered_body_bytes_per_client`, or
    /// when that is 0 a sixteenth of `max_buffered_body_bytes`, at least `max_body_bytes` (so
    /// one client can always send one body) and at most the whole.
    pub fn client_body_share(&self) -> usize {
        match self.max_buffered_body_bytes_per_client {
            0 => (self.max_buffered_body_bytes / 16)
                .max(self.max_body_bytes)
                .min(self.max_buffered_body_bytes),
            n => n,
        }
    }
}

impl ServerConfig {
    /// Most HTTP connections one client holds: `max_connections_per_client`, or when that is 0
    /// a quarter of `max_connections` (at least 1).
    pub fn client_connection_share(&self) -> usize {
        match self.max_connections_per_client {
            0 => (self.max_connections / 4).max(1),
            n => n,
        }
    }
}

impl Default for ServerConfig {
    fn default() -> Self {
        ServerConfig {
            bind: "127.0.0.1:8080".into(),
            workers: 0,
            max_body_bytes: 1024 * 1024,
            max_batch: 1000,
            max_json_depth: 64,
            max_wait_ms: 60_000,
            shutdown_timeout_ms: 30_000,
            tokens: Vec::new(),
            body_timeout_ms: 10_000,
            max_buffered_body_bytes: 256 * 1024 * 1024,
            max_buffered_body_bytes_per_client: 0,
            max_connections: 10_000,
            max_connections_per_client: 0,
            backlog: 4096,
        }
    }
}

/// `[dispatch]`
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct DispatchConfig {
    /// Default bound per route: queued + delayed + running.
    pub capacity: usize,
    /// How long finished outcomes are kept.
    pub result_ttl_ms: u64,
    /// How many finished outcomes are kept at most.
    pub max_results: usize,
    /// About how many bytes of finished outcomes are kept at most (oldest evicted first).
    pub max_result_bytes: usize,
    /// How many dead letters are kept at most.
    pub max_dead_letters: usize,
    /// About how many bytes of dead letters are kept at most (oldest dropped first).
    pub max_dead_letter_bytes: usize,
    /// Longest `delay_ms` a message may ask for.
    pub max_delay_ms: u64,
    /// Processor restarts tolerated within `restart_window_ms` before the route is degraded.
    pub max_restarts: u32,
    /// The restart-intensity window (and how long a degraded route rejects).
    pub restart_window_ms: u64,
    /// Pause before a restarted processor takes work; doubles per restart within the window.
    pub restart_backoff_ms: u64,
    /// The longest such pause.
    pub restart_max_backoff_ms: u64,
}

impl Default for DispatchConfig {
    fn default() -> Self {
        DispatchConfig {
            capacity: 10_000,
            result_ttl_ms: 600_000,
            max_results: 100_000,
            max_result_bytes: 256 * 1024 * 1024,
            max_dead_letters: 10_000,
            max_dead_letter_bytes: 64 * 1024 * 1024,
            max_delay_ms: 86_400_000,
            max_restarts: 10,
            restart_window_ms: 10_000,
            restart_backoff_ms: 5,
            restart_max_backoff_ms: 1_000,
        }
    }
}

/// `[pools]`
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, Default)]
#[serde(deny_unknown_fields, default)]
pub struct PoolsConfig {
    /// `[pools.io]`
    pub io: IoPoolConfig,
    /// `[pools.cpu]`
    pub cpu: CpuPoolConfig,
}

/// `[pools.io]`
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct IoPoolConfig {
    /// I/O arbiter threads.
    pub arbiters: usize,
    /// In-flight cap per async route.
    pub concurrency: usize,
    /// Whether each HTTP worker thread runs the async routes too, so a message submitted over
    /// HTTP runs and is answered on the thread that accepted it (no thread hop).
    pub on_http_workers: bool,
    /// A thread running actors (HTTP worker or arbiter) silent this long is reported; 0 = off.
    pub stall_warn_ms: u64,
}

impl Default for IoPoolConfig {
    fn default() -> Self {
        IoPoolConfig {
            arbiters: 1,
            concurrency: 1024,
            on_http_workers: true,
            stall_warn_ms: 250,
        }
    }
}

/// `[pools.cpu]`
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, Default)]
#[serde(deny_unknown_fields, default)]
pub struct CpuPoolConfig {
    /// `SyncArbiter` threads; 0 = one per core.
    pub threads: usize,
}

/// `[fetch]`
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct FetchConfig {
    /// Hosts or IPs allowed although loopback/private/link-local.
    pub allow_hosts: Vec<String>,
    /// Default request timeout.
    pub timeout_ms: u64,
    /// Connection limit per client.
    pub max_connections: usize,
    /// Response bodies are cut at this size.
    pub max_body_bytes: usize,
}

impl Default for FetchConfig {
    fn default() -> Self {
        FetchConfig {
            allow_hosts: Vec::new(),
            timeout_ms: 10_000,
            max_connections: 1024,
            max_body_bytes: 1024 * 1024,
        }
    }
}

/// `[routes.KIND]`
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, Default)]
#[serde(deny_unknown_fields)]
pub struct RouteConfig {
    /// The processor; defaults to the kind's own name.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub processor: Option<String>,
    /// Bound on queued + delayed + running; defaults to `dispatch.capacity`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub capacity: Option<usize>,
    /// Run timeout of one attempt.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub timeout_ms: Option<u64>,
    /// Retries after a failed attempt.
    #[serde(default)]
    pub retries: u32,
    /// First retry delay (doubles, with jitter).
    #[serde(default = "default_backoff")]
    pub backoff_ms: u64,
    /// Cap on messages running at once.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub concurrency: Option<usize>,
    /// Most unfinished messages of one client (its token, or its address without tokens).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub max_per_client: Option<usize>,
}

fn default_backoff() -> u64 {
    100
}

/// `[sources]`
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, Default)]
#[serde(deny_unknown_fields, default)]
pub struct SourcesConfig {
    /// `[sources.tcp]`; absent = off.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub tcp: Option<TcpConfig>,
}

/// `[sources.tcp]`
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct TcpConfig {
    /// Address of the TCP listener.
    pub bind: String,
    /// Most connections open at once; past it a new one gets one error line and is closed.
    #[serde(default = "default_tcp_connections")]
    pub max_connections: usize,
    /// Most connections one client address (an IPv6 address by its /64) holds at once; past it
    /// a new one gets one error line (code 429) and is closed. 0 = a quarter of
    /// `max_connections` (at least 1).
    #[serde(default)]
    pub max_connections_per_client: usize,
    /// A connection with no answer pending that completes no line for this long is closed.
    #[serde(default = "default_tcp_idle")]
    pub idle_timeout_ms: u64,
    /// Most lines of one connection read and not yet answered; past it the connection is not
    /// read until answers are written (backpressure, not buffering).
    #[serde(default = "default_tcp_pending")]
    pub max_pending: usize,
}

fn default_tcp_connections() -> usize {
    256
}

fn default_tcp_idle() -> u64 {
    60_000
}

fn default_tcp_pending() -> usize {
    64
}

impl TcpConfig {
    /// A TCP source on `bind` with the default limits.
    pub fn on(bind: impl Into<String>) -> TcpConfig {
        TcpConfig {
            bind: bind.into(),
            max_connections: default_tcp_connections(),
            max_connections_per_client: 0,
            idle_timeout_ms: default_tcp_idle(),
            max_pending: default_tcp_pending(),
        }
    }
}

/// `[[schedule]]`
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ScheduleConfig {
    /// Kind to submit.
    pub kind: String,
    /// Payload of every submission.
    #[serde(default)]
    pub payload: Value,
    /// Run every this many milliseconds…
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub every_ms: Option<u64>,
    /// …or once after this many.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub after_ms: Option<u64>,
}

/// A configuration that could not be loaded, with where and why.
#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    /// The named file does not exist.
    #[error("config file {0} not found")]
    Missing(PathBuf),
    /// A key is unknown or a value has the wrong type (figment names the key and the source).
    #[error("{0}")]
    Parse(String),
    /// A value is out of range.
    #[error("{source_name}: {key}: {reason}")]
    Invalid {
        /// The file the configuration came from (or "defaults").
        source_name: String,
        /// The key, dotted.
        key: String,
        /// What was expected.
        reason: String,
    },
}

/// Values given on the command line (the top layer).
#[derive(Debug, Clone, Default)]
pub struct Overrides {
    /// `--bind ADDR`
    pub bind: Option<String>,
}

/// Where a loaded configuration came from.
#[derive(Debug, Clone)]
pub struct Loaded {
    /// The checked configuration.
    pub config: Config,
    /// The file that was read, if any.
    pub file: Option<PathBuf>,
}

impl Config {
    /// Loads and checks the configuration: defaults < `path` (or `./config.toml` if present)
    /// < `MAILROOM_<SECTION>__<KEY>` environment variables < `overrides`.
    pub fn load(path: Option<&Path>, overrides: &Overrides) -> Result<Loaded, ConfigError> {
        let file = match path {
            Some(p) if !p.exists() => return Err(ConfigError::Missing(p.to_owned())),
            Some(p) => Some(p.to_owned()),
            None => Some(PathBuf::from("config.toml")).filter(|p| p.exists()),
        };
        let mut fig = Figment::from(Serialized::defaults(Config::default()));
        if let Some(f) = &file {
            fig = fig.merge(Toml::file_exact(f));
        }
        // Only SECTION__KEY variables are configuration; MAILROOM_URL and MAILROOM_TOKEN belong
        // to the command-line client.
        fig = fig.merge(
            Env::prefixed("MAILROOM_")
                .filter(|k| k.as_str().contains("__"))
                .split("__"),
        );
        if let Some(bind) = &overrides.bind {
            fig = fig.merge(Serialized::default("server.bind", bind));
        }
        let config: Config = fig.extract().map_err(|e| {
            ConfigError::Parse(
                e.into_iter()
                    .map(|e| readable_key(&e.to_string()))
                    .collect::<Vec<_>>()
                    .join("; "),
            )
        })?;
        config.check().map_err(|(key, reason)| {
            // Name where the bad value came from: the variable, the flag, the file or the defaults.
            let from = fig.find_metadata(&key).map(|m| m.name.to_string());
            let source_name = match from.as_deref() {
                Some(n) if n.contains("environment") => env_var(&key),
                Some(n)
                    if key == "server.bind" && overrides.bind.is_some() && !n.contains("TOML") =>
                {
                    "--bind".to_owned()
                }
                _ => file
                    .as_ref()
                    .map_or_else(|| "defaults".to_owned(), |f| f.display().to_string()),
            };
            ConfigError::Invalid {
                source_name,
                key,
                reason,
            }
        })?;
        Ok(Loaded { config, file })
    }

    /// The routes in effect: the `[routes]` tables, or the default built-in routes.
    pub fn effective_routes(&self) -> BTreeMap<String, RouteConfig> {
        if self.routes.is_empty() {
            DEFAULT_ROUTES
                .iter()
                .map(|k| (k.to_string(), RouteConfig::default_for()))
                .collect()
        } else {
            self.routes.clone()
        }
    }

    /// Checks ranges and cross-references; `Err((key, what was expected))`.
    pub fn check(&self) -> Result<(), (String, String)> {
        let err = |k: &str, r: String| Err((k.to_owned(), r));
        let st = &self.storage;
        if st.path.as_os_str().is_empty() {
            return err(
                "storage.path",
                "expected a folder, got an empty path".into(),
            );
        }
        if !(1..=60_000).contains(&st.fsync_interval_ms) {
            return err(
                "storage.fsync_interval_ms",
                format!("expected 1 to 60000, got {}", st.fsync_interval_ms),
            );
        }
        if !(65_536..=1 << 30).contains(&st.segment_bytes) {
            return err(
                "storage.segment_bytes",
                format!(
                    "expected 65536 (64 KiB) to 1073741824 (1 GiB), got {}",
                    st.segment_bytes
                ),
            );
        }
        let s = &self.server;
        if s.bind.parse::<SocketAddr>().is_err() {
            return err(
                "server.bind",
                format!("expected an address like 127.0.0.1:8080, got {:?}", s.bind),
            );
        }
        if s.workers > 1024 {
            return err("server.workers", "expected 0 (one per core) to 1024".into());
        }
        if s.max_body_bytes == 0 || s.max_body_bytes > 256 * 1024 * 1024 {
            return err("server.max_body_bytes", "expected 1 to 268435456".into());
        }
        if s.max_batch == 0 {
            return err("server.max_batch", "expected at least 1".into());
        }
        if !(1..=128).contains(&s.max_json_depth) {
            return err("server.max_json_depth", "expected 1 to 128".into());
        }
        if s.max_wait_ms > 3_600_000 {
            return err(
                "server.max_wait_ms",
                "expected at most 3600000 (one hour)".into(),
            );
        }
        if s.tokens.iter().any(|t| t.trim().is_empty()) {
            return err("server.tokens", "tokens must not be empty strings".into());
        }
        // Sent as `Bearer <token>` in an HTTP header, which must be visible ASCII and is split
        // at its first space: other tokens would not work over HTTP, or not as written.
        if s.tokens
            .iter()
            .any(|t| !t.bytes().all(|b| b.is_ascii_graphic()))
        {
            return err(
                "server.tokens",
                "a token may hold only visible ASCII characters (no spaces)".into(),
            );
        }
        if !(1..=3_600_000).contains(&s.body_timeout_ms) {
            return err("server.body_timeout_ms", "expected 1 to 3600000".into());
        }
        if s.max_buffered_body_bytes < s.max_body_bytes {
            return err(
                "server.max_buffered_body_bytes",
                format!(
                    "expected at least server.max_body_bytes ({})",
                    s.max_body_bytes
                ),
            );
        }
        let share = s.max_buffered_body_bytes_per_client;
        if share != 0 && !(s.max_body_bytes..=s.max_buffered_body_bytes).contains(&share) {
            return err(
                "server.max_buffered_body_bytes_per_client",
                format!(
                    "expected 0 (a sixteenth of server.max_buffered_body_bytes) or \
                     server.max_body_bytes ({}) to server.max_buffered_body_bytes ({})",
                    s.max_body_bytes, s.max_buffered_body_bytes
                ),
            );
        }
        if !(1..=1_000_000).contains(&s.max_connections) {
            return err("server.max_connections", "expected 1 to 1000000".into());
        }
        if s.max_connections_per_client > s.max_connections {
            return err(
                "server.max_connections_per_client",
                format!(
                    "expected 0 (a quarter of server.max_connections) to server.max_connections \
                     ({})",
                    s.max_connections
                ),
            );
        }
        if !(1..=65_535).contains(&s.backlog) {
            return err("server.backlog", "expected 1 to 65535".into());
        }
        let d = &self.dispatch;
        if d.capacity == 0 {
            return err("dispatch.capacity", "expected at least 1".into());
        }
        if d.max_results == 0 {
            return err("dispatch.max_results", "expected at least 1".into());
        }
        if d.max_result_bytes < 1024 * 1024 {
            return err(
                "dispatch.max_result_bytes",
                "expected at least 1048576 (1 MiB)".into(),
            );
        }
        if d.max_dead_letters == 0 {
            return err("dispatch.max_dead_letters", "expected at least 1".into());
        }
        if d.max_dead_letter_bytes < 1024 * 1024 {
            return err(
                "dispatch.max_dead_letter_bytes",
                "expected at least 1048576 (1 MiB)".into(),
            );
        }
        if d.max_delay_ms > 365 * 86_400_000 {
            return err(
                "dispatch.max_delay_ms",
                "expected at most 31536000000 (a year)".into(),
            );
        }
        if d.max_restarts == 0 {
            return err("dispatch.max_restarts", "expected at least 1".into());
        }
        if d.max_restarts > 10_000 {
            return err("dispatch.max_restarts", "expected 1 to 10000".into());
        }
        if d.restart_window_ms == 0 || d.restart_window_ms > 86_400_000 {
            return err(
                "dispatch.restart_window_ms",
                "expected 1 to 86400000".into(),
            );
        }
        if d.restart_backoff_ms > 3_600_000 {
            return err(
                "dispatch.restart_backoff_ms",
                "expected at most 3600000".into(),
            );
        }
        if d.restart_max_backoff_ms > 3_600_000 {
            return err(
                "dispatch.restart_max_backoff_ms",
                "expected at most 3600000".into(),
            );
        }
        if let Err(reason) = self.settings().restart.check() {
            return err("dispatch.max_restarts", reason);
        }
        if self.pools.io.stall_warn_ms != 0 && self.pools.io.stall_warn_ms < 100 {
            // Threads stamp their heartbeat every 50 ms: less than two beats would be noise.
            return err(
                "pools.io.stall_warn_ms",
                "expected 0 (off) or at least 100".into(),
            );
        }
        if !(1..=64).contains(&self.pools.io.arbiters) {
            return err("pools.io.arbiters", "expected 1 to 64".into());
        }
        if self.pools.io.concurrency == 0 {
            return err("pools.io.concurrency", "expected at least 1".into());
        }
        if self.pools.cpu.threads > 1024 {
            return err(
                "pools.cpu.threads",
                "expected 0 (one per core) to 1024".into(),
            );
        }
        if !(1..=MAX_FETCH_TIMEOUT_MS).contains(&self.fetch.timeout_ms) {
            return err(
                "fetch.timeout_ms",
                format!("expected 1 to {MAX_FETCH_TIMEOUT_MS}"),
            );
        }
        if self.fetch.max_connections == 0 || self.fetch.max_body_bytes == 0 {
            return err(
                "fetch",
                "max_connections and max_body_bytes must be at least 1".into(),
            );
        }
        // Each fetch running holds up to this much: bounded like a request body.
        if self.fetch.max_body_bytes > 256 * 1024 * 1024 {
            return err("fetch.max_body_bytes", "expected 1 to 268435456".into());
        }
        let routes = self.effective_routes();
        for (kind, r) in &routes {
            let at = |k: &str| format!("routes.{kind}.{k}");
            if !Kind::is_valid(kind) {
                return Err((
                    format!("routes.{kind}"),
                    "a kind is 1 to 64 characters from a-z, 0-9, '_', '.', '-'".into(),
                ));
            }
            let p = r.processor.as_deref().unwrap_or(kind);
            if !PROCESSORS.contains(&p) {
                return Err((
                    at("processor"),
                    format!("one of {}, got {p:?}", PROCESSORS.join(", ")),
                ));
            }
            if r.capacity == Some(0) || r.concurrency == Some(0) {
                return Err((
                    at("capacity"),
                    "capacity and concurrency must be at least 1".into(),
                ));
            }
            if r.max_per_client == Some(0) {
                return Err((at("max_per_client"), "expected at least 1".into()));
            }
            if r.timeout_ms.is_some_and(|t| t == 0 || t > 3_600_000) {
                return Err((at("timeout_ms"), "expected 1 to 3600000".into()));
            }
            if r.retries > 100 {
                return Err((at("retries"), "expected 0 to 100".into()));
            }
            if r.backoff_ms > 3_600_000 {
                return Err((at("backoff_ms"), "expected 0 to 3600000".into()));
            }
        }
        if let Some(tcp) = &self.sources.tcp {
            if tcp.bind.parse::<SocketAddr>().is_err() {
                return err(
                    "sources.tcp.bind",
                    format!(
                        "expected an address like 127.0.0.1:7070, got {:?}",
                        tcp.bind
                    ),
                );
            }
            if !(1..=1_000_000).contains(&tcp.max_connections) {
                return err(
                    "sources.tcp.max_connections",
                    "expected 1 to 1000000".into(),
                );
            }
            if tcp.max_connections_per_client > tcp.max_connections {
                return err(
                    "sources.tcp.max_connections_per_client",
                    format!(
                        "expected 0 (a quarter of sources.tcp.max_connections) to \
                         sources.tcp.max_connections ({})",
                        tcp.max_connections
                    ),
                );
            }
            if !(1..=86_400_000).contains(&tcp.idle_timeout_ms) {
                return err(
                    "sources.tcp.idle_timeout_ms",
                    "expected 1 to 86400000".into(),
                );
            }
            if !(1..=65_536).contains(&tcp.max_pending) {
                return err("sources.tcp.max_pending", "expected 1 to 65536".into());
            }
        }
        if let Some(c) = &self.cluster {
            let name_ok = !c.name.is_empty()
                && c.name.len() <= 32
                && c.name
                    .bytes()
                    .all(|b| b.is_ascii_alphanumeric() || b == b'_' || b == b'-');
            if !name_ok {
                return err(
                    "cluster.name",
                    format!(
                        "1 to 32 characters from A-Z, a-z, 0-9, '_', '-', got {:?}",
                        c.name
                    ),
                );
            }
            if !c.nats_url.starts_with("nats://") && !c.nats_url.starts_with("tls://") {
                return err(
                    "cluster.nats_url",
                    format!("expected nats://HOST:PORT, got {:?}", c.nats_url),
                );
            }
            if !(1_000..=3_600_000).contains(&c.ack_wait_ms) {
                return err("cluster.ack_wait_ms", "expected 1000 to 3600000".into());
            }
            if c.node
                .as_ref()
                .is_some_and(|n| n.is_empty() || n.len() > 64)
            {
                return err("cluster.node", "expected 1 to 64 characters".into());
            }
            if self.sources.tcp.is_some() {
                return err(
                    "sources.tcp",
                    "the TCP source is not available on a cluster node yet; submit over HTTP"
                        .into(),
                );
            }
        }
        for (i, sc) in self.schedule.iter().enumerate() {
            let key = format!("schedule[{i}]");
            if !routes.contains_key(&sc.kind) {
                return Err((key, format!("kind {:?} has no route", sc.kind)));
            }
            match (sc.every_ms, sc.after_ms) {
                (Some(0), _) => return Err((key, "every_ms must be at least 1".into())),
                (Some(_), None) | (None, Some(_)) => {}
                _ => return Err((key, "set exactly one of every_ms or after_ms".into())),
            }
        }
        Ok(())
    }

    /// The storage this configuration names, opened (the journal's folder is created, read
    /// back and locked against a second server).
    pub fn open_storage(&self) -> Result<Arc<dyn Storage>, StorageError> {
        let st = &self.storage;
        Ok(match st.kind {
            StorageKind::Memory => Arc::new(Memory),
            StorageKind::Journal => {
                let fsync = match st.fsync {
                    FsyncMode::Always => Fsync::Always,
                    FsyncMode::Interval => {
                        Fsync::Interval(Duration::from_millis(st.fsync_interval_ms))
                    }
                    FsyncMode::Never => Fsync::Never,
                };
                Arc::new(Journal::open(
                    &st.path,
                    JournalSettings {
                        fsync,
                        segment_bytes: st.segment_bytes,
                        ..JournalSettings::default()
                    },
                )?)
            }
        })
    }

    /// The library's settings for this configuration.
    pub fn settings(&self) -> Settings {
        Settings {
            capacity: self.dispatch.capacity,
            result_ttl: Duration::from_millis(self.dispatch.result_ttl_ms),
            max_results: self.dispatch.max_results,
            max_result_bytes: self.dispatch.max_result_bytes,
            max_dead_letters: self.dispatch.max_dead_letters,
            max_dead_letter_bytes: self.dispatch.max_dead_letter_bytes,
            max_delay: Duration::from_millis(self.dispatch.max_delay_ms),
            io: IoSettings {
                arbiters: self.pools.io.arbiters,
                concurrency: self.pools.io.concurrency,
                stall_warn: Duration::from_millis(self.pools.io.stall_warn_ms),
            },
            cpu: CpuSettings {
                threads: self.pools.cpu.threads,
            },
            fetch: FetchSettings {
                allow_hosts: self.fetch.allow_hosts.clone(),
                timeout: Duration::from_millis(self.fetch.timeout_ms),
                max_connections: self.fetch.max_connections,
                max_body_bytes: self.fetch.max_body_bytes,
            },
            restart: RestartPolicy {
                max_restarts: self.dispatch.max_restarts,
                window: Duration::from_millis(self.dispatch.restart_window_ms),
                backoff: Duration::from_millis(self.dispatch.restart_backoff_ms),
                max_backoff: Duration::from_millis(self.dispatch.restart_max_backoff_ms),
            },
            ..Settings::default()
        }
    }

    /// The routes as library settings.
    pub fn route_settings(&self) -> Vec<(String, RouteSettings)> {
        self.effective_routes()
            .into_iter()
            .map(|(kind, r)| {
                let mut rs =
                    RouteSettings::new(r.processor.clone().unwrap_or_else(|| kind.clone()));
                rs.capacity = r.capacity;
                rs.timeout = r.timeout_ms.map(Duration::from_millis);
                rs.retries = r.retries;
                rs.backoff = Duration::from_millis(r.backoff_ms);
                rs.concurrency = r.concurrency;
                rs.max_per_client = r.max_per_client;
                (kind, rs)
            })
            .collect()
    }

    /// The schedules as library values.
    pub fn schedules(&self) -> Vec<Schedule> {
        self.schedule
            .iter()
            .map(|s| Schedule {
                kind: s.kind.clone(),
                payload: s.payload.clone(),
                when: match (s.every_ms, s.after_ms) {
                    (Some(e), _) => Every::Interval(Duration::from_millis(e)),
                    (None, a) => Every::Once(Duration::from_millis(a.unwrap_or(0))),
                },
            })
            .collect()
    }

    /// The TCP source's limits.
    pub fn tcp_settings(&self) -> TcpSettings {
        let tcp = self
            .sources
            .tcp
            .clone()
            .unwrap_or_else(|| TcpConfig::on(""));
        TcpSettings {
            max_line_bytes: self.server.max_body_bytes,
            max_json_depth: self.server.max_json_depth,
            max_wait: None,
            tokens: self.server.tokens.clone(),
            max_connections: tcp.max_connections,
            max_connections_per_client: match tcp.max_connections_per_client {
                0 => (tcp.max_connections / 4).max(1),
                n => n,
            },
            idle_timeout: Duration::from_millis(tcp.idle_timeout_ms),
            max_pending: tcp.max_pending,
        }
    }
}

/// Figment names keys like `"default.server.workers"` (file) or `"SERVER.WORKERS"`
/// (environment); show them as they are written in config.toml: `"server.workers"`, and a value
/// from the environment with the variable it came from.
fn readable_key(msg: &str) -> String {
    let Some(start) = msg.find("key \"").map(|i| i + 5) else {
        return msg.to_owned();
    };
    let Some(len) = msg[start..].find('"') else {
        return msg.to_owned();
    };
    let key = msg[start..start + len].to_ascii_lowercase();
    let key = key.strip_prefix("default.").unwrap_or(&key);
    let mut out = format!("{}{}{}", &msg[..start], key, &msg[start + len..]);
    if msg.contains("environment variable") {
        out.push_str(&format!(" ({})", env_var(key)));
    }
    out
}

/// The environment variable that sets a dotted key: `server.workers` → `MAILROOM_SERVER__WORKERS`.
fn env_var(key: &str) -> String {
    format!("MAILROOM_{}", key.replace('.', "__").to_ascii_uppercase())
}

impl RouteConfig {
    fn default_for() -> RouteConfig {
        RouteConfig {
            backoff_ms: default_backoff(),
            ..RouteConfig::default()
        }
    }
}
