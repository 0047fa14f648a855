//! The TCP source: newline-delimited JSON on a socket, the seed's select-loop server as actors.
//!
//! [`TcpSource`] accepts connections and starts one [`Connection`] actor for each. Every line is
//! a `Submission`(super::Submission) plus an optional `"ref"` (and a `"token"` when
//! [`TcpSettings::tokens`] is not empty); every non-blank line gets exactly one line back: the
//! message's outcome (the same object `POST /v1/messages?wait=true` answers), with the `ref`
//! echoed, whenever the message finishes (unless [`TcpSettings::max_wait`] caps the wait).
//! Outcomes come back in the order they finish, not the order sent. Blank lines are skipped. A
//! bad line — not JSON, too deep, too long, a wrong field, a missing or wrong token, an unknown
//! kind, a full route — gets an error line
//! `{"ref", "status": "rejected", "code", "error": {"class", "message"}}` and the connection
//! lives on. A client that closes its side still gets every outstanding answer before the socket
//! closes. When the listener fails, the source logs it and stops; connections already open go on.
//!
//! Bounds (see [`TcpSettings`]): at most `max_connections` connections (one more gets a single
//! error line, code 503, and is closed: at most [`MAX_REFUSING`] such goodbyes at once, each
//! within a second, and past them a connection is closed with no line), of which one client
//! address (an IPv6 address by its /64) holds at most `max_connections_per_client` (one more
//! gets the same goodbye with code 429); at most `max_pending` lines of a connection read and not
//! yet answered — past that the connection is not read until its client reads answers
//! (backpressure: a client that writes and never reads holds `max_pending` answers, not all of
//! them); a connection with nothing pending that completes no line within `idle_timeout` is
//! closed (so is one that holds half a line that long). Accept errors (out of file descriptors)
//! pause accepting for 100 ms and are logged at most once a second.

use std::collections::HashMap;
use std::io;
use std::sync::atomic::{AtomicUsize, Ordering::SeqCst};
use std::sync::Arc;
use std::time::{Duration, Instant};

use actix::prelude::*;
use serde_json::{json, Value};
use tokio::io::{AsyncBufReadExt, AsyncReadExt, AsyncWriteExt, BufReader};
use tokio::net::tcp::OwnedReadHalf;
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::{mpsc, OwnedSemaphorePermit, Semaphore};

use super::{client_id, parse_json, token_accepted, Submission};
use crate::dispatcher::Dispatcher;
use crate::envelope::{ClientId, Outcome, Source};
use crate::error::Rejected;

/// Limits of the TCP source.
#[derive(Debug, Clone, PartialEq)]
pub struct TcpSettings {
    /// Longest accepted line, in bytes.
    pub max_line_bytes: usize,
    /// Deepest JSON nesting accepted.
    pub max_json_depth: usize,
    /// How long a line waits for its outcome before the answer is its current status (`queued`,
    /// `delayed` or `running`, with no later line for that message). `None` (the default): the
    /// answer is the outcome, whenever the message finishes; shutdown settles every message, so
    /// every line is answered.
    pub max_wait: Option<Duration>,
    /// Accepted tokens. Not empty: every line must carry one of them as `"token"`, or it is
    /// rejected with code 401 (class `unauthorized`). Empty (the default): no token needed.
    pub tokens: Vec<String>,
    /// Most connections open at once (default 256).
    pub max_connections: usize,
    /// Most connections one client address (an IPv4 address, an IPv6 /64) holds at once
    /// (default 64), so one client cannot take every connection.
    pub max_connections_per_client: usize,
    /// A connection with no answer pending that completes no line for this long is closed
    /// (default 60 s).
    pub idle_timeout: Duration,
    /// Most lines of one connection read and not yet answered (default 64).
    pub max_pending: usize,
}

impl Default for TcpSettings {
    fn default() -> Self {
        TcpSettings {
            max_line_bytes: 1024 * 1024,
            max_json_depth: 64,
            max_wait: None,
            tokens: Vec::new(),
            max_connections: 256,
            max_connections_per_client: 64,
            idle_timeout: Duration::from_secs(60),
            max_pending: 64,
        }
    }
}

