//! Event sources: actors that turn outside events into submitted messages. Each one submits
//! through the [`Dispatcher`](crate::Dispatcher), so admission control, validation and the ledger
//! apply to every source alike. The HTTP source lives in the server crate (it needs actix-web);
//! [`Submission`], the JSON object a client sends, is shared by HTTP and TCP.

pub mod tcp;
pub mod timer;

use std::time::Duration;

use serde::Deserialize;
use serde_json::Value;

use crate::envelope::{ClientId, Message, Source};

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
    #[serde(default, deserialize_with = "whole_ms")]
    #[cfg_attr(feature = "openapi", schema(value_type = Option<u64>, minimum = 0))]
    pub delay_ms: Option<u64>,
    /// The message's own run timeout, in milliseconds.
    #[serde(default, deserialize_with = "whole_ms")]
    #[cfg_attr(feature = "openapi", schema(value_type = Option<u64>, minimum = 0))]
    pub timeout_ms: Option<u64>,
    /// Idempotency key.
    #[serde(default)]
    pub key: Option<String>,
}

/// For `#[serde(deserialize_with)]`: a count (of milliseconds, rounds, …) written as any JSON
/// number with an integral value from 0 to 2^64-1 (`757`, `757.0`, `7.57e2`), as JSON Schema's
/// `integer` allows; `null` is none.
pub(crate) fn whole_ms<'de, D: serde::Deserializer<'de>>(d: D) -> Result<Option<u64>, D::Error> {
    use serde::de::Error;
    let Some(n) = Option::<serde_json::Number>::deserialize(d)? else {
        return Ok(None);
    };
    integral(&n).map(Some).ok_or_else(|| {
        D::Error::custom(format_args!(
            "expected a whole number of milliseconds from 0 to 18446744073709551615, got {}",
            crate::source::truncated(n.as_str(), 64)
        ))
    })
}

/// The value of a JSON number with an integral value from 0 to 2^64-1, written any way.
fn integral(n: &serde_json::Number) -> Option<u64> {
    if let Some(v) = n.as_u64() {
        return Some(v);
    }
    match n.as_f64() {
        Some(f) if f.fract() == 0.0 && (0.0..18_446_744_073_709_551_616.0).contains(&f) => {
            Some(f as u64)
        }
        _ => None,
    }
}

/// [`whole_ms`] for a required count.
pub(crate) fn whole<'de, D: serde::Deserializer<'de>>(d: D) -> Result<u64, D::Error> {
    whole_ms(d)?.ok_or_else(|| serde::de::Error::custom("expected a whole number, got null"))
}

impl Submission {
    /// Reads a submission from a value [`parse_json`] returned, as `serde_json::from_value`
    /// does (the same result, the same errors), but without serde's generic walk for a
    /// well-formed object: the HTTP and TCP sources call it for every message. The payload is
    /// kept exactly as parsed, so its numbers stay as they were sent; serde's walk differs
    /// there, rewriting some numbers (an integer `-0` as `0`, some decimals such as
    /// `-0.000000008` in exponent form). (A value built by hand may differ in one more: an object whose first key is serde_json's private number marker, which
    /// `parse_json` never returns, is a number to serde and an object here.)
    pub fn from_value(v: Value) -> Result<Submission, serde_json::Error> {
        let well_formed = v.as_object().is_some_and(|m| {
            m.get("kind").is_some_and(Value::is_string)
                && m.iter().all(|(k, v)| match k.as_str() {
                    "kind" | "payload" => true,
                    "delay_ms" | "timeout_ms" => match v {
                        Value::Null => true,
                        Value::Number(n) => integral(n).is_some(),
                        _ => false,
                    },
                    "key" => v.is_string() || v.is_null(),
                    _ => false,
                })
        });
        let Value::Object(map) = v else {
            return serde_json::from_value(v);
        };
        if !well_formed {
            return serde_json::from_value(Value::Object(map));
        }
        let mut s = Submission {
            kind: String::new(),
            payload: Value::Null,
            delay_ms: None,
            timeout_ms: None,
            key: None,
        };
        let ms = |v: &Value| v.as_number().and_then(integral);
        for (k, v) in map {
            match (k.as_str(), v) {
                ("kind", Value::String(kind)) => s.kind = kind,
                ("payload", v) => s.payload = v,
                ("delay_ms", v) => s.delay_ms = ms(&v),
                ("timeout_ms", v) => s.timeout_ms = ms(&v),
                ("key", Value::String(key)) => s.key = Some(key),
                _ => {} // `"key": null`: checked above
            }
        }
        Ok(s)
    }

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
/// comparison stops neither at the first differing byte nor at the first matching token, so its
/// time says nothing about how much of a token was right, or which one.
pub fn token_accepted(tokens: &[String], given: &str) -> bool {
    tokens.iter().fold(false, |found, t| {
        let (t, g) = (t.as_bytes(), given.as_bytes());
        let same =
            t.len() == g.len() && t.iter().zip(g).fold(0u8, |acc, (x, y)| acc | (x ^ y)) == 0;
        found | same
    })
}

/// Why [`parse_json`] refused a text.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum JsonError {
    /// Nested deeper than the limit (a scalar is a level).
    #[error("JSON nested deeper than {0} levels")]
    TooDeep(usize),
    /// Not JSON, or an object that names a key twice.
    #[error("malformed JSON: {0}")]
    Malformed(String),
}

