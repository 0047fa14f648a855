//! `fetch`: an HTTP request with `awc`, the seed's aiohttp `get`, on an I/O arbiter.
//!
//! Payload `{"url", "method"?, "headers"?, "body"?, "timeout_ms"?}`, result `{"status", "bytes",
//! "headers", "body", "elapsed_ms"}` (plus `"truncated": true` when the body was cut at
//! `max_body_bytes`). The body is JSON when the upstream says so and it parses, text otherwise.
//!
//! One `awc::Client` per processor instance, i.e. per route worker on its thread (awc clients are
//! not `Send`): the route's own worker, and one on each attached thread (each HTTP worker, by
//! default), each with its own pool. Each client's connection limit is raised to
//! `max_connections` (so the process may hold that many per such thread) and timeouts are
//! explicit.
//! Redirects are not followed (a redirect could lead to a refused target).
//!
//! A `GET` (the default), `HEAD` or `OPTIONS` request with no method-override header is pure
//! ([`Processor::pure_when`]): with durable storage it begins while its record is being
//! written. Other requests begin once it is on disk.
//!
//! The guard against server-side request forgery: loopback, private, link-local and unspecified
//! targets are refused unless `allow_hosts` names the host or the address. A literal address is
//! refused at admission (the payload is invalid); a host name is checked in the client's resolver
//! on the addresses it resolves to, so the addresses checked are the ones connected to. A refused
//! fetch fails with class `forbidden`; an unreachable upstream with class `upstream`; one that does
//! not answer in time with class `timeout`.

use std::collections::{BTreeMap, HashSet};
use std::fmt;
use std::net::{IpAddr, SocketAddr};
use std::sync::{Arc, Once};
use std::time::{Duration, Instant};

use actix_tls::connect::{Connector as TcpConnector, Resolve, Resolver};
use awc::http::{Method, Uri};
use futures_util::future::LocalBoxFuture;
use futures_util::StreamExt;
use serde::Deserialize;
use serde_json::{json, Map, Value};

use super::builtin::parse;
use super::{AsyncProcessor, Job, ProcessError, ProcessResult, Processor};
use crate::envelope::{millis, ErrorClass};
use crate::settings::FetchSettings;

/// Largest `fetch.timeout_ms`.
pub const MAX_FETCH_TIMEOUT_MS: u64 = 300_000;

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct FetchArgs {
    url: String,
    #[serde(default)]
    method: Option<String>,
    #[serde(default)]
    headers: BTreeMap<String, String>,
    #[serde(default)]
    body: Option<String>,
    #[serde(default, deserialize_with = "crate::source::whole_ms")]
    timeout_ms: Option<u64>,
}

/// Hosts and addresses that may be fetched although they are loopback, private or link-local.
#[derive(Debug, Clone, Default)]
pub struct AllowList {
    hosts: HashSet<String>,
    ips: HashSet<IpAddr>,
}

impl AllowList {
    /// Builds the list from host names and literal addresses.
    pub fn new(entries: &[String]) -> AllowList {
        let mut list = AllowList::default();
        for e in entries {
            let e = e.trim().trim_start_matches('[').trim_end_matches(']');
            match e.parse::<IpAddr>() {
                Ok(ip) => {
                    list.ips.insert(ip);
                }
                Err(_) => {
                    list.hosts.insert(e.to_ascii_lowercase());
                }
            }
        }
        list
    }

    fn host_allowed(&self, host: &str) -> bool {
        self.hosts.contains(&host.to_ascii_lowercase())
    }

    /// Whether a connection to `ip` (reached through `host`) is allowed.
    pub fn permits(&self, host: &str, ip: IpAddr) -> bool {
        !is_internal(ip) || self.ips.contains(&ip) || self.host_allowed(host)
    }
}

