//! The built-in processors, as the README's "Built-in kinds" table defines them: `echo`, `sleep` and `chaos`
//! (async), `primes` and `hash` (CPU). `fetch` lives in [`super::fetch`].
//!
//! Every built-in validates its payload at admission (shape and ranges), so a bad payload is a
//! rejection, never a failed message. `primes` and `hash` are reference workloads for benchmarks:
//! their definitions must not change. Both check their cancel token, so a timeout stops them.

use std::time::Duration;

use serde::Deserialize;
use serde_json::{json, Value};
use sha2::{Digest, Sha256};

use super::{Job, ProcessError, Processor};
use crate::envelope::ErrorClass;

/// Largest `sleep.ms`.
pub const MAX_SLEEP_MS: u64 = 3_600_000;
/// Largest `primes.limit`.
pub const MAX_PRIMES_LIMIT: u64 = 10_000_000;
/// Largest `hash.rounds`.
pub const MAX_HASH_ROUNDS: u64 = 10_000_000;

/// Parses a payload into `T`, with serde's message as the error.
pub(crate) fn parse<T: for<'de> Deserialize<'de>>(payload: &Value) -> Result<T, String> {
    T::deserialize(payload).map_err(|e| e.to_string())
}

/// JSON Schema of an object with exactly these `properties`, `required` ones among them.
pub(crate) fn object(properties: Value, required: &[&str]) -> Value {
    json!({"type": "object", "properties": properties, "required": required,
           "additionalProperties": false})
}

/// JSON Schema of an integer from `lo` to `hi`.
pub(crate) fn int(lo: u64, hi: u64) -> Value {
    json!({"type": "integer", "minimum": lo, "maximum": hi})
}

fn in_range(name: &str, v: u64, lo: u64, hi: u64) -> Result<(), String> {
    if (lo..=hi).contains(&v) {
        Ok(())
    } else {
        Err(format!("{name} must be between {lo} and {hi}, got {v}"))
    }
}

