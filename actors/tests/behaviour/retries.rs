use std::sync::atomic::{AtomicBool, AtomicU32, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use mailroom_actors::storage::{Compacted, Keep, Receipt, Record, RecordKind, Settle};
use mailroom_actors::{
    ErrorClass, Message, MessageId, ProcessError, Processor, ReplayError, RouteSettings, Source,
    Status, Storage, StorageError,
};
use serde_json::json;

use super::common::{builder, settings, settled};

#[actix_rt::test]
async fn retries_back_off_then_the_message_is_dead_and_can_be_replayed() {
    // Fails the first three calls, then succeeds: the first message dies after 3 attempts, its
    // replay succeeds on the 4th call.
    let calls = Arc::new(AtomicU32::new(0));
    let c = calls.clone();
    let flaky = Processor::from_fn("flaky", move |_job, p| {
        let n = c.fetch_add(1, Ordering::SeqCst) + 1;
        async move {
            if n <= 3 {
                Err(ProcessError::new(format!("failure {n}")))
            } else {
                Ok(json!({"call": n, "payload": p}))
            }
        }
    });
    let d = builder(settings())
        .processor(flaky)
        .route(
            "flaky",
            RouteSettings::new("flaky").retries(2, Duration::from_millis(40)),
        )
        .build()
        .unwrap();
    let started = Instant::now();
    let out = d
        .send(Message::new("flaky", json!({"order": 7})))
        .await
        .unwrap();
    let took = started.elapsed();
    assert_eq!(out.status, Status::Dead);
    assert_eq!(out.attempts, 3);
    assert_eq!(out.error.as_ref().unwrap().message, "failure 3");
    // Backoffs of 40 ms then 80 ms, each jittered within [half, full]: at least 20 + 40 ms.
    assert!(took >= Duration::from_millis(60), "took {took:?}");

    let dead = d.dead_letters(None, 100);
    assert_eq!(dead.len(), 1);
    let dl = &dead[0];
    assert_eq!(dl.id, out.id);
    assert_eq!(dl.payload, json!({"order": 7}));
    assert_eq!(dl.attempts, 3);
    let messages: Vec<_> = dl.errors.iter().map(|e| e.message.as_str()).collect();
    assert_eq!(messages, ["failure 1", "failure 2", "failure 3"]);
    assert!(dl.errors.iter().all(|e| e.class == ErrorClass::Error));

    let replay = d.replay(out.id).await.unwrap();
    assert_ne!(replay, out.id);
    let replayed = d.wait(replay, Duration::from_secs(5)).await.unwrap();
    assert_eq!(replayed.status, Status::Completed);
    assert_eq!(replayed.replay_of, Some(out.id));
    assert_eq!(replayed.source, Source::Replay);
    assert_eq!(
        replayed.result,
        Some(json!({"call": 4, "payload": {"order": 7}}))
    );
    assert!(
        d.dead_letters(None, 100).is_empty(),
        "a replayed dead letter leaves the list"
    );
    assert!(matches!(
        d.replay(out.id).await,
        Err(ReplayError::Unknown(_))
    ));

    let stats = settled(&d).await;
    let k = stats.kind("flaky").unwrap();
    assert_eq!((k.accepted, k.dead, k.completed, k.retried), (2, 1, 1, 2));
}

#[actix_rt::test]
async fn a_panic_is_retried_like_an_error() {
    let d = builder(settings())
        .route(
            "chaos",
            RouteSettings::new("chaos").retries(1, Duration::from_millis(1)),
        )
        .build()
        .unwrap();
    let out = d
        .send(Message::new(
            "chaos",
            json!({"mode": "panic", "message": "again"}),
        ))
        .await
        .unwrap();
    assert_eq!(out.status, Status::Dead);
    assert_eq!(out.attempts, 2);
    assert_eq!(d.dead_letters(None, 100)[0].errors.len(), 2);
    assert_eq!(
        d.dead_letters(None, 100)[0].errors[1].class,
        ErrorClass::Panic
    );
    let stats = settled(&d).await;
    assert_eq!(stats.kind("chaos").unwrap().restarts, 2);
}

#[actix_rt::test]
async fn a_retry_waiting_for_its_backoff_can_be_cancelled_and_stops_counting_as_delayed() {
    let calls = Arc::new(AtomicU32::new(0));
    let c = calls.clone();
    let failing = Processor::from_fn("failing", move |_job, _p| {
        c.fetch_add(1, Ordering::SeqCst);
        async move { Err::<serde_json::Value, _>(ProcessError::new("not yet")) }
    });
    let d = builder(settings())
        .processor(failing)
        .route(
            "failing",
            RouteSettings::new("failing").retries(1, Duration::from_secs(60)),
        )
        .build()
        .unwrap();
    let id = d.submit(Message::new("failing", json!({}))).unwrap();
    // The first attempt fails; the retry waits a minute.
    let waiting = super::common::eventually(Duration::from_secs(10), || {
        d.status(id).is_some_and(|o| o.status == Status::Delayed)
    })
    .await;
    assert!(waiting, "{:?}", d.status(id));
    let route = |d: &mailroom_actors::Dispatcher| {
        d.routes()
            .into_iter()
            .find(|r| r.kind.as_str() == "failing")
            .unwrap()
    };
    assert_eq!(route(&d).delayed, 1);
    let out = d.cancel(id).unwrap();
    assert_eq!(out.status, Status::Cancelled);
    assert_eq!(out.attempts, 1);
    // The router lets the waiting retry go at once: nothing counts as delayed, and it never runs.
    let gone = super::common::eventually(Duration::from_secs(10), || route(&d).delayed == 0).await;
    assert!(gone, "{:?}", route(&d));
    let stats = settled(&d).await;
    let k = stats.kind("failing").unwrap();
    assert_eq!((k.accepted, k.cancelled, k.retried), (1, 1, 1));
    assert_eq!(calls.load(Ordering::SeqCst), 1);
}

/// A durable storage that writes every record at once except, while `hold` is set, `Accepted`
/// records (kept until the test settles them); its compaction asks about every dead letter's
/// record and notes the answer.
#[derive(Default)]
struct CompactedDuringReplay {
    hold: AtomicBool,
    held: Mutex<Vec<Settle>>,
    dead: Mutex<Vec<MessageId>>,
    verdicts: Mutex<Vec<(MessageId, Keep)>>,
}

impl Storage for CompactedDuringReplay {
    fn is_durable(&self) -> bool {
        true
    }
    fn append(&self, record: &Record) -> Receipt {
        if let Record::Dead(dl) = record {
            self.dead.lock().unwrap().push(dl.id);
        }
        if record.kind() == RecordKind::Accepted && self.hold.load(Ordering::SeqCst) {
            let (receipt, settle) = Receipt::pending();
            self.held.lock().unwrap().push(settle);
            return receipt;
        }
        Receipt::ready(Ok(()))
    }
    fn load(&self) -> Result<Vec<Record>, StorageError> {
        Ok(Vec::new())
    }
    fn compact(
        &self,
        keep: &mut dyn FnMut(RecordKind, MessageId, bool) -> Keep,
    ) -> Result<Compacted, StorageError> {
        let dead = self.dead.lock().unwrap().clone();
        for id in dead {
            let verdict = keep(RecordKind::Dead, id, false);
            self.verdicts.lock().unwrap().push((id, verdict));
        }
        Ok(Compacted::default())
    }
}

/// A dispatcher on a [`CompactedDuringReplay`] storage whose one message has died.
async fn one_dead_letter() -> (
    Arc<CompactedDuringReplay>,
    mailroom_actors::Dispatcher,
    Arc<mailroom_actors::Outcome>,
) {
    let storage = Arc::new(CompactedDuringReplay::default());
    let failing = Processor::from_fn("failing", |_job, _p| async move {
        Err::<serde_json::Value, _>(ProcessError::new("no"))
    });
    let d = mailroom_actors::Dispatcher::builder(settings())
        .storage(storage.clone())
        .processor(failing)
        .route(
            "failing",
            RouteSettings::new("failing").retries(1, Duration::from_millis(1)),
        )
        .build()
        .unwrap();
    let out = d.send(Message::new("failing", json!(1))).await.unwrap();
    assert_eq!(out.status, Status::Dead);
    (storage, d, out)
}

impl CompactedDuringReplay {
    /// Waits (with a deadline) until the replay's `Accepted` record is held.
    async fn replay_record(&self) {
        let deadline = Instant::now() + Duration::from_secs(30);
        while self.held.lock().unwrap().is_empty() {
            assert!(Instant::now() < deadline, "the replay's record never came");
            actix_rt::time::sleep(Duration::from_millis(2)).await;
        }
    }

    /// The answers given about `id` so far.
    fn asked(&self, id: MessageId) -> Vec<Keep> {
        (self.verdicts.lock().unwrap().iter())
            .filter(|(of, _)| *of == id)
            .map(|&(_, k)| k)
            .collect()
    }

    /// Waits (with a deadline) for the answer about `id` of a compaction that began after this
    /// call: the second one after it (the first may have asked before the call).
    async fn verdict(&self, id: MessageId) -> Keep {
        let before = self.asked(id).len();
        let deadline = Instant::now() + Duration::from_secs(30);
        loop {
            if let Some(&k) = self.asked(id).get(before + 1) {
                return k;
            }
            assert!(Instant::now() < deadline, "no compaction asked about {id}");
            actix_rt::time::sleep(Duration::from_millis(10)).await;
        }
    }
}

/// A dead letter being replayed keeps its record through a compaction until the replay is
/// durable: a crash in between leaves the dead letter, never neither. It stays listed until then,
/// and a second replay of it meanwhile is refused.
#[actix_rt::test]
async fn a_dead_letter_keeps_its_record_until_its_replay_is_durable() {
    let (storage, d, out) = one_dead_letter().await;
    assert_eq!(storage.verdict(out.id).await, Keep::AsIs);

    storage.hold.store(true, Ordering::SeqCst);
    let replay = {
        let d = d.clone();
        let id = out.id;
        actix_rt::spawn(async move { d.replay(id).await })
    };
    storage.replay_record().await;
    assert_eq!(
        storage.verdict(out.id).await,
        Keep::AsIs,
        "a compaction while the replay is not durable keeps the dead letter"
    );
    assert_eq!(d.dead_letters(None, 10).len(), 1, "still listed");
    assert!(matches!(
        d.replay(out.id).await,
        Err(ReplayError::InProgress(_))
    ));
    assert!(!replay.is_finished());

    storage.held.lock().unwrap().pop().unwrap().settle(Ok(()));
    let new = actix_rt::time::timeout(Duration::from_secs(30), replay)
        .await
        .expect("the replay ended")
        .unwrap()
        .unwrap();
    assert_ne!(new, out.id);
    assert!(d.dead_letters(None, 10).is_empty(), "removed once durable");
    assert_eq!(storage.verdict(out.id).await, Keep::Drop);
    d.shutdown(Duration::from_secs(5)).await;
}

/// A replay whose caller goes away (an HTTP client that hangs up) still ends: the dead letter is
/// removed once the replay is durable, not left marked as being replayed.
#[actix_rt::test]
async fn a_replay_goes_on_when_its_caller_goes_away() {
    let (storage, d, out) = one_dead_letter().await;

    storage.hold.store(true, Ordering::SeqCst);
    let caller = {
        let d = d.clone();
        let id = out.id;
        actix_rt::spawn(async move { d.replay(id).await })
    };
    storage.replay_record().await;
    caller.abort();
    assert!(caller.await.unwrap_err().is_cancelled());
    storage.held.lock().unwrap().pop().unwrap().settle(Ok(()));
    let deadline = Instant::now() + Duration::from_secs(30);
    while d.dead_letter(out.id).is_some() {
        assert!(
            Instant::now() < deadline,
            "the dead letter was never removed"
        );
        actix_rt::time::sleep(Duration::from_millis(2)).await;
    }
    let stats = settled(&d).await;
    let k = stats.kind("failing").unwrap();
    assert_eq!(
        (k.accepted, k.dead),
        (2, 2),
        "the replay ran (and died too)"
    );
    d.shutdown(Duration::from_secs(5)).await;
}
