//! A dispatcher built again on the journal of one that stopped: what was left runs, under its
//! own id, with its attempts counted; finished outcomes, keys and dead letters come back.

use std::sync::Arc;
use std::time::{Duration, Instant};

use mailroom_actors::{
    Dispatcher, Journal, JournalSettings, Message, MessageId, RouteSettings, Settings, Status,
};
use serde_json::json;

/// Opens the journal in `dir`, once the previous System's threads have let go of it (shortly
/// after it stops).
fn open_journal(dir: &std::path::Path) -> Journal {
    let end = Instant::now() + Duration::from_secs(10);
    loop {
        match Journal::open(dir, JournalSettings::default()) {
            Err(mailroom_actors::StorageError::InUse(_)) if Instant::now() < end => {
                std::thread::sleep(Duration::from_millis(1));
            }
            other => break other.unwrap(),
        }
    }
}

fn dispatcher(dir: &std::path::Path) -> Dispatcher {
    let mut s = Settings::default();
    s.cpu.threads = 1;
    let journal = open_journal(dir);
    Dispatcher::builder(s)
        .builtin_routes()
        .route(
            "chaos",
            RouteSettings::new("chaos").retries(1, Duration::from_millis(1)),
        )
        .storage(Arc::new(journal))
        .build()
        .unwrap()
}

/// Runs `f` in an actix System of its own, which is stopped (and its dispatcher dropped, its
/// journal closed) when `f` returns.
fn in_system<T: Send + 'static>(f: impl AsyncFnOnce() -> T + Send + 'static) -> T {
    std::thread::spawn(move || {
        let sys = actix::System::new();
        let out = sys.block_on(f());
        System::current().stop();
        let _ = sys.run();
        out
    })
    .join()
    .unwrap()
}

use actix::System;

#[test]
fn a_dispatcher_rebuilt_on_its_journal_runs_what_was_left() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().to_owned();
    let (done, keyed, dead, delayed, sleeping) = in_system({
        let path = path.clone();
        async move || {
            let d = dispatcher(&path);
            let done = d.send(Message::new("echo", json!("done"))).await.unwrap();
            let keyed = d
                .accept(Message::new("echo", json!(1)).key("order-1"))
                .await
                .unwrap();
            let dead = d
                .send(Message::new("chaos", json!({"mode": "error"})))
                .await
                .unwrap();
            assert_eq!(dead.status, Status::Dead);
            let delayed = d
                .accept(Message::new("echo", json!("later")).delay(Duration::from_millis(1500)))
                .await
                .unwrap();
            let sleeping = d
                .accept(Message::new("sleep", json!({"ms": 100})))
                .await
                .unwrap();
            // Wait until it runs, then stop before it can finish: it is interrupted.
            let end = Instant::now() + Duration::from_secs(10);
            while d.status(sleeping).unwrap().status != Status::Running {
                assert!(Instant::now() < end);
                actix_rt::time::sleep(Duration::from_millis(2)).await;
            }
            let report = d.shutdown(Duration::ZERO).await;
            assert!(report.kept.contains(&delayed), "{report:?}");
            assert!(report.unfinished.is_empty());
            (done.id, keyed, dead.id, delayed, sleeping)
        }
    });
    let accepted_delayed_at = delayed.timestamp_ms();
    in_system(async move || {
        let d = dispatcher(&path);
        let o = d.status(done).expect("a finished outcome survives");
        assert_eq!(
            (o.status, o.result.clone()),
            (Status::Completed, Some(json!("done")))
        );
        let again = d
            .accept(Message::new("echo", json!(2)).key("order-1"))
            .await
            .unwrap();
        assert_eq!(
            again, keyed,
            "a key names its first message after a restart"
        );
        assert_eq!(
            d.dead_letter(dead).expect("a dead letter survives").id,
            dead
        );
        assert_eq!(d.status(delayed).unwrap().status, Status::Delayed);
        let o = d.wait(sleeping, Duration::from_secs(10)).await.unwrap();
        assert_eq!(o.status, Status::Completed, "{o:?}");
        assert_eq!(o.attempts, 2, "interrupted, then run again: {o:?}");
        let o = d.wait(delayed, Duration::from_secs(10)).await.unwrap();
        assert_eq!(o.status, Status::Completed);
        assert!(
            o.accepted_at_ms + o.timings.total_ms as u64 >= accepted_delayed_at + 1500,
            "ran at its due time: {o:?}"
        );
        let replayed: MessageId = d.replay(dead).await.unwrap();
        assert!(d.dead_letter(dead).is_none());
        d.shutdown(Duration::from_secs(1)).await;
        replayed
    });
}