/// `echo`: the payload is the result.
pub fn echo() -> Processor {
    Processor::from_fn("echo", |_job, payload| async move { Ok(payload) })
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct SleepArgs {
    #[serde(deserialize_with = "crate::source::whole")]
    ms: u64,
}

/// `sleep {"ms": n}` → `{"slept_ms": n}`: a timer, never a blocked thread (one thread keeps the
/// deadlines of every sleep, and ends each within about a tenth of a millisecond: see `timer`).
/// Pure: with a journal it begins while its record is on its way to disk.
pub fn sleep() -> Processor {
    Processor::from_fn("sleep", |_job, payload| async move {
        let args: SleepArgs = parse(&payload).map_err(ProcessError::new)?;
        crate::timer::sleep(Duration::from_millis(args.ms)).await;
        Ok(json!({ "slept_ms": args.ms }))
    })
    .validate(|p| {
        let a: SleepArgs = parse(p)?;
        in_range("ms", a.ms, 0, MAX_SLEEP_MS)
    })
    .schema(object(json!({"ms": int(0, MAX_SLEEP_MS)}), &["ms"]))
    .pure()
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct PrimesArgs {
    #[serde(deserialize_with = "crate::source::whole")]
    limit: u64,
}

/// Counts primes ≤ `limit` by naive trial division (on purpose: a fixed unit of CPU work),
/// checking `job` every 1024 candidates.
#[doc(hidden)] // for the benchmarks' baseline server (benches/bare_echo.rs)
pub fn count_primes(limit: u64, job: Option<&Job>) -> Result<u64, ProcessError> {
    let mut count = 0;
    for n in 2..=limit {
        if n % 1024 == 0 {
            if let Some(job) = job {
                job.check()?;
            }
        }
        let mut d = 2;
        let mut prime = true;
        while d * d <= n {
            if n % d == 0 {
                prime = false;
                break;
            }
            d += 1;
        }
        count += prime as u64;
    }
    Ok(count)
}

/// `primes {"limit": n}` → `{"count": c}` (CPU). Pure: with a journal it begins while its
/// record is on its way to disk.
pub fn primes() -> Processor {
    Processor::cpu_fn("primes", |job, payload| {
        let args: PrimesArgs = parse(&payload).map_err(ProcessError::new)?;
        Ok(json!({ "count": count_primes(args.limit, Some(job))? }))
    })
    .validate(|p| {
        let a: PrimesArgs = parse(p)?;
        in_range("limit", a.limit, 0, MAX_PRIMES_LIMIT)
    })
    .schema(object(
        json!({"limit": int(0, MAX_PRIMES_LIMIT)}),
        &["limit"],
    ))
    .pure()
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct HashArgs {
    data: String,
    #[serde(deserialize_with = "crate::source::whole")]
    rounds: u64,
}

/// sha256 of `data`'s UTF-8 bytes, then `rounds - 1` more rounds over the raw 32-byte digest,
/// as lowercase hex; checks `job` every 4096 rounds.
#[doc(hidden)] // for the benchmarks' baseline server (benches/bare_echo.rs)
pub fn hash_rounds(data: &str, rounds: u64, job: Option<&Job>) -> Result<String, ProcessError> {
    let mut digest = Sha256::digest(data.as_bytes());
    for r in 1..rounds {
        if r % 4096 == 0 {
            if let Some(job) = job {
                job.check()?;
            }
        }
        digest = Sha256::digest(digest);
    }
    Ok(digest.iter().map(|b| format!("{b:02x}")).collect())
}

/// `hash {"data": s, "rounds": r}` → `{"sha256": hex}` (CPU). Pure, as `primes`.
pub fn hash() -> Processor {
    Processor::cpu_fn("hash", |job, payload| {
        let args: HashArgs = parse(&payload).map_err(ProcessError::new)?;
        Ok(json!({ "sha256": hash_rounds(&args.data, args.rounds, Some(job))? }))
    })
    .validate(|p| {
        let a: HashArgs = parse(p)?;
        in_range("rounds", a.rounds, 1, MAX_HASH_ROUNDS)
    })
    .schema(object(
        json!({"data": {"type": "string"}, "rounds": int(1, MAX_HASH_ROUNDS)}),
        &["data", "rounds"],
    ))
    .pure()
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields, rename_all = "lowercase")]
enum ChaosMode {
    Echo,
    Error,
    Panic,
    Sleep,
}

/// Other fields are allowed: `echo` mode echoes the whole payload.
#[derive(Deserialize)]
struct ChaosArgs {
    mode: ChaosMode,
    #[serde(default)]
    message: Option<String>,
    #[serde(default, deserialize_with = "crate::source::whole_ms")]
    ms: Option<u64>,
}

/// `chaos {"mode": "echo"|"error"|"panic"|"sleep", "message"?, "ms"?}`: for demos and fault
/// tests. Echoes the payload, fails with `message`, panics with `message`, or sleeps `ms`.
pub fn chaos() -> Processor {
    Processor::from_fn("chaos", |_job, payload| async move {
        let args: ChaosArgs = parse(&payload).map_err(ProcessError::new)?;
        let message = args.message.unwrap_or_else(|| "chaos".to_owned());
        match args.mode {
            ChaosMode::Echo => Ok(payload),
            ChaosMode::Error => Err(ProcessError::with_class(ErrorClass::Error, message)),
            ChaosMode::Panic => panic!("{message}"),
            ChaosMode::Sleep => {
                let ms = args.ms.unwrap_or(0);
                crate::timer::sleep(Duration::from_millis(ms)).await;
                Ok(json!({ "slept_ms": ms }))
            }
        }
    })
    .validate(|p| {
        let a: ChaosArgs = parse(p)?;
        in_range("ms", a.ms.unwrap_or(0), 0, MAX_SLEEP_MS)
    })
    .schema(json!({
        "type": "object",
        "properties": {
            "mode": {"type": "string", "enum": ["echo", "error", "panic", "sleep"]},
            "message": {"type": ["string", "null"]},
            "ms": {"type": ["integer", "null"], "minimum": 0, "maximum": MAX_SLEEP_MS},
        },
        "required": ["mode"],
    }))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reference_workloads_match_their_definitions() {
        assert_eq!(count_primes(10_000, None).unwrap(), 1229);
        assert_eq!(count_primes(1, None).unwrap(), 0);
        assert_eq!(count_primes(2, None).unwrap(), 1);
        assert_eq!(
            hash_rounds("abc", 1, None).unwrap(),
            "ba7816bf8f01cfea414140de5dae2223b00361a396177a9cb410ff61f20015ad"
        );
        // Two rounds: sha256 over the raw 32-byte digest of "abc".
        let raw = Sha256::digest(b"abc");
        let twice: String = Sha256::digest(raw)
            .iter()
            .map(|b| format!("{b:02x}"))
            .collect();
        assert_eq!(hash_rounds("abc", 2, None).unwrap(), twice);
    }

    #[test]
    fn validators_refuse_bad_shapes_and_ranges() {
        let check = |p: &Processor, v: Value| (p.validate.as_ref().unwrap())(&v);
        assert!(check(&sleep(), json!({"ms": 5})).is_ok());
        assert!(check(&sleep(), json!({"ms": 3_600_001})).is_err());
        assert!(check(&sleep(), json!({"ms": -1})).is_err());
        assert!(check(&sleep(), json!({"ms": "5"})).is_err());
        assert!(check(&sleep(), json!({})).is_err());
        assert!(check(&primes(), json!({"limit": 10_000_001})).is_err());
        assert!(check(&hash(), json!({"data": "x", "rounds": 0})).is_err());
        assert!(check(&hash(), json!({"data": 1, "rounds": 1})).is_err());
        assert!(check(&chaos(), json!({"mode": "boom"})).is_err());
        assert!(check(&chaos(), json!({"mode": "panic", "message": "x"})).is_ok());
    }
}
