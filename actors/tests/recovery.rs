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

#[test]
fn an_accept_abandoned_while_its_record_is_written_still_runs() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().to_owned();
    in_system(async move || {
        let d = dispatcher(&path);
        // The caller gives up at once: its future is admitted on its first poll, then dropped
        // while it waits for the disk.
        let gave_up = futures_util::FutureExt::now_or_never(
            d.accept(Message::new("echo", json!("abandoned"))),
        );
        assert!(gave_up.is_none(), "dropped before its record was on disk");
        let end = Instant::now() + Duration::from_secs(10);
        loop {
            let s = d.stats();
            let echo = s.kind("echo").unwrap();
            if echo.completed == 1 && s.in_flight() == 0 {
                break; // handed on by the guard and run; its place given back
            }
            assert!(Instant::now() < end, "the message was left behind: {s:?}");
            actix_rt::time::sleep(Duration::from_millis(2)).await;
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