/// This process's threads (`/proc/self/status`; 0 where there is none).
fn threads() -> usize {
    std::fs::read_to_string("/proc/self/status")
        .ok()
        .and_then(|s| {
            s.lines()
                .find_map(|l| l.strip_prefix("Threads:"))
                .and_then(|n| n.trim().parse().ok())
        })
        .unwrap_or(0)
}

#[test]
fn an_accept_abandoned_while_its_record_is_written_still_runs() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().to_owned();
    in_system(async move || {
        // Its record is held (not durable) until the test settles it, so the caller gives up
        // while it waits for the disk however fast the disk is.
        let storage = held_journal(&path);
        let d = Dispatcher::builder(Settings::default())
            .builtin_routes()
            .processor(mailroom_actors::Processor::from_fn(
                "plain",
                |_job, payload| async move { Ok(payload) },
            ))
            .route("plain", RouteSettings::new("plain"))
            .storage(storage.clone())
            .build()
            .unwrap();
        // A pure processor's messages (sleep), which begin before their record is durable, and
        // those of one that does not (plain).
        const N: usize = 100;
        for (kind, payload) in [("sleep", json!({"ms": 0})), ("plain", json!("abandoned"))] {
            let before = threads();
            for _ in 0..N {
                // Admitted on its first poll, then dropped while its record is held.
                let gave_up = futures_util::FutureExt::now_or_never(
                    d.accept(Message::new(kind, payload.clone())),
                );
                assert!(
                    gave_up.is_none(),
                    "{kind}: answered before its record was durable"
                );
            }
            // Callers that gave up hold no thread each while their records are written.
            let started = threads().saturating_sub(before);
            assert!(started < N / 10, "{kind}: {started} threads started");
            // The records become durable: what outlived the callers hands the messages on.
            let receipts = std::mem::take(&mut *storage.held.lock().unwrap());
            assert_eq!(receipts.len(), N, "{kind}");
            for (written, settle) in receipts {
                settle.settle(written.durable().await);
            }
            let end = Instant::now() + Duration::from_secs(10);
            loop {
                let s = d.stats();
                let k = s.kind(kind).unwrap();
                if k.completed == N as u64 && s.in_flight() == 0 {
                    break; // handed on by the guards and run; their places given back
                }
                assert!(Instant::now() < end, "{kind}: left behind: {s:?}");
                actix_rt::time::sleep(Duration::from_millis(2)).await;
            }
        }
        d.shutdown(Duration::from_secs(1)).await;
    });
}

#[test]
fn an_attempt_that_completes_at_once_writes_no_started_record_and_any_other_does() {
    use mailroom_actors::storage::{Record, RecordKind};
    use mailroom_actors::Storage;
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().to_owned();
    let (echo, sleep, chaos) = in_system({
        let path = path.clone();
        async move || {
            let d = dispatcher(&path);
            let echo = d.send(Message::new("echo", json!(1))).await.unwrap();
            assert_eq!(echo.status, Status::Completed);
            let sleep = d
                .send(Message::new("sleep", json!({"ms": 1})))
                .await
                .unwrap();
            assert_eq!(sleep.status, Status::Completed);
            // Fails on its first poll, is retried once, then dies.
            let chaos = d
                .send(Message::new("chaos", json!({"mode": "error"})))
                .await
                .unwrap();
            assert_eq!((chaos.status, chaos.attempts), (Status::Dead, 2));
            d.shutdown(Duration::from_secs(1)).await;
            (echo.id, sleep.id, chaos.id)
        }
    });
    let records = open_journal(&path).load().unwrap();
    let kinds = |id: MessageId| -> Vec<(RecordKind, Option<u32>)> {
        records
            .iter()
            .filter(|r| r.id() == id)
            .map(|r| match r {
                Record::Started { attempt, .. } => (r.kind(), Some(*attempt)),
                _ => (r.kind(), None),
            })
            .collect()
    };
    use RecordKind::*;
    assert_eq!(
        kinds(echo),
        vec![(Accepted, None), (Finished, None)],
        "completed on its first poll: its Finished record says it all"
    );
    assert_eq!(
        kinds(sleep),
        vec![(Accepted, None), (Started, Some(1)), (Finished, None)]
    );
    assert_eq!(
        kinds(chaos),
        vec![
            (Accepted, None),
            (Started, Some(1)),
            (Started, Some(2)),
            (Dead, None),
            (Finished, None)
        ],
        "a failed attempt is counted"
    );
}