impl TcpSettings {
    /// A limit of zero would serve no connection (refused, stalled or closed at once): an
    /// error naming it.
    fn check(&self) -> io::Result<()> {
        let zero = [
            ("max_line_bytes", self.max_line_bytes == 0),
            ("max_json_depth", self.max_json_depth == 0),
            ("max_connections", self.max_connections == 0),
            (
                "max_connections_per_client",
                self.max_connections_per_client == 0,
            ),
            ("max_pending", self.max_pending == 0),
            ("idle_timeout", self.idle_timeout.is_zero()),
        ];
        match zero.iter().find(|(_, is_zero)| *is_zero) {
            Some((name, _)) => Err(io::Error::new(
                io::ErrorKind::InvalidInput,
                format!("TcpSettings::{name} is 0: no connection could be served"),
            )),
            None => Ok(()),
        }
    }
}

/// Stops accepting new connections.
#[derive(Message)]
#[rtype(result = "()")]
pub struct StopAccepting;

/// The accepting actor.
pub struct TcpSource {
    dispatcher: Dispatcher,
    settings: Arc<TcpSettings>,
    listener: Option<std::net::TcpListener>,
    /// Connections open now.
    open: Arc<AtomicUsize>,
    /// Connections open now per client address, for those holding any.
    clients: Clients,
    /// Connections over the limit being refused now (see [`refuse`]).
    refusing: Arc<AtomicUsize>,
    /// When an accept error was last logged, and how many were not logged since.
    last_error_log: Option<Instant>,
    errors_not_logged: u64,
}

impl TcpSource {
    /// Starts accepting on `listener` (already bound) in the current arbiter. Settings that
    /// would serve no connection (a limit of zero) are an [`io::ErrorKind::InvalidInput`]
    /// error naming the setting, and nothing starts.
    pub fn start(
        dispatcher: Dispatcher,
        listener: std::net::TcpListener,
        settings: TcpSettings,
    ) -> io::Result<Addr<TcpSource>> {
        settings.check()?;
        listener.set_nonblocking(true)?;
        Ok(Actor::start(TcpSource {
            dispatcher,
            settings: Arc::new(settings),
            listener: Some(listener),
            open: Arc::new(AtomicUsize::new(0)),
            clients: Clients::default(),
            refusing: Arc::new(AtomicUsize::new(0)),
            last_error_log: None,
            errors_not_logged: 0,
        }))
    }
}

struct Accepted(io::Result<TcpStream>);

impl Message for Accepted {
    type Result = ();
}

impl Actor for TcpSource {
    type Context = Context<Self>;

    fn started(&mut self, ctx: &mut Self::Context) {
        let listener = match self.listener.take().map(TcpListener::from_std) {
            Some(Ok(l)) => l,
            Some(Err(e)) => {
                tracing::error!(error = %e, "TCP source could not use its listener; stopping");
                return ctx.stop();
            }
            None => return ctx.stop(),
        };
        if let Ok(addr) = listener.local_addr() {
            tracing::info!(%addr, "TCP source listening");
        }
        // An accept error (EMFILE: out of file descriptors) pauses accepting instead of
        // spinning on the same error.
        let accepts = futures_util::stream::unfold(listener, |l| async move {
            let r = l.accept().await.map(|(s, _)| s);
            if r.is_err() {
                actix_rt::time::sleep(Duration::from_millis(100)).await;
            }
            Some((Accepted(r), l))
        });
        ctx.add_stream(accepts);
    }
}

impl StreamHandler<Accepted> for TcpSource {
    fn handle(&mut self, item: Accepted, _: &mut Context<Self>) {
        match item.0 {
            Ok(stream) => {
                let _ = stream.set_nodelay(true);
                let max = self.settings.max_connections;
                if self.open.load(SeqCst) >= max {
                    let why = format!(
                        "too many connections (sources.tcp.max_connections = {max}); try again later"
                    );
                    refuse(stream, 503, why, &self.refusing);
                    return;
                }
                let client = stream.peer_addr().ok().map(|a| ClientId::address(a.ip()));
                let Some(slot) = OpenSlot::take(&self.open, &self.clients, client, &self.settings)
                else {
                    let why = format!(
                        "too many connections from this client \
                         (sources.tcp.max_connections_per_client = {}); close one first",
                        self.settings.max_connections_per_client
                    );
                    refuse(stream, 429, why, &self.refusing);
                    return;
                };
                Connection::start(self.dispatcher.clone(), self.settings.clone(), stream, slot);
            }
            Err(e) => {
                let now = Instant::now();
                if self
                    .last_error_log
                    .is_none_or(|t| now.duration_since(t) >= Duration::from_secs(1))
                {
                    tracing::warn!(
                        error = %e,
                        not_logged = self.errors_not_logged,
                        "TCP accept failed; accepting pauses for 100 ms (logged at most once a second)"
                    );
                    self.last_error_log = Some(now);
                    self.errors_not_logged = 0;
                } else {
                    self.errors_not_logged += 1;
                }
            }
        }
    }
}