/// Parses client JSON strictly, as HTTP bodies and TCP lines are read: malformed JSON, nesting
/// deeper than `max_depth` (a scalar is depth 1) and an object that names a key twice are refused
/// (serde_json alone would keep the last of two equal keys). Numbers are kept exactly as written
/// (serde_json's `arbitrary_precision`). One pass: the checks are made while the value is built.
pub fn parse_json(bytes: &[u8], max_depth: usize) -> Result<Value, JsonError> {
    let too_deep = std::cell::Cell::new(false);
    let mut de = serde_json::Deserializer::from_slice(bytes);
    let strict = Strict {
        depth: 1,
        max_depth,
        too_deep: &too_deep,
    };
    serde::de::DeserializeSeed::deserialize(strict, &mut de)
        .and_then(|v| de.end().map(|()| v))
        .map_err(|e| match too_deep.get() {
            true => JsonError::TooDeep(max_depth),
            false => JsonError::Malformed(e.to_string()),
        })
}

/// Builds a [`Value`] as serde_json's own `Deserialize` does, refusing duplicate keys and
/// nesting past the limit (and saying which in `too_deep`).
#[derive(Clone, Copy)]
struct Strict<'a> {
    depth: usize,
    max_depth: usize,
    too_deep: &'a std::cell::Cell<bool>,
}

impl Strict<'_> {
    fn inner(self) -> Self {
        Strict {
            depth: self.depth + 1,
            ..self
        }
    }
}

impl<'de> serde::de::DeserializeSeed<'de> for Strict<'_> {
    type Value = Value;
    fn deserialize<D: serde::Deserializer<'de>>(self, d: D) -> Result<Value, D::Error> {
        if self.depth > self.max_depth {
            self.too_deep.set(true);
            return Err(serde::de::Error::custom(format_args!(
                "JSON nested deeper than {} levels",
                self.max_depth
            )));
        }
        d.deserialize_any(self)
    }
}

