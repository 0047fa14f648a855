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

use std::io;
use std::sync::Arc;
use std::time::Duration;

use actix::prelude::*;
use serde_json::{json, Value};
use tokio::io::{AsyncBufReadExt, AsyncReadExt, AsyncWriteExt, BufReader};
use tokio::net::tcp::OwnedReadHalf;
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::mpsc;

use super::{json_depth, token_accepted, Submission};
use crate::dispatcher::Dispatcher;
use crate::envelope::{Outcome, Source};
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
}

impl Default for TcpSettings {
    fn default() -> Self {
        TcpSettings {
            max_line_bytes: 1024 * 1024,
            max_json_depth: 64,
            max_wait: None,
            tokens: Vec::new(),
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
}

impl TcpSource {
    /// Starts accepting on `listener` (already bound) in the current arbiter.
    pub fn start(
        dispatcher: Dispatcher,
        listener: std::net::TcpListener,
        settings: TcpSettings,
    ) -> io::Result<Addr<TcpSource>> {
        listener.set_nonblocking(true)?;
        Ok(Actor::start(TcpSource {
            dispatcher,
            settings: Arc::new(settings),
            listener: Some(listener),
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
        let accepts = futures_util::stream::unfold(listener, |l| async move {
            let r = l.accept().await.map(|(s, _)| s);
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
                Connection::start(self.dispatcher.clone(), self.settings.clone(), stream);
            }
            Err(e) => tracing::warn!(error = %e, "TCP accept failed"),
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

/// One line read from a connection, or the reason it could not be read.
enum Line {
    Text(Vec<u8>),
    TooLong,
}

impl Message for Line {
    type Result = ();
}

/// One client connection.
pub struct Connection {
    dispatcher: Dispatcher,
    settings: Arc<TcpSettings>,
    out: mpsc::UnboundedSender<String>,
}

impl Connection {
    fn start(dispatcher: Dispatcher, settings: Arc<TcpSettings>, stream: TcpStream) {
        let peer = stream.peer_addr().ok();
        let (read, mut write) = stream.into_split();
        let (out, mut rx) = mpsc::unbounded_channel::<String>();
        // The writer ends when the connection actor and every pending answer have dropped
        // their senders, i.e. after the last answer is written.
        actix_rt::spawn(async move {
            while let Some(line) = rx.recv().await {
                if write.write_all(line.as_bytes()).await.is_err() {
                    break;
                }
            }
            let _ = write.shutdown().await;
        });
        let max = settings.max_line_bytes;
        Connection::create(move |ctx| {
            ctx.add_stream(lines(read, max));
            tracing::debug!(?peer, "TCP connection opened");
            Connection {
                dispatcher,
                settings,
                out,
            }
        });
    }

    fn reject(&self, reference: Value, code: u16, class: &str, message: String) {
        let line = json!({
            "ref": reference, "status": "rejected", "code": code,
            "error": {"class": class, "message": message},
        });
        let _ = self.out.send(format!("{line}\n"));
    }

    fn submit(&self, text: &[u8]) {
        let mut value: Value = match serde_json::from_slice(text) {
            Ok(v) => v,
            Err(e) => return self.reject(Value::Null, 400, "invalid", format!("not JSON: {e}")),
        };
        let (reference, token) = match value.as_object_mut() {
            Some(o) => (o.remove("ref").unwrap_or(Value::Null), o.remove("token")),
            None => (Value::Null, None),
        };
        if !self.settings.tokens.is_empty() {
            let given = token.as_ref().and_then(Value::as_str);
            let ok = given.is_some_and(|g| token_accepted(&self.settings.tokens, g));
            if !ok {
                let what = if given.is_some() { "wrong" } else { "missing" };
                return self.reject(
                    reference,
                    401,
                    "unauthorized",
                    format!("{what} token: this source needs \"token\" on every line"),
                );
            }
        }
        if json_depth(&value) > self.settings.max_json_depth {
            return self.reject(
                reference,
                400,
                "invalid",
                format!("JSON nested deeper than {}", self.settings.max_json_depth),
            );
        }
        let submission: Submission = match serde_json::from_value(value) {
            Ok(s) => s,
            Err(e) => return self.reject(reference, 400, "invalid", e.to_string()),
        };
        let msg = submission.into_message(Source::Tcp);
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
            let _ = out.send(line);
        });
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
        "ref": reference, "status": "rejected", "code": r.code(),
        "error": {"class": r.reason(), "message": r.to_string()},
    });
    format!("{v}\n")
}

/// Reads `\n`-terminated lines (a trailing `\r` is dropped); a line longer than `max` is reported
/// as [`Line::TooLong`] and skipped up to its newline, and reading goes on.
fn lines(read: OwnedReadHalf, max: usize) -> impl futures_util::Stream<Item = Line> {
    futures_util::stream::unfold(Some(BufReader::new(read)), move |reader| async move {
        let mut reader = reader?;
        loop {
            let mut buf = Vec::new();
            let n = (&mut reader)
                .take(max as u64 + 1)
                .read_until(b'\n', &mut buf)
                .await
                .ok()?;
            if n == 0 {
                return None;
            }
            if buf.last() == Some(&b'\n') {
                buf.pop();
                if buf.last() == Some(&b'\r') {
                    buf.pop();
                }
            } else if buf.len() > max {
                // Skip the rest of the over-long line.
                loop {
                    let mut junk = Vec::new();
                    let n = (&mut reader)
                        .take(64 * 1024)
                        .read_until(b'\n', &mut junk)
                        .await
                        .ok()?;
                    if n == 0 || junk.last() == Some(&b'\n') {
                        break;
                    }
                }
                return Some((Line::TooLong, Some(reader)));
            }
            if buf.iter().all(u8::is_ascii_whitespace) {
                continue; // blank lines are ignored
            }
            return Some((Line::Text(buf), Some(reader)));
        }
    })
}

impl Actor for Connection {
    type Context = Context<Self>;
}

impl StreamHandler<Line> for Connection {
    fn handle(&mut self, line: Line, _: &mut Context<Self>) {
        match line {
            Line::Text(text) => self.submit(&text),
            Line::TooLong => self.reject(
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