impl Handler<StopAccepting> for TcpSource {
    type Result = ();
    fn handle(&mut self, _: StopAccepting, ctx: &mut Context<Self>) {
        tracing::info!("TCP source stopped accepting");
        ctx.stop();
    }
}

/// Most connections over `max_connections` answered with an error line at once: each is held
/// up to a second while its goodbye is read, so without this bound a client that keeps
/// connecting could hold any number of sockets (and the HTTP listener's file descriptors).
pub const MAX_REFUSING: usize = 64;

/// Answers a connection over `max_connections` (`code` 503) or over its client's share (429)
/// with one error line saying `why`, then closes it; past [`MAX_REFUSING`] refusals in
/// progress, closes it at once.
fn refuse(stream: TcpStream, code: u16, why: String, refusing: &Arc<AtomicUsize>) {
    if refusing.fetch_add(1, SeqCst) >= MAX_REFUSING {
        refusing.fetch_sub(1, SeqCst);
        drop(stream);
        return;
    }
    let slot = OpenSlot {
        count: refusing.clone(),
        client: None,
    };
    actix_rt::spawn(async move {
        let _slot = slot; // given back however this ends
        let class = if code == 429 {
            "client_share"
        } else {
            "unavailable"
        };
        let line = json!({
            "ref": null, "status": "rejected", "code": code,
            "error": {"class": class, "message": why},
        });
        let mut stream = stream;
        let write = async {
            stream.write_all(format!("{line}\n").as_bytes()).await?;
            stream.shutdown().await?;
            // Read what the client sent until it closes (for a second at most): closing with
            // unread input would reset the connection and could lose the line just written.
            let mut sink = [0u8; 4096];
            while stream.read(&mut sink).await? > 0 {}
            Ok::<_, io::Error>(())
        };
        let _ = actix_rt::time::timeout(Duration::from_secs(1), write).await;
    });
}

/// Connections open per client address.
type Clients = Arc<parking_lot::Mutex<HashMap<ClientId, usize>>>;

/// One connection counted in the source's `open` and its client's count in `clients` (given
/// back once both halves of the connection, its reader and its writer, have ended), or in
/// `refusing` (when its refusal ends).
struct OpenSlot {
    count: Arc<AtomicUsize>,
    client: Option<(Clients, ClientId)>,
}

impl OpenSlot {
    /// Counts a connection of `client`, unless that client holds its share already.
    fn take(
        open: &Arc<AtomicUsize>,
        clients: &Clients,
        client: Option<ClientId>,
        settings: &TcpSettings,
    ) -> Option<OpenSlot> {
        if let Some(c) = &client {
            let mut held = clients.lock();
            if held.get(c).copied().unwrap_or(0) >= settings.max_connections_per_client {
                return None;
            }
            *held.entry(c.clone()).or_insert(0) += 1;
        }
        open.fetch_add(1, SeqCst);
        Some(OpenSlot {
            count: open.clone(),
            client: client.map(|c| (clients.clone(), c)),
        })
    }
}

impl Drop for OpenSlot {
    fn drop(&mut self) {
        self.count.fetch_sub(1, SeqCst);
        if let Some((clients, client)) = &self.client {
            let mut held = clients.lock();
            if let Some(n) = held.get_mut(client) {
                *n -= 1;
                if *n == 0 {
                    held.remove(client);
                }
            }
        }
    }
}

/// One line read from a connection, or the reason it could not be read, with the pending place
/// it holds until its answer is written.
enum Line {
    Text(Vec<u8>, OwnedSemaphorePermit),
    TooLong(OwnedSemaphorePermit),
}

impl Message for Line {
    type Result = ();
}

/// One client connection.
pub struct Connection {
    dispatcher: Dispatcher,
    /// The client's address, which names it for per-client limits when tokens are not set.
    peer: Option<std::net::IpAddr>,
    settings: Arc<TcpSettings>,
    /// Answer lines, each with the pending place of its line: at most `max_pending` are queued.
    out: mpsc::UnboundedSender<(String, OwnedSemaphorePermit)>,
}

