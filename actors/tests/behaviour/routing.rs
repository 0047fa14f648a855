use std::sync::Arc;
use std::time::Duration;

use mailroom_actors::storage::{Receipt, Record, RecordKind, Settle};
use mailroom_actors::{
    Message, MessageId, Processor, Rejected, RouteSettings, Source, Status, Storage, StorageError,
};
use serde_json::json;

use super::common::{builder, settings, settled};

#[actix_rt::test]
async fn each_kind_reaches_its_processor_and_returns_its_result() {
    let d = builder(settings())
        .builtin_routes()
        .route("slow", RouteSettings::new("sleep"))
        .build()
        .unwrap();
    let echo = d
        .send(Message::new("echo", json!({"a": [1, 2]})))
        .await
        .unwrap();
    assert_eq!(echo.status, Status::Completed);
    assert_eq!(echo.result, Some(json!({"a": [1, 2]})));
    assert_eq!(echo.attempts, 1);
    assert_eq!(echo.source, Source::Library);

    let slow = d
        .send(Message::new("slow", json!({"ms": 5})))
        .await
        .unwrap();
    assert_eq!(slow.result, Some(json!({"slept_ms": 5})));
    assert_eq!(slow.kind.as_str(), "slow");

    let primes = d
        .send(Message::new("primes", json!({"limit": 10000})))
        .await
        .unwrap();
    assert_eq!(primes.result, Some(json!({"count": 1229})));

    let hash = d
        .send(Message::new("hash", json!({"data": "abc", "rounds": 1})))
        .await
        .unwrap();
    assert_eq!(
        hash.result,
        Some(json!({"sha256": "ba7816bf8f01cfea414140de5dae2223b00361a396177a9cb410ff61f20015ad"}))
    );
    let stats = settled(&d).await;
    assert_eq!(stats.kind("echo").unwrap().completed, 1);
    assert_eq!(stats.kind("slow").unwrap().completed, 1);
}

#[actix_rt::test]
async fn unknown_kind_is_rejected_and_handed_back() {
    let d = builder(settings()).builtin_routes().build().unwrap();
    let err = d
        .submit(Message::new("nope", json!({"keep": "me"})))
        .unwrap_err();
    assert!(matches!(err, Rejected::NoRoute(_)), "{err:?}");
    assert_eq!(err.reason(), "no_route");
    assert_eq!(err.to_string(), "no route for kind \"nope\"");
    let back = err.into_message();
    assert_eq!(back.kind(), "nope");
    assert_eq!(back.payload(), &json!({"keep": "me"}));
    assert_eq!(d.stats().rejected_no_route, 1);
    assert!(d.stats().kinds.iter().all(|k| k.accepted == 0));
}

#[actix_rt::test]
async fn invalid_payloads_are_rejected_before_acceptance() {
    let d = builder(settings()).builtin_routes().build().unwrap();
    for (kind, payload) in [
        ("sleep", json!({"ms": 3_600_001})),
        ("sleep", json!({"ms": "ten"})),
        ("primes", json!({"limit": 10_000_001})),
        ("hash", json!({"data": "x", "rounds": 0})),
        ("fetch", json!({"url": "not a url"})),
        (
            "fetch",
            json!({"url": "http://example.com", "timeout_ms": 0}),
        ),
    ] {
        let err = d.submit(Message::new(kind, payload.clone())).unwrap_err();
        let Rejected::Invalid { reason, message } = err else {
            panic!("{kind} {payload} should be invalid");
        };
        assert!(
            reason.starts_with(&format!("invalid payload for {kind}: ")),
            "{reason}"
        );
        assert_eq!(message.payload(), &payload);
    }
    let err = d
        .submit(Message::new("echo", json!(1)).delay(Duration::from_secs(2 * 86_400)))
        .unwrap_err();
    assert!(matches!(err, Rejected::Invalid { .. }), "{err:?}");
    let stats = d.stats();
    assert_eq!(stats.kind("sleep").unwrap().rejected.invalid, 2);
    assert_eq!(stats.kinds.iter().map(|k| k.accepted).sum::<u64>(), 0);
}

#[actix_rt::test]
async fn a_processor_can_dispatch_and_await_another_message() {
    let add_42 = Processor::from_fn("add_42", |_job, p| async move {
        Ok(json!(p.as_i64().unwrap_or(0) + 42))
    });
    let hello = Processor::from_fn("hello", |job, p| async move {
        let inner = job
            .submitter()
            .send(Message::new("add_42", p))
            .await
            .map_err(|e| mailroom_actors::ProcessError::new(e.to_string()))?;
        Ok(json!({"inner": inner.result, "inner_id": inner.id.to_string()}))
    });
    let d = builder(settings())
        .processor(add_42)
        .processor(hello)
        .route("add_42", RouteSettings::new("add_42"))
        .route("hello", RouteSettings::new("hello"))
        .build()
        .unwrap();
    let out = d.send(Message::new("hello", json!(23))).await.unwrap();
    assert_eq!(out.result.as_ref().unwrap()["inner"], json!(65));
    let stats = settled(&d).await;
    assert_eq!(stats.kind("add_42").unwrap().completed, 1);
}