/// Whether `ip` is loopback, private, link-local, shared (100.64/10) or unspecified.
pub fn is_internal(ip: IpAddr) -> bool {
    match ip {
        IpAddr::V4(v4) => {
            let o = v4.octets();
            v4.is_loopback()
                || v4.is_private()
                || v4.is_link_local()
                || v4.is_unspecified()
                || v4.is_broadcast()
                || o[0] == 0
                || (o[0] == 100 && (o[1] & 0xc0) == 64)
        }
        IpAddr::V6(v6) => {
            if let Some(v4) = v6.to_ipv4_mapped() {
                return is_internal(IpAddr::V4(v4));
            }
            let s = v6.segments();
            let o = v6.octets();
            let v4_at = |i: usize| IpAddr::V4([o[i], o[i + 1], o[i + 2], o[i + 3]].into());
            // IPv4-compatible (::a.b.c.d, deprecated but routed by some stacks), NAT64
            // (64:ff9b::/96 and the local-use 64:ff9b:1::/48) and 6to4 (2002:a.b.c.d::/48) carry an
            // IPv4 address that reaches the same hosts: judge them by it.
            let compatible = s[..6] == [0; 6] && !v6.is_loopback() && !v6.is_unspecified();
            let nat64 = s[..6] == [0x64, 0xff9b, 0, 0, 0, 0] || s[..3] == [0x64, 0xff9b, 1];
            let embedded = if compatible || nat64 {
                Some(v4_at(12))
            } else if s[0] == 0x2002 {
                Some(v4_at(2))
            } else {
                None
            };
            if embedded.is_some_and(is_internal) {
                return true;
            }
            v6.is_loopback()
                || v6.is_unspecified()
                || (s[0] & 0xfe00) == 0xfc00
                || (s[0] & 0xffc0) == 0xfe80
                || (s[0] & 0xffc0) == 0xfec0 // site-local (deprecated, still private)
        }
    }
}

/// The error a refused target carries through the resolver.
#[derive(Debug)]
struct Forbidden(String);

impl fmt::Display for Forbidden {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

impl std::error::Error for Forbidden {}

fn forbidden_text(host: &str, ip: IpAddr) -> String {
    format!(
        "refused to fetch {host} ({ip}): loopback, private and link-local targets need fetch.allow_hosts"
    )
}

/// A resolver that drops internal addresses the allow-list does not name.
struct GuardedResolver {
    allow: Arc<AllowList>,
}

impl Resolve for GuardedResolver {
    fn lookup<'a>(
        &'a self,
        host: &'a str,
        port: u16,
    ) -> LocalBoxFuture<'a, Result<Vec<SocketAddr>, Box<dyn std::error::Error>>> {
        Box::pin(async move {
            // A bracketed IPv6 literal ("[::1]") is an address, not a name to look up.
            let bare = host.trim_start_matches('[').trim_end_matches(']');
            let found: Vec<SocketAddr> = match bare.parse::<IpAddr>() {
                Ok(ip) => vec![SocketAddr::new(ip, port)],
                Err(_) => tokio::net::lookup_host((host, port)).await?.collect(),
            };
            let (ok, refused): (Vec<_>, Vec<_>) = found
                .into_iter()
                .partition(|a| self.allow.permits(bare, a.ip()));
            match (ok.is_empty(), refused.first()) {
                (true, Some(first)) => Err(Box::new(Forbidden(forbidden_text(bare, first.ip())))
                    as Box<dyn std::error::Error>),
                _ => Ok(ok),
            }
        })
    }
}

struct Target {
    uri: Uri,
    method: Method,
}

fn check_target(args: &FetchArgs, allow: &AllowList) -> Result<Target, String> {
    let uri: Uri = args
        .url
        .parse()
        .map_err(|e| format!("url is not a valid URL: {e}"))?;
    match uri.scheme_str() {
        Some("http") | Some("https") => {}
        _ => return Err("url must be an absolute http:// or https:// URL".into()),
    }
    let host = uri.host().ok_or("url has no host")?;
    let bare = host.trim_start_matches('[').trim_end_matches(']');
    if let Ok(ip) = bare.parse::<IpAddr>() {
        if !allow.permits(bare, ip) {
            return Err(forbidden_text(bare, ip));
        }
    }
    let method = match &args.method {
        None => Method::GET,
        Some(m) => Method::from_bytes(m.to_ascii_uppercase().as_bytes())
            .map_err(|_| format!("method {m:?} is not an HTTP method"))?,
    };
    for (name, value) in &args.headers {
        let header = awc::http::header::HeaderName::from_bytes(name.as_bytes())
            .map_err(|_| format!("header name {name:?} is not valid"))?;
        // The host is the URL's: a `Host` header would send the request to one virtual host
        // while the guard checked another.
        if header == awc::http::header::HOST {
            return Err("header \"Host\" is not allowed: the host is the URL's".into());
        }
        awc::http::header::HeaderValue::from_str(value)
            .map_err(|_| format!("header {name:?} has a value that is not valid"))?;
    }
    if let Some(t) = args.timeout_ms {
        if !(1..=MAX_FETCH_TIMEOUT_MS).contains(&t) {
            return Err(format!(
                "timeout_ms must be between 1 and {MAX_FETCH_TIMEOUT_MS}, got {t}"
            ));
        }
    }
    Ok(Target { uri, method })
}