impl Connection {
    fn start(
        dispatcher: Dispatcher,
        settings: Arc<TcpSettings>,
        stream: TcpStream,
        slot: OpenSlot,
    ) {
        let peer = stream.peer_addr().ok();
        let (read, mut write) = stream.into_split();
        let (out, mut rx) = mpsc::unbounded_channel::<(String, OwnedSemaphorePermit)>();
        // The writer ends when the connection actor and every pending answer have dropped
        // their senders, i.e. after the last answer is written. Each written answer gives its
        // pending place back, which lets the reader read another line.
        // An answer that cannot be written within the idle timeout (a client that stopped
        // reading) ends the connection: its pending answers are dropped, and its reader ends
        // when it next waits for a pending place.
        let stall = settings.idle_timeout;
        let pending = Arc::new(Semaphore::new(settings.max_pending));
        let closing = pending.clone();
        // Held by both halves: the connection counts until the last of them ends.
        let slot = Arc::new(slot);
        let writer_slot = slot.clone();
        actix_rt::spawn(async move {
            let _slot = writer_slot;
            while let Some((line, permit)) = rx.recv().await {
                match actix_rt::time::timeout(stall, write.write_all(line.as_bytes())).await {
                    Ok(Ok(())) => drop(permit),
                    Ok(Err(_)) => break,
                    Err(_) => {
                        tracing::debug!("TCP client is not reading its answers: closing");
                        break;
                    }
                }
            }
            closing.close();
            let _ = write.shutdown().await;
        });
        let reader = lines(read, settings.clone(), pending, slot);
        Connection::create(move |ctx| {
            ctx.add_stream(reader);
            tracing::debug!(?peer, "TCP connection opened");
            Connection {
                dispatcher,
                peer: peer.map(|p| p.ip()),
                settings,
                out,
            }
        });
    }

    fn reject(
        &self,
        permit: OwnedSemaphorePermit,
        reference: Value,
        code: u16,
        class: &str,
        message: String,
    ) {
        let message = super::cut_quoted(&message, super::ECHO_MAX);
        let line = json!({
            "ref": reference, "status": "rejected", "code": code,
            "error": {"class": class, "message": message},
        });
        if code == 400 || code == 413 {
            self.dispatcher.refused_malformed();
        }
        let _ = self.out.send((format!("{line}\n"), permit));
    }

    fn submit(&self, text: &[u8], permit: OwnedSemaphorePermit) {
        let line = match read_line(text, &self.settings) {
            Ok(line) => line,
            Err(r) => return self.reject(permit, r.reference, r.code, r.class, r.message),
        };
        let reference = line.reference;
        let mut msg = line.submission.into_message(Source::Tcp);
        if let Some(c) = client_id(&self.settings.tokens, line.token.as_deref(), self.peer) {
            msg = msg.client(c);
        }
        let (d, out, wait) = (
            self.dispatcher.clone(),
            self.out.clone(),
            self.settings.max_wait,
        );
        actix_rt::spawn(async move {
            let sent = match wait {
                Some(wait) => d.send_timeout(msg, wait).await,
                None => d.send(msg).await,
            };
            let line = match sent {
                Ok(outcome) => outcome_line(&outcome, reference),
                Err(r) => rejection_line(&r, reference),
            };
            let _ = out.send((line, permit));
        });
    }
}

/// The code of a rejection in an error line of this protocol (the same numbers the HTTP API
/// answers, so one client library reads both): 422 for a message that can never be accepted as
/// it is (unknown kind, invalid payload or timing), 429 for a client over its share, 503 for one
/// that may be accepted later (full, degraded, draining, storage).
fn line_code(r: &Rejected) -> u16 {
    match r {
        Rejected::NoRoute(_) | Rejected::Invalid { .. } => 422,
        Rejected::ClientShareFull { .. } => 429,
        Rejected::QueueFull { .. }
        | Rejected::Degraded { .. }
        | Rejected::ShuttingDown(_)
        | Rejected::Storage { .. } => 503,
    }
}

/// A line that can be submitted: its submission, the `ref` to echo and the token it showed.
#[derive(Debug)]
pub(crate) struct LineRequest {
    pub reference: Value,
    pub token: Option<String>,
    pub submission: Submission,
}

/// Why a line is refused before it is submitted: the answer's `ref`, code, class and message.
#[derive(Debug)]
pub(crate) struct LineRefused {
    pub reference: Value,
    pub code: u16,
    pub class: &'static str,
    pub message: String,
}