/// A journal whose `Accepted` records fail while `fail` is set, as on a full disk; every other
/// record is written as usual.
struct Flaky {
    journal: Journal,
    fail: std::sync::atomic::AtomicBool,
}

impl mailroom_actors::Storage for Flaky {
    fn is_durable(&self) -> bool {
        true
    }

    fn append(
        &self,
        record: &mailroom_actors::storage::Record,
    ) -> mailroom_actors::storage::Receipt {
        use mailroom_actors::storage::{Receipt, Record};
        if matches!(record, Record::Accepted(_))
            && self.fail.load(std::sync::atomic::Ordering::SeqCst)
        {
            let full = std::io::Error::other("no space left on device (simulated)");
            return Receipt::ready(Err(mailroom_actors::StorageError::Io(Arc::new(full))));
        }
        self.journal.append(record)
    }

    fn load(&self) -> Result<Vec<mailroom_actors::storage::Record>, mailroom_actors::StorageError> {
        self.journal.load()
    }

    fn flush(&self) -> mailroom_actors::storage::Receipt {
        self.journal.flush()
    }
}

/// Waits until `ok` holds; fails the test, naming `what`, if it does not within 10 s.
async fn until(what: &str, ok: &dyn Fn() -> bool) {
    let end = Instant::now() + Duration::from_secs(10);
    while !ok() {
        assert!(Instant::now() < end, "{what}");
        actix_rt::time::sleep(Duration::from_millis(1)).await;
    }
}

/// A dispatcher with one route, `tally`, run by `tally`, over `storage`.
fn tally_dispatcher(tally: mailroom_actors::Processor, storage: Arc<Held>) -> Dispatcher {
    Dispatcher::builder(Settings::default())
        .processor(tally)
        .route("tally", RouteSettings::new("tally"))
        .storage(storage)
        .build()
        .unwrap()
}

/// A [`Held`] storage over a journal opened in `path`.
fn held_journal(path: &std::path::Path) -> Arc<Held> {
    Arc::new(Held {
        journal: open_journal(path),
        held: std::sync::Mutex::new(Vec::new()),
    })
}

/// A journal whose `Accepted` records are held: written, but their receipts left pending
/// ([`Receipt::pending`](mailroom_actors::storage::Receipt::pending)) until the test settles
/// them, as a storage that learns of durability later does. (A record the test reports as
/// failed is on disk all the same: this journal is not opened again. And its `flush` does not
/// wait for held receipts: the test settles them all before anything flushes.)
struct Held {
    journal: Journal,
    held: std::sync::Mutex<
        Vec<(
            mailroom_actors::storage::Receipt,
            mailroom_actors::storage::Settle,
        )>,
    >,
}

impl mailroom_actors::Storage for Held {
    fn is_durable(&self) -> bool {
        true
    }

    fn append(
        &self,
        record: &mailroom_actors::storage::Record,
    ) -> mailroom_actors::storage::Receipt {
        use mailroom_actors::storage::{Receipt, Record};
        let written = self.journal.append(record);
        if !matches!(record, Record::Accepted(_)) {
            return written;
        }
        let (pending, settle) = Receipt::pending();
        self.held.lock().unwrap().push((written, settle));
        pending
    }

    fn load(&self) -> Result<Vec<mailroom_actors::storage::Record>, mailroom_actors::StorageError> {
        self.journal.load()
    }

    fn flush(&self) -> mailroom_actors::storage::Receipt {
        self.journal.flush()
    }
}