impl<'de> serde::de::Visitor<'de> for Strict<'_> {
    type Value = Value;

    fn expecting(&self, f: &mut std::fmt::Formatter) -> std::fmt::Result {
        f.write_str("JSON")
    }
    fn visit_bool<E>(self, b: bool) -> Result<Value, E> {
        Ok(Value::Bool(b))
    }
    fn visit_i64<E>(self, n: i64) -> Result<Value, E> {
        Ok(Value::Number(n.into()))
    }
    fn visit_u64<E>(self, n: u64) -> Result<Value, E> {
        Ok(Value::Number(n.into()))
    }
    fn visit_f64<E>(self, n: f64) -> Result<Value, E> {
        Ok(serde_json::Number::from_f64(n).map_or(Value::Null, Value::Number))
    }
    fn visit_str<E>(self, s: &str) -> Result<Value, E> {
        Ok(Value::String(s.to_owned()))
    }
    fn visit_string<E>(self, s: String) -> Result<Value, E> {
        Ok(Value::String(s))
    }
    fn visit_unit<E>(self) -> Result<Value, E> {
        Ok(Value::Null)
    }
    fn visit_seq<A: serde::de::SeqAccess<'de>>(self, mut seq: A) -> Result<Value, A::Error> {
        let inner = self.inner();
        let mut items = Vec::new();
        while let Some(item) = seq.next_element_seed(inner)? {
            items.push(item);
        }
        Ok(Value::Array(items))
    }
    fn visit_map<A: serde::de::MapAccess<'de>>(self, mut map: A) -> Result<Value, A::Error> {
        use serde_json::map::Entry;
        let inner = self.inner();
        let mut object = serde_json::Map::new();
        while let Some(key) = map.next_key::<std::borrow::Cow<'de, str>>()? {
            if object.is_empty() && key == "$serde_json::private::Number" {
                // With `arbitrary_precision` a number is handed over as a one-entry map of its
                // digits, read as serde_json's own `Value` reads them.
                let digits: String = map.next_value()?;
                return digits
                    .parse()
                    .map(Value::Number)
                    .map_err(serde::de::Error::custom);
            }
            // Refused before its value is read, so the error points at the key.
            match object.entry(key.into_owned()) {
                Entry::Occupied(e) => {
                    return Err(serde::de::Error::custom(format_args!(
                        "duplicate key {:?}",
                        truncated(e.key(), 64)
                    )));
                }
                Entry::Vacant(e) => {
                    e.insert(map.next_value_seed(inner)?);
                }
            }
        }
        Ok(Value::Object(object))
    }
}

/// `text` cut to at most `max` bytes (on a character boundary), with "…" when it was cut: for
/// echoing client input in error messages without echoing all of it.
pub fn truncated(text: &str, max: usize) -> std::borrow::Cow<'_, str> {
    if text.len() <= max {
        return text.into();
    }
    let mut end = max;
    while !text.is_char_boundary(end) {
        end -= 1;
    }
    format!("{}…", &text[..end]).into()
}

/// How much of a client's input an error message echoes: at most this many bytes of each
/// quoted part (see [`cut_quoted`]).
pub const ECHO_MAX: usize = 64;

/// The longest stretch of an error message outside quotes that [`cut_quoted`] leaves whole:
/// longer than any message of the service's own, so only client input that broke the quoting
/// (a field's name with a backtick in it) is cut by it.
pub const PROSE_MAX: usize = 256;

/// The longest error message [`cut_quoted`] returns whole: an input cut into many short quoted
/// parts still echoes no more than this (the 4 KiB that processor errors are cut to).
pub const MESSAGE_MAX: usize = 4096;

/// `text` with every quoted part (between backticks or double quotes, as serde's messages and
/// `{:?}` quote what they echo) longer than `max` bytes cut to `max` with "…", and every
/// stretch outside quotes longer than [`PROSE_MAX`] cut to it (see [`truncated`]): an error
/// message made from client input (an unknown field's name, a mistyped value) echoes at most
/// `max` bytes of each quoted part of it, and at most [`PROSE_MAX`] of input whose own quote
/// marks end a part early; the whole is cut to [`MESSAGE_MAX`].
pub fn cut_quoted(text: &str, max: usize) -> std::borrow::Cow<'_, str> {
    /// Where the part opened by `quote` ends in `rest`: its closing quote, past backslash
    /// escapes inside double quotes; `None` if it runs to the end.
    fn close(rest: &str, quote: u8) -> Option<usize> {
        let bytes = rest.as_bytes();
        let mut i = 0;
        while i < bytes.len() {
            match bytes[i] {
                b'\\' if quote == b'"' => i += 2,
                b if b == quote => return Some(i),
                _ => i += 1,
            }
        }
        None
    }
    /// Appends `part` cut to `max`; true if it was cut.
    fn push(out: &mut String, part: &str, max: usize) -> bool {
        if part.len() > max {
            out.push_str(&truncated(part, max));
            true
        } else {
            out.push_str(part);
            false
        }
    }
    let mut out = String::new();
    let mut rest = text;
    let mut cut = false;
    while let Some(open) = rest.find(['`', '"']) {
        let quote = rest.as_bytes()[open];
        cut |= push(&mut out, &rest[..open], PROSE_MAX);
        out.push(char::from(quote));
        let after = &rest[open + 1..];
        let end = close(after, quote).unwrap_or(after.len());
        cut |= push(&mut out, &after[..end], max);
        if end == after.len() {
            rest = "";
            break;
        }
        out.push(char::from(quote));
        rest = &after[end + 1..];
    }
    cut |= push(&mut out, rest, PROSE_MAX);
    if out.len() > MESSAGE_MAX {
        return truncated(&out, MESSAGE_MAX).into_owned().into();
    }
    if !cut {
        return text.into();
    }
    out.into()
}