/// Reads one line (without its newline): strict JSON within the depth limit, the token check
/// when tokens are set, then the submission's fields. No I/O and no admission: what a line asks
/// for, or why it is refused.
pub(crate) fn read_line(text: &[u8], settings: &TcpSettings) -> Result<LineRequest, LineRefused> {
    let refused = |reference, code, class, message| LineRefused {
        reference,
        code,
        class,
        message,
    };
    let mut value = parse_json(text, settings.max_json_depth)
        .map_err(|e| refused(Value::Null, 400, "invalid", e.to_string()))?;
    let (reference, token) = match value.as_object_mut() {
        Some(o) => (o.remove("ref").unwrap_or(Value::Null), o.remove("token")),
        None => (Value::Null, None),
    };
    let token = match token {
        Some(Value::String(t)) => Some(t),
        _ => None,
    };
    if !settings.tokens.is_empty() {
        let ok = token
            .as_deref()
            .is_some_and(|g| token_accepted(&settings.tokens, g));
        if !ok {
            let what = if token.is_some() { "wrong" } else { "missing" };
            return Err(refused(
                reference,
                401,
                "unauthorized",
                format!("{what} token: this source needs \"token\" on every line"),
            ));
        }
    }
    match Submission::from_value(value) {
        Ok(submission) => Ok(LineRequest {
            reference,
            token,
            submission,
        }),
        Err(e) => Err(refused(reference, 400, "invalid", e.to_string())),
    }
}

fn outcome_line(outcome: &Outcome, reference: Value) -> String {
    let mut v = serde_json::to_value(outcome).unwrap_or_else(|e| json!({"error": e.to_string()}));
    if !outcome.status.is_terminal() {
        v = json!({"id": outcome.id, "status": outcome.status});
    }
    v["ref"] = reference;
    format!("{v}\n")
}

fn rejection_line(r: &Rejected, reference: Value) -> String {
    let v = json!({
        "ref": reference, "status": "rejected", "code": line_code(r),
        "error": {"class": r.reason(), "message": super::cut_quoted(&r.to_string(), super::ECHO_MAX)},
    });
    format!("{v}\n")
}

/// Reads `\n`-terminated lines (a trailing `\r` is dropped); a line longer than the limit is
/// reported as [`Line::TooLong`] and skipped up to its newline, and reading goes on. Before each
/// line it takes a pending place (waiting while `max_pending` answers are outstanding). It ends
/// at end of input, on a read error, when the connection is idle (nothing pending and no whole
/// line within `idle_timeout`), or within `idle_timeout` of the writer ending (a client that
/// stopped reading its answers). It holds the connection's `slot` until it ends.
fn lines(
    read: OwnedReadHalf,
    settings: Arc<TcpSettings>,
    pending: Arc<Semaphore>,
    slot: Arc<OpenSlot>,
) -> impl futures_util::Stream<Item = Line> {
    let state = Some((BufReader::new(read), slot));
    futures_util::stream::unfold(state, move |held| {
        let (settings, pending) = (settings.clone(), pending.clone());
        async move {
            let (mut reader, slot) = held?;
            let max = settings.max_line_bytes;
            // Closed by the writer when the client stopped reading: the connection ends.
            let permit = pending.clone().acquire_owned().await.ok()?;
            loop {
                let mut buf = Vec::new();
                let complete = loop {
                    let room = (max + 1).saturating_sub(buf.len()) as u64;
                    let mut limited = (&mut reader).take(room);
                    let read = limited.read_until(b'\n', &mut buf);
                    match actix_rt::time::timeout(settings.idle_timeout, read).await {
                        Ok(Ok(0)) if buf.is_empty() => return None, // end of input
                        Ok(Ok(0)) => break true, // the last line, cut short by the end
                        // A whole line, or a last one cut short by the end of input (taken
                        // as a line).
                        Ok(Ok(_)) => break true,
                        Ok(Err(_)) => return None,
                        Err(_) => {
                            if pending.is_closed() {
                                // The writer ended: nobody would read an answer.
                                return None;
                            }
                            // Only this line's own place is taken: no answer is pending.
                            if pending.available_permits() + 1 >= settings.max_pending {
                                tracing::debug!("TCP connection idle: closing");
                                return None;
                            }
                            if buf.len() > max {
                                break false;
                            }
                        }
                    }
                };
                if complete && buf.last() == Some(&b'\n') {
                    buf.pop();
                    if buf.last() == Some(&b'\r') {
                        buf.pop();
                    }
                } else if buf.len() > max {
                    // Skip the rest of the over-long line, holding 64 KiB at most.
                    loop {
                        let mut junk = Vec::new();
                        let mut limited = (&mut reader).take(64 * 1024);
                        let skip = limited.read_until(b'\n', &mut junk);
                        let n = actix_rt::time::timeout(settings.idle_timeout, skip)
                            .await
                            .ok()?
                            .ok()?;
                        if n == 0 || junk.last() == Some(&b'\n') {
                            break;
                        }
                    }
                    return Some((Line::TooLong(permit), Some((reader, slot))));
                }
                if buf.iter().all(u8::is_ascii_whitespace) {
                    if pending.is_closed() {
                        return None; // as on an idle tick: nobody reads answers any more
                    }
                    continue; // blank lines are ignored
                }
                return Some((Line::Text(buf, permit), Some((reader, slot))));
            }
        }
    })
}