/// A pure processor `tally` (which counts the runs it began in `began`) behind [`Held`]: a
/// message begins while its record is still pending, and is answered only once the record is
/// settled: completed when it is durable, refused (and leaving no trace in the counters) when
/// it failed.
fn early_scenario(
    began: &'static std::sync::atomic::AtomicUsize,
    tally: mailroom_actors::Processor,
) {
    use mailroom_actors::{Rejected, StorageError};
    use std::sync::atomic::Ordering::SeqCst;
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().to_owned();
    in_system(async move || {
        let storage = held_journal(&path);
        let d = tally_dispatcher(tally, storage.clone());
        let held = || std::mem::take(&mut *storage.held.lock().unwrap());
        for (n, (payload, fails)) in [("kept", false), ("refused", true)].into_iter().enumerate() {
            let sent = actix_rt::spawn({
                let d = d.clone();
                async move { d.send(Message::new("tally", json!(payload))).await }
            });
            until("the message began while its record was held", &|| {
                began.load(SeqCst) == n + 1
            })
            .await;
            // Nothing can answer it before the test settles its record: this finds an answer
            // that does not wait for the record.
            let mut sent = sent;
            assert!(
                actix_rt::time::timeout(Duration::from_millis(100), &mut sent)
                    .await
                    .is_err(),
                "answered before its record was settled"
            );
            let receipts = held();
            assert_eq!(receipts.len(), 1);
            for (written, settle) in receipts {
                let written = written.durable().await;
                settle.settle(match fails {
                    false => written,
                    true => Err(StorageError::Io(Arc::new(std::io::Error::other(
                        "no space left on device (simulated)",
                    )))),
                });
            }
            match (fails, sent.await.unwrap()) {
                (false, Ok(done)) => assert_eq!(
                    (done.status, done.result.clone()),
                    (Status::Completed, Some(json!("kept")))
                ),
                (true, Err(Rejected::Storage { message, .. })) => {
                    assert_eq!(message.payload(), &json!("refused"))
                }
                (_, other) => panic!("{payload}: got {other:?}"),
            }
        }
        // The refused one ran, but is not counted: taken back once its worker settled it.
        until("the refused message was taken back", &|| {
            let k = d.stats().kind("tally").unwrap().clone();
            k.in_flight == 0 && k.running == 0
        })
        .await;
        let k = d.stats().kind("tally").unwrap().clone();
        assert_eq!(
            (k.accepted, k.completed, k.rejected.storage),
            (1, 1, 1),
            "{k:?}"
        );
        d.shutdown(Duration::from_secs(1)).await;
    });
}

/// The `tally` processor of [`early_scenario`]: answers its payload, counting each start in
/// `began`.
fn counting_tally(began: &'static std::sync::atomic::AtomicUsize) -> mailroom_actors::Processor {
    mailroom_actors::Processor::from_fn("tally", move |_job, payload| async move {
        began.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
        Ok(payload)
    })
}

#[test]
fn a_pure_processor_begins_while_its_record_is_pending_and_is_answered_once_it_is_settled() {
    static BEGAN: std::sync::atomic::AtomicUsize = std::sync::atomic::AtomicUsize::new(0);
    early_scenario(&BEGAN, counting_tally(&BEGAN).pure());
}

#[test]
fn a_pure_cpu_processor_begins_while_its_record_is_pending_and_is_answered_once_it_is_settled() {
    use mailroom_actors::Processor;
    use std::sync::atomic::{AtomicUsize, Ordering::SeqCst};
    static BEGAN: AtomicUsize = AtomicUsize::new(0);
    early_scenario(
        &BEGAN,
        Processor::cpu_fn("tally", |_job, payload| {
            BEGAN.fetch_add(1, SeqCst);
            Ok(payload)
        })
        .pure(),
    );
}

#[test]
fn a_message_its_processor_calls_pure_begins_while_its_record_is_pending() {
    static BEGAN: std::sync::atomic::AtomicUsize = std::sync::atomic::AtomicUsize::new(0);
    // Every payload but "write" is pure: the scenario's "kept" and "refused" begin early.
    early_scenario(&BEGAN, counting_tally(&BEGAN).pure_when(|p| p != "write"));
}