#[actix_rt::test]
async fn a_repeated_idempotency_key_returns_the_first_message() {
    let d = builder(settings()).builtin_routes().build().unwrap();
    let first = d
        .submit(Message::new("sleep", json!({"ms": 20})).key("k1"))
        .unwrap();
    let again = d
        .submit(Message::new("sleep", json!({"ms": 20})).key("k1"))
        .unwrap();
    assert_eq!(first, again);
    let other = d
        .submit(Message::new("sleep", json!({"ms": 1})).key("k2"))
        .unwrap();
    assert_ne!(first, other);
    let waited = d
        .send(Message::new("sleep", json!({"ms": 20})).key("k1"))
        .await
        .unwrap();
    assert_eq!(waited.id, first);
    assert_eq!(waited.status, Status::Completed);
    let stats = settled(&d).await;
    assert_eq!(stats.kind("sleep").unwrap().accepted, 2);
}

/// A durable storage whose records become durable, or fail, only when the test settles them;
/// its flush, like the journal's barrier, cannot tell that an earlier record failed.
#[derive(Default)]
struct HeldRecords(std::sync::Mutex<Vec<(RecordKind, MessageId, Settle)>>);

impl Storage for HeldRecords {
    fn is_durable(&self) -> bool {
        true
    }
    fn append(&self, record: &Record) -> Receipt {
        let (receipt, settle) = Receipt::pending();
        self.0
            .lock()
            .unwrap()
            .push((record.kind(), record.id(), settle));
        receipt
    }
    fn load(&self) -> Result<Vec<Record>, StorageError> {
        Ok(Vec::new())
    }
    fn flush(&self) -> Receipt {
        Receipt::ready(Ok(()))
    }
}

impl HeldRecords {
    /// Waits (with a deadline) for an `Accepted` record not yet settled, and returns its id.
    async fn accepted(&self) -> MessageId {
        let deadline = std::time::Instant::now() + Duration::from_secs(30);
        loop {
            let found = (self.0.lock().unwrap().iter())
                .find(|(kind, ..)| *kind == RecordKind::Accepted)
                .map(|(_, id, _)| *id);
            if let Some(id) = found {
                return id;
            }
            assert!(std::time::Instant::now() < deadline, "no record came");
            actix_rt::time::sleep(Duration::from_millis(2)).await;
        }
    }

    /// Settles the `Accepted` record of `id`.
    fn settle(&self, id: MessageId, result: Result<(), StorageError>) {
        let mut held = self.0.lock().unwrap();
        let at = held
            .iter()
            .position(|(kind, of, _)| *kind == RecordKind::Accepted && *of == id)
            .expect("the record is held");
        held.remove(at).2.settle(result);
    }
}

/// A repeated key is answered only once the first message's record is durable, and refused
/// when that record could not be written, however the storage's flush answers: the duplicate
/// waits for the first message's own record.
#[actix_rt::test]
async fn a_repeated_key_waits_for_the_first_record_and_is_refused_with_it() {
    let storage = Arc::new(HeldRecords::default());
    let d = mailroom_actors::Dispatcher::builder(settings())
        .storage(storage.clone())
        .builtin_routes()
        .build()
        .unwrap();
    let accept = |key: &'static str| {
        let d = d.clone();
        actix_rt::spawn(async move {
            d.accept(Message::new("sleep", json!({"ms": 1})).key(key))
                .await
        })
    };
    for (key, written) in [("lost", false), ("kept", true)] {
        let first = accept(key);
        let id = storage.accepted().await;
        let again = accept(key);
        for _ in 0..50 {
            actix_rt::task::yield_now().await;
        }
        assert!(
            !again.is_finished(),
            "{key}: answered before the first record was durable"
        );
        let result = if written {
            Ok(())
        } else {
            Err(StorageError::Io(Arc::new(std::io::Error::other(
                "disk full",
            ))))
        };
        storage.settle(id, result);
        // Each ends within a deadline (a hang fails the test rather than stalling it).
        let ended = |task| actix_rt::time::timeout(Duration::from_secs(30), task);
        let first = ended(first).await.expect("the first ended").unwrap();
        let again = ended(again).await.expect("the duplicate ended").unwrap();
        if written {
            assert_eq!(first.unwrap(), id);
            assert_eq!(again.unwrap(), id);
        } else {
            for r in [first, again] {
                assert!(matches!(r, Err(Rejected::Storage { .. })), "{key}: {r:?}");
            }
        }
    }
}

#[actix_rt::test]
async fn building_refuses_bad_routes() {
    let err = builder(settings())
        .route("x", RouteSettings::new("missing"))
        .build()
        .unwrap_err();
    assert!(
        err.to_string().contains("names processor \"missing\""),
        "{err}"
    );
    let err = builder(settings())
        .route("Bad Kind", RouteSettings::new("echo"))
        .build()
        .unwrap_err();
    assert!(err.to_string().contains("invalid kind"), "{err}");
    let err = builder(settings())
        .route("a", RouteSettings::new("echo"))
        .route("a", RouteSettings::new("sleep"))
        .build()
        .unwrap_err();
    assert_eq!(err.to_string(), "route \"a\" is defined twice");
}

#[test]
fn building_outside_a_system_is_an_error_not_a_panic() {
    let err = builder(settings()).build().unwrap_err();
    assert_eq!(err, mailroom_actors::BuildError::NoSystem);
}