impl Actor for Connection {
    type Context = Context<Self>;
}

impl StreamHandler<Line> for Connection {
    fn handle(&mut self, line: Line, _: &mut Context<Self>) {
        match line {
            Line::Text(text, permit) => self.submit(&text, permit),
            Line::TooLong(permit) => self.reject(
                permit,
                Value::Null,
                413,
                "invalid",
                format!("line longer than {} bytes", self.settings.max_line_bytes),
            ),
        }
    }

    fn finished(&mut self, ctx: &mut Context<Self>) {
        tracing::debug!("TCP connection closed by the client; answers still pending are sent");
        ctx.stop();
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A connected pair on loopback: the server's end (tokio) and the client's (std).
    async fn pair() -> (TcpStream, std::net::TcpStream) {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let client = std::net::TcpStream::connect(addr).unwrap();
        let (server, _) = listener.accept().await.unwrap();
        (server, client)
    }

    /// Reads what the server sends until it closes (in a thread: the client is blocking).
    async fn read_all(mut client: std::net::TcpStream) -> Vec<u8> {
        use std::io::Read;
        client
            .set_read_timeout(Some(Duration::from_secs(30)))
            .unwrap();
        actix_rt::task::spawn_blocking(move || {
            let mut got = Vec::new();
            let _ = client.read_to_end(&mut got);
            got
        })
        .await
        .unwrap()
    }

    #[test]
    fn a_limit_of_zero_is_refused_by_name() {
        assert!(TcpSettings::default().check().is_ok());
        let limits = [
            "max_line_bytes",
            "max_json_depth",
            "max_connections",
            "max_connections_per_client",
            "max_pending",
            "idle_timeout",
        ];
        for name in limits {
            let mut settings = TcpSettings::default();
            match name {
                "max_line_bytes" => settings.max_line_bytes = 0,
                "max_json_depth" => settings.max_json_depth = 0,
                "max_connections" => settings.max_connections = 0,
                "max_connections_per_client" => settings.max_connections_per_client = 0,
                "max_pending" => settings.max_pending = 0,
                _ => settings.idle_timeout = Duration::ZERO,
            }
            let e = settings.check().expect_err(name);
            assert_eq!(e.kind(), io::ErrorKind::InvalidInput);
            assert_eq!(
                e.to_string(),
                format!("TcpSettings::{name} is 0: no connection could be served")
            );
        }
    }

    #[actix_rt::test]
    async fn a_refusal_says_why_until_too_many_are_in_progress_then_just_closes() {
        let refusing = Arc::new(AtomicUsize::new(0));
        let (server, client) = pair().await;
        refuse(server, 503, "too many connections".into(), &refusing);
        let line: serde_json::Value =
            serde_json::from_slice(&read_all(client).await).expect("one JSON line");
        assert_eq!(
            line,
            json!({"ref": null, "status": "rejected", "code": 503,
                   "error": {"class": "unavailable", "message": "too many connections"}})
        );
        let deadline = Instant::now() + Duration::from_secs(30);
        while refusing.load(SeqCst) != 0 {
            assert!(Instant::now() < deadline, "the refusal never ended");
            actix_rt::time::sleep(Duration::from_millis(5)).await;
        }
        // As many refusals in progress as allowed: the next connection is closed with no line,
        // and is not counted.
        refusing.store(MAX_REFUSING, SeqCst);
        let (server, client) = pair().await;
        refuse(server, 429, "over its share".into(), &refusing);
        assert_eq!(read_all(client).await, b"");
        assert_eq!(refusing.load(SeqCst), MAX_REFUSING);
    }
}