/// Whether a fetch's payload asks for a request HTTP defines as safe (RFC 9110 §9.2.1): `GET`
/// (the default), `HEAD` or `OPTIONS`. Such a message is pure ([`Processor::pure_when`]): with
/// durable storage it begins while its record is written, so the fetch overlaps the fsync.
/// A request carrying a method-override header (which many frameworks obey) is not safe,
/// whatever its method.
fn is_safe(payload: &Value) -> bool {
    const OVERRIDES: [&str; 3] = [
        "x-http-method-override",
        "x-http-method",
        "x-method-override",
    ];
    let overridden = payload
        .get("headers")
        .and_then(Value::as_object)
        .is_some_and(|h| {
            h.keys()
                .any(|k| OVERRIDES.iter().any(|o| k.trim().eq_ignore_ascii_case(o)))
        });
    !overridden
        && match payload.get("method") {
            None | Some(Value::Null) => true,
            Some(Value::String(m)) => ["GET", "HEAD", "OPTIONS"]
                .iter()
                .any(|safe| m.eq_ignore_ascii_case(safe)),
            Some(_) => false,
        }
}

/// The `fetch` processor, configured by `settings`.
pub fn fetch(settings: FetchSettings) -> Processor {
    let allow = Arc::new(AllowList::new(&settings.allow_hosts));
    let settings = Arc::new(settings);
    let check = allow.clone();
    Processor::from_factory("fetch", move || Fetch::new(&settings, allow.clone())).validate(
        move |p| {
            let args: FetchArgs = parse(p)?;
            check_target(&args, &check).map(|_| ())
        },
    )
    .schema(super::builtin::object(
        json!({
            "url": {"type": "string", "format": "uri",
                    "description": "absolute http(s) URL; loopback, private and link-local \
                                    targets are refused unless fetch.allow_hosts names them"},
            "method": {"type": ["string", "null"]},
            "headers": {"type": "object", "additionalProperties": {"type": "string"}},
            "body": {"type": ["string", "null"]},
            "timeout_ms": {"type": ["integer", "null"], "minimum": 1, "maximum": MAX_FETCH_TIMEOUT_MS},
        }),
        &["url"],
    ))
    .pure_when(is_safe)
}

struct Fetch {
    client: awc::Client,
    allow: Arc<AllowList>,
    timeout: Duration,
    max_body: usize,
}

static CRYPTO: Once = Once::new();

impl Fetch {
    fn new(settings: &FetchSettings, allow: Arc<AllowList>) -> Fetch {
        CRYPTO.call_once(|| {
            let _ = rustls::crypto::ring::default_provider().install_default();
        });
        let resolver = Resolver::custom(GuardedResolver {
            allow: allow.clone(),
        });
        let connector = awc::Connector::new()
            // HTTP/1.1 only, over TLS too: awc sets no limit on an HTTP/2 answer's headers (h2
            // decodes up to 16 MiB of them, which HPACK lets an upstream send in a few KiB),
            // while its HTTP/1.1 parser takes at most 96 headers in a 128 KiB head.
            .max_http_version(awc::http::Version::HTTP_11)
            .connector(TcpConnector::new(resolver).service())
            .limit(settings.max_connections)
            .timeout(settings.timeout);
        let client = awc::Client::builder()
            .connector(connector)
            .timeout(settings.timeout)
            .disable_redirects()
            .finish();
        Fetch {
            client,
            allow,
            timeout: settings.timeout,
            max_body: settings.max_body_bytes,
        }
    }
}

fn send_error(e: awc::error::SendRequestError) -> ProcessError {
    use awc::error::{ConnectError, SendRequestError};
    match e {
        SendRequestError::Connect(ConnectError::Resolver(inner)) => {
            match inner.downcast_ref::<Forbidden>() {
                Some(f) => ProcessError::with_class(ErrorClass::Forbidden, f.0.clone()),
                None => ProcessError::with_class(
                    ErrorClass::Upstream,
                    format!("could not resolve the host: {inner}"),
                ),
            }
        }
        SendRequestError::Timeout | SendRequestError::Connect(ConnectError::Timeout) => {
            ProcessError::with_class(ErrorClass::Timeout, "the upstream did not answer in time")
        }
        other => ProcessError::with_class(ErrorClass::Upstream, format!("request failed: {other}")),
    }
}