#[test]
fn a_message_its_processor_does_not_call_pure_begins_only_once_its_record_is_on_disk() {
    use mailroom_actors::Processor;
    static BEGAN: std::sync::Mutex<Vec<String>> = std::sync::Mutex::new(Vec::new());
    let began = || BEGAN.lock().unwrap().clone();
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().to_owned();
    in_system(async move || {
        let storage = held_journal(&path);
        let tally = Processor::from_fn("tally", |_job, payload| async move {
            BEGAN
                .lock()
                .unwrap()
                .push(payload.as_str().unwrap().to_owned());
            Ok(payload)
        })
        .pure_when(|p| p != "write");
        let d = tally_dispatcher(tally, storage.clone());
        let send = |payload: &'static str| {
            let d = d.clone();
            actix_rt::spawn(async move { d.send(Message::new("tally", json!(payload))).await })
        };
        // "write" is not pure: its record is written and held by the test, and it waits.
        let write = send("write");
        until("the record of \"write\"", &|| {
            storage.held.lock().unwrap().len() == 1
        })
        .await;
        // "read", sent after it, is pure: it begins while its own record is held. Had "write"
        // begun early, it would have begun first (the route's worker takes them in turn).
        let read = send("read");
        until("\"read\" to begin", &|| {
            began().contains(&"read".to_owned())
        })
        .await;
        assert_eq!(began(), ["read"]);
        let receipts = std::mem::take(&mut *storage.held.lock().unwrap());
        assert_eq!(receipts.len(), 2);
        for (written, settle) in receipts {
            let written = written.durable().await;
            settle.settle(written);
        }
        for (sent, payload) in [(write, "write"), (read, "read")] {
            let done = sent.await.unwrap().unwrap();
            assert_eq!(
                (done.status, done.result.clone()),
                (Status::Completed, Some(json!(payload)))
            );
        }
        assert_eq!(began(), ["read", "write"]);
        d.shutdown(Duration::from_secs(1)).await;
    });
}

#[test]
fn a_pure_processor_begins_before_its_record_and_a_record_that_fails_leaves_no_trace() {
    use mailroom_actors::Processor;
    use std::sync::atomic::{AtomicUsize, Ordering::SeqCst};
    static RAN: AtomicUsize = AtomicUsize::new(0);
    pure_scenario(
        &RAN,
        Processor::from_fn("tally", |_job, payload| async move {
            RAN.fetch_add(1, SeqCst);
            actix_rt::time::sleep(Duration::from_millis(20)).await;
            Ok(payload)
        })
        .pure(),
    );
}

#[test]
fn a_pure_cpu_processor_begins_before_its_record_and_a_record_that_fails_leaves_no_trace() {
    use mailroom_actors::Processor;
    use std::sync::atomic::{AtomicUsize, Ordering::SeqCst};
    static RAN: AtomicUsize = AtomicUsize::new(0);
    pure_scenario(
        &RAN,
        Processor::cpu_fn("tally", |_job, payload| {
            RAN.fetch_add(1, SeqCst);
            std::thread::sleep(Duration::from_millis(20));
            Ok(payload)
        })
        .pure(),
    );
}