/// Who a submission comes from, for per-client limits: the token it showed (by its place in
/// `tokens`, never its text) when tokens are set, else its address — for IPv6 its /64, which one
/// host commonly holds whole. HTTP and TCP name clients alike, so one client has one share over
/// both.
pub fn client_id(
    tokens: &[String],
    token: Option<&str>,
    peer: Option<std::net::IpAddr>,
) -> Option<ClientId> {
    if let Some(given) = token {
        if let Some(i) = tokens
            .iter()
            .position(|t| token_accepted(std::slice::from_ref(t), given))
        {
            return Some(ClientId::Token(i));
        }
    }
    peer.map(ClientId::address)
}

/// Depth of the deepest nesting in a JSON value (a scalar is depth 1): what [`parse_json`]
/// limits, for checking it.
#[cfg(any(test, feature = "fuzzing"))]
pub(crate) fn json_depth(v: &Value) -> usize {
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
    fn from_value_reads_as_serde_does() {
        for text in [
            r#"{"kind": "echo"}"#,
            r#"{"kind": "echo", "payload": {"a": [1, 2.5, "x"]}, "delay_ms": 7.57e2, "timeout_ms": null, "key": "k"}"#,
            r#"{"payload": null, "kind": "e", "key": null, "timeout_ms": 12}"#,
            r#"{"kind": "echo", "delay_ms": 757.5}"#,
            r#"{"kind": "echo", "delay_ms": -1}"#,
            r#"{"kind": "echo", "delay_ms": "5"}"#,
            r#"{"kind": "echo", "timeout_ms": 1e30}"#,
            r#"{"kind": "echo", "key": 5}"#,
            r#"{"kind": 7}"#,
            r#"{"kind": null}"#,
            r#"{"payload": 1}"#,
            r#"{"kind": "x", "delay": 5}"#,
            r#"{}"#,
            r#"[]"#,
            r#""echo""#,
            r#"null"#,
        ] {
            let v = parse_json(text.as_bytes(), 8).unwrap();
            assert_eq!(
                Submission::from_value(v.clone()).map_err(|e| e.to_string()),
                serde_json::from_value::<Submission>(v).map_err(|e| e.to_string()),
                "{text}"
            );
        }
        // The payload is kept as sent, numbers and all; serde's walk alone would rewrite the
        // integer -0 and the small decimal (the fuzz target allows that difference).
        let text = br#"{"kind": "echo", "payload": [-0, -0.0, 2.50, -0.000000008493488147]}"#;
        let s = Submission::from_value(parse_json(text, 8).unwrap()).unwrap();
        assert_eq!(
            s.payload.to_string(),
            "[-0,-0.0,2.50,-0.000000008493488147]"
        );
    }

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
        let whole = |v: &str| {
            parse_json(format!(r#"{{"kind": "k", "delay_ms": {v}}}"#).as_bytes(), 4)
                .map_err(|e| e.to_string())
                .and_then(|j| serde_json::from_value::<Submission>(j).map_err(|e| e.to_string()))
                .map(|s| s.delay_ms)
        };
        assert_eq!(whole("757"), Ok(Some(757)));
        assert_eq!(whole("757.0"), Ok(Some(757)));
        assert_eq!(whole("7.57e2"), Ok(Some(757)));
        assert_eq!(whole("null"), Ok(None));
        assert!(whole("757.5").is_err());
        assert!(whole("-1").is_err());
        assert!(whole("1e30").is_err());
    }

    #[test]
    fn strict_parsing_refuses_duplicate_keys_and_deep_nesting_and_keeps_numbers() {
        let dup = parse_json(br#"{"kind": "echo", "payload": {"a": 1, "a": 2}}"#, 64);
        assert!(dup.unwrap_err().to_string().contains("duplicate key \"a\""));
        assert!(parse_json(br#"{"a": 1, "b": {"a": 2}}"#, 64).is_ok());
        // Many keys, in descending order: linear, and a late duplicate is still found.
        let keys: Vec<String> = (0..100_000).rev().map(|i| format!("\"k{i}\":0")).collect();
        let body = format!("{{{}}}", keys.join(","));
        let started = std::time::Instant::now();
        assert!(parse_json(body.as_bytes(), 4).is_ok());
        let dup = format!("{{{},\"k5\":1}}", keys.join(","));
        assert!(parse_json(dup.as_bytes(), 4)
            .unwrap_err()
            .to_string()
            .contains("duplicate key \"k5\""));
        println!("100,000 keys checked twice in {:?}", started.elapsed());
        // A scalar is a level too, as in `json_depth`.
        assert!(parse_json(b"[[[1]]]", 4).is_ok());
        assert!(parse_json(b"[[[1]]]", 3)
            .unwrap_err()
            .to_string()
            .contains("nested deeper than 3"));
        assert!(parse_json(b"{} x", 4)
            .unwrap_err()
            .to_string()
            .starts_with("malformed JSON"));
        // Digits are kept as sent; an exponent is written with its sign (1e308 → 1e+308).
        let text = r#"[0.9857104942746979,18446744073709551616,1e+308,-0.0,123456789012345678901234567890]"#;
        let v = parse_json(text.as_bytes(), 4).unwrap();
        assert_eq!(v.to_string(), text);
        assert_eq!(parse_json(b"1e308", 1).unwrap().to_string(), "1e+308");
        // The value built is serde_json's own, keys in their order.
        let text = br#"{"z": [1, -2.5e-3, true, null, {"\u00e9\n": "x\"y", "a": []}], "a": {}, "m": "\ud83d\ude00"}"#;
        let ours = parse_json(text, 8).unwrap();
        let theirs: Value = serde_json::from_slice(text).unwrap();
        assert_eq!(ours, theirs);
        assert_eq!(ours.to_string(), theirs.to_string());
        assert_eq!(truncated("abcdef", 3), "abc…");
        assert_eq!(truncated("ééé", 3), "é…");
        // Each quoted part of a message is cut on its own; the rest stays whole.
        let long = "x".repeat(100);
        let message =
            format!("unknown field `{long}`, expected `kind` at \"{long}\\\"y\" or \"é{long}");
        let cut = cut_quoted(&message, 4);
        assert_eq!(
            cut,
            "unknown field `xxxx…`, expected `kind` at \"xxxx…\" or \"éxx…"
        );
        assert!(matches!(
            cut_quoted("a `short` one", 64),
            std::borrow::Cow::Borrowed(_)
        ));
        // A quote mark in the input ends its part early: what follows it is cut as prose.
        let broken = format!("unknown field `a`{long}{long}{long}`, expected `kind`");
        assert_eq!(
            cut_quoted(&broken, 64),
            format!(
                "unknown field `a`{}…`, expected `kind`",
                "x".repeat(PROSE_MAX)
            )
        );
        // Many short parts: the whole is cut.
        let many = "`x`".repeat(10_000);
        assert_eq!(cut_quoted(&many, 64).len(), MESSAGE_MAX + "…".len());
    }

    #[test]
    fn clients_are_named_by_token_else_address() {
        let tokens = ["a".to_owned(), "b".to_owned()];
        let ip = |s: &str| Some(s.parse().unwrap());
        let name = |t, p| client_id(&tokens, t, p).map(|c| c.to_string());
        assert_eq!(name(Some("b"), ip("10.0.0.1")).unwrap(), "token#1");
        assert_eq!(name(None, ip("10.0.0.1")).unwrap(), "10.0.0.1");
        assert_eq!(
            name(None, ip("2001:db8:1:2:3:4:5:6")).unwrap(),
            "2001:db8:1:2::/64"
        );
        assert_eq!(
            client_id(&[], None, ip("2001:db8:1:2:ffff::1")),
            client_id(&[], None, ip("2001:db8:1:2:3:4:5:6")),
            "one /64, one client"
        );
        assert_eq!(name(None, ip("::ffff:10.0.0.1")).unwrap(), "10.0.0.1");
        assert_eq!(client_id(&[], None, None), None);
    }

    #[test]
    fn depth_counts_nesting() {
        assert_eq!(json_depth(&json!(1)), 1);
        assert_eq!(json_depth(&json!({"a": [1, {"b": []}]})), 4);
    }
}