impl AsyncProcessor for Fetch {
    fn process(&self, _job: Job, payload: Value) -> LocalBoxFuture<'static, ProcessResult> {
        let args: FetchArgs = match parse(&payload) {
            Ok(a) => a,
            Err(e) => return Box::pin(async move { Err(ProcessError::new(e)) }),
        };
        let target = match check_target(&args, &self.allow) {
            Ok(t) => t,
            Err(e) => {
                return Box::pin(
                    async move { Err(ProcessError::with_class(ErrorClass::Forbidden, e)) },
                )
            }
        };
        let timeout = args.timeout_ms.map_or(self.timeout, Duration::from_millis);
        let mut req = self
            .client
            .request(target.method, target.uri)
            .timeout(timeout);
        for (name, value) in &args.headers {
            req = req.insert_header((name.as_str(), value.as_str()));
        }
        let max_body = self.max_body;
        let body = args.body.unwrap_or_default();
        Box::pin(async move {
            let started = Instant::now();
            let read = async {
                let mut res = req.send_body(body).await.map_err(send_error)?;
                let status = res.status().as_u16();
                let mut headers = Map::new();
                for (name, value) in res.headers() {
                    let v = String::from_utf8_lossy(value.as_bytes()).into_owned();
                    match headers.get_mut(name.as_str()) {
                        Some(Value::String(prev)) => {
                            prev.push_str(", ");
                            prev.push_str(&v);
                        }
                        _ => {
                            headers.insert(name.as_str().to_owned(), Value::String(v));
                        }
                    }
                }
                let is_json = res
                    .headers()
                    .get("content-type")
                    .and_then(|v| v.to_str().ok())
                    .is_some_and(|ct| ct.contains("json"));
                let mut buf = Vec::new();
                let mut truncated = false;
                while let Some(chunk) = res.next().await {
                    let chunk = chunk.map_err(|e| {
                        ProcessError::with_class(
                            ErrorClass::Upstream,
                            format!("reading the body failed: {e}"),
                        )
                    })?;
                    if buf.len() + chunk.len() > max_body {
                        buf.extend_from_slice(&chunk[..max_body - buf.len()]);
                        truncated = true;
                        break;
                    }
                    buf.extend_from_slice(&chunk);
                }
                Ok::<_, ProcessError>((status, headers, is_json, buf, truncated))
            };
            let (status, headers, is_json, buf, truncated) =
                match actix_rt::time::timeout(timeout, read).await {
                    Ok(r) => r?,
                    Err(_) => {
                        return Err(ProcessError::with_class(
                            ErrorClass::Timeout,
                            format!(
                                "the upstream did not answer within {} ms",
                                timeout.as_millis()
                            ),
                        ))
                    }
                };
            let body = match (is_json && !truncated)
                .then(|| serde_json::from_slice::<Value>(&buf).ok())
                .flatten()
            {
                Some(v) => v,
                None => Value::String(String::from_utf8_lossy(&buf).into_owned()),
            };
            let mut out = json!({
                "status": status,
                "bytes": buf.len(),
                "headers": headers,
                "body": body,
                "elapsed_ms": millis(started.elapsed()),
            });
            if truncated {
                out["truncated"] = Value::Bool(true);
            }
            Ok(out)
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn args(url: &str) -> FetchArgs {
        parse(&json!({ "url": url })).unwrap()
    }

    #[test]
    fn only_requests_http_defines_as_safe_are_pure() {
        let url = "http://example.com/";
        for method in [
            json!(null),
            json!("GET"),
            json!("get"),
            json!("HEAD"),
            json!("Options"),
        ] {
            assert!(is_safe(&json!({"url": url, "method": method})), "{method}");
        }
        assert!(is_safe(&json!({ "url": url })));
        assert!(is_safe(
            &json!({"url": url, "headers": {"Accept": "text/plain"}})
        ));
        for header in [
            "X-HTTP-Method-Override",
            "x-http-method",
            "X-Method-Override",
        ] {
            let payload = json!({"url": url, "headers": {header: "DELETE"}});
            assert!(!is_safe(&payload), "{header}");
        }
        for method in [
            json!("POST"),
            json!("put"),
            json!("DELETE"),
            json!("PATCH"),
            json!(1),
        ] {
            assert!(!is_safe(&json!({"url": url, "method": method})), "{method}");
        }
        let fetch = fetch(FetchSettings::default());
        assert!(!fetch.is_pure(), "not every fetch is pure");
        assert!(fetch.pure.of(&json!({ "url": url })));
        assert!(!fetch.pure.of(&json!({"url": url, "method": "POST"})));
    }

    #[test]
    fn internal_addresses_are_recognised() {
        for ip in [
            "127.0.0.1",
            "10.1.2.3",
            "172.16.0.1",
            "192.168.1.1",
            "169.254.169.254",
            "0.0.0.0",
            "100.64.0.1",
            "::1",
            "::",
            "fe80::1",
            "fd00::1",
            "::ffff:127.0.0.1",
            "::127.0.0.1",
            "::10.0.0.1",
            "64:ff9b::7f00:1",
            "64:ff9b::a9fe:a9fe",
            "64:ff9b:1::c0a8:101",
            "2002:7f00:1::1",
            "fec0::1",
        ] {
            assert!(is_internal(ip.parse().unwrap()), "{ip} is internal");
        }
        for ip in [
            "93.184.216.34",
            "2606:2800:220:1::1",
            "172.32.0.1",
            "64:ff9b::5db8:d822",
            "2002:5db8:d822::1",
        ] {
            assert!(!is_internal(ip.parse().unwrap()), "{ip} is public");
        }
    }

    #[test]
    fn literal_targets_are_checked_against_the_allow_list() {
        let none = AllowList::default();
        assert!(check_target(&args("http://127.0.0.1:9/x"), &none).is_err());
        assert!(check_target(&args("http://[::1]:9/x"), &none).is_err());
        assert!(check_target(&args("ftp://example.com/"), &none).is_err());
        assert!(check_target(&args("/relative"), &none).is_err());
        assert!(check_target(&args("http://example.com/"), &none).is_ok());
        let allow = AllowList::new(&["127.0.0.1".into()]);
        assert!(check_target(&args("http://127.0.0.1:9/x"), &allow).is_ok());
        assert!(check_target(&args("http://127.0.0.2:9/x"), &allow).is_err());
        assert!(check_target(&args("http://[::127.0.0.1]/"), &none).is_err());
        assert!(check_target(&args("http://[64:ff9b::7f00:1]/"), &none).is_err());
        let host =
            parse(&json!({"url": "http://example.com/", "headers": {"HoSt": "10.0.0.1"}})).unwrap();
        assert!(check_target(&host, &none)
            .err()
            .is_some_and(|e| e.contains("\"Host\" is not allowed")));
    }

    /// An upstream that speaks HTTP/2 could send headers without limit (see `Fetch::new`): the
    /// client offers only HTTP/1.1 in its TLS handshake. A loopback listener reads the client's
    /// first TLS message and the protocols it offers (it has no certificate, so the fetch then
    /// fails, as it should).
    #[actix_rt::test]
    async fn over_tls_the_client_offers_only_http_1_1() {
        use std::io::Read;
        let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let port = listener.local_addr().unwrap().port();
        listener.set_nonblocking(true).unwrap();
        let offered = std::thread::spawn(move || {
            let deadline = Instant::now() + Duration::from_secs(30);
            let mut stream = loop {
                match listener.accept() {
                    Ok((stream, _)) => break stream,
                    Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => {
                        assert!(Instant::now() < deadline, "the client never connected");
                        std::thread::sleep(Duration::from_millis(5));
                    }
                    Err(e) => panic!("{e}"),
                }
            };
            stream.set_nonblocking(false).unwrap();
            stream
                .set_read_timeout(Some(Duration::from_secs(10)))
                .unwrap();
            let mut acceptor = rustls::server::Acceptor::default();
            let mut buf = [0u8; 4096];
            loop {
                let n = stream.read(&mut buf).unwrap();
                assert!(n > 0, "the client closed before its hello");
                acceptor.read_tls(&mut &buf[..n]).unwrap();
                if let Some(accepted) = acceptor.accept().map_err(|(e, _)| e).unwrap() {
                    let hello = accepted.client_hello();
                    return hello
                        .alpn()
                        .map(|protocols| protocols.map(<[u8]>::to_vec).collect::<Vec<_>>());
                }
            }
        });
        let settings = FetchSettings {
            allow_hosts: vec!["127.0.0.1".into()],
            timeout: Duration::from_secs(5),
            ..FetchSettings::default()
        };
        let fetch = Fetch::new(&settings, Arc::new(AllowList::new(&settings.allow_hosts)));
        let url = format!("https://127.0.0.1:{port}/");
        let result = fetch.client.get(url).send().await;
        assert!(result.is_err(), "no TLS server answered");
        assert_eq!(
            offered.join().unwrap(),
            Some(vec![b"http/1.1".to_vec()]),
            "the protocols offered"
        );
    }
}