/// A pure processor `tally` (which counts its runs in `RAN`) with a journal whose `Accepted`
/// writes fail at first: the refused message leaves no trace, in the counters or on disk, and
/// the next one is kept.
fn pure_scenario(
    ran_count: &'static std::sync::atomic::AtomicUsize,
    tally: mailroom_actors::Processor,
) {
    use mailroom_actors::storage::{Record, RecordKind};
    use mailroom_actors::{Rejected, Storage};
    use std::sync::atomic::{AtomicBool, Ordering::SeqCst};
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().to_owned();
    let kept = in_system({
        let path = path.clone();
        async move || {
            let storage = Arc::new(Flaky {
                journal: open_journal(&path),
                fail: AtomicBool::new(true),
            });
            assert!(tally.is_pure());
            let d = Dispatcher::builder(Settings::default())
                .processor(tally)
                .route("tally", RouteSettings::new("tally"))
                .storage(storage.clone())
                .build()
                .unwrap();
            // Its record cannot be written: the caller is refused, with the message back.
            match d.send(Message::new("tally", json!("refused"))).await {
                Err(Rejected::Storage { message, .. }) => {
                    assert_eq!(message.payload(), &json!("refused"))
                }
                other => panic!("expected a storage refusal, got {other:?}"),
            }
            // Whether it began before its record failed is a matter of timing here (the
            // simulated failure is immediate); either way it leaves nothing: no outcome, no
            // place taken, no completion counted.
            let end = Instant::now() + Duration::from_secs(10);
            loop {
                let s = d.stats();
                let k = s.kind("tally").unwrap();
                if k.in_flight == 0 && k.running == 0 {
                    assert_eq!((k.accepted, k.completed, k.cancelled), (0, 0, 0), "{k:?}");
                    assert_eq!(k.rejected.storage, 1, "{k:?}");
                    break;
                }
                assert!(
                    Instant::now() < end,
                    "the refused message was not taken back: {s:?}"
                );
                actix_rt::time::sleep(Duration::from_millis(2)).await;
            }
            // The disk comes back: the next one is answered once its record is durable.
            assert!(ran_count.load(SeqCst) <= 1);
            let ran = ran_count.load(SeqCst);
            storage.fail.store(false, SeqCst);
            let done = d.send(Message::new("tally", json!("kept"))).await.unwrap();
            assert_eq!(
                (done.status, done.result.clone()),
                (Status::Completed, Some(json!("kept")))
            );
            assert_eq!(ran_count.load(SeqCst), ran + 1);
            let k = d.stats().kind("tally").unwrap().clone();
            assert_eq!(
                (k.accepted, k.completed, k.rejected.storage),
                (1, 1, 1),
                "{k:?}"
            );
            d.shutdown(Duration::from_secs(1)).await;
            done.id
        }
    });
    // On disk: the kept message's records only. Nothing of the refused one (its Started or
    // Finished record would bring back an outcome or an attempt for a message never accepted).
    let records = open_journal(&path).load().unwrap();
    let kinds: Vec<(RecordKind, bool)> =
        records.iter().map(|r| (r.kind(), r.id() == kept)).collect();
    assert_eq!(
        kinds,
        vec![
            (RecordKind::Accepted, true),
            (RecordKind::Started, true),
            (RecordKind::Finished, true)
        ],
        "{records:?}"
    );
    assert!(records.iter().all(|r| !matches!(r, Record::Finished { outcome, .. } if outcome.result == Some(json!("refused")))));
}

/// The nice values of this process's threads named `name` (`/proc/self/task`).
#[cfg(target_os = "linux")]
fn nice_of(name: &str) -> Vec<i32> {
    let Ok(tasks) = std::fs::read_dir("/proc/self/task") else {
        return Vec::new();
    };
    tasks
        .flatten()
        .filter(|t| std::fs::read_to_string(t.path().join("comm")).is_ok_and(|c| c.trim() == name))
        .filter_map(|t| {
            let stat = std::fs::read_to_string(t.path().join("stat")).ok()?;
            // Field 19 is the nice value; the fields after the name (`) `) begin at field 3.
            stat.rsplit_once(") ")?.1.split(' ').nth(16)?.parse().ok()
        })
        .collect()
}

/// The process's nice value (its main thread's: `/proc/self/stat`).
#[cfg(target_os = "linux")]
fn nice_of_process() -> i32 {
    let stat = std::fs::read_to_string("/proc/self/stat").unwrap();
    stat.rsplit_once(") ")
        .unwrap()
        .1
        .split(' ')
        .nth(16)
        .unwrap()
        .parse()
        .unwrap()
}

#[cfg(target_os = "linux")]
#[test]
fn compaction_runs_at_a_lower_cpu_priority_than_the_threads_that_answer() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().to_owned();
    in_system(async move || {
        let d = dispatcher(&path);
        d.send(Message::new("echo", json!(1))).await.unwrap();
        // The process's own nice value (the test may run under `nice`): the journal's writer
        // keeps it, the compactor runs 10 above it (at most 19). Names are cut to the 15
        // bytes Linux keeps.
        let own = nice_of_process();
        let writers = nice_of("mailroom-journa");
        assert!(
            !writers.is_empty() && writers.iter().all(|&n| n == own),
            "the journal's writer keeps the process's priority {own}: {writers:?}"
        );
        let end = Instant::now() + Duration::from_secs(30);
        while !nice_of("mailroom-compac").contains(&(own + 10).min(19)) {
            assert!(
                Instant::now() < end,
                "compactor nice values: {:?}, the process's {own}",
                nice_of("mailroom-compac")
            );
            actix_rt::time::sleep(Duration::from_millis(10)).await;
        }
    });
}
