use std::sync::Arc;
use std::time::{Duration, Instant};

use mailroom_actors::{
    ErrorClass, Every, Message, Processor, RouteSettings, Schedule, ScheduleError, Status,
};
use parking_lot::Mutex;
use serde_json::{json, Value};

use super::common::{builder, eventually, settings, settled};

#[actix_rt::test]
async fn delayed_messages_fire_in_order_and_not_early() {
    let seen: Arc<Mutex<Vec<(i64, Instant)>>> = Arc::default();
    let s = seen.clone();
    let record = Processor::from_fn("record", move |_job, p: Value| {
        s.lock().push((p.as_i64().unwrap(), Instant::now()));
        async move { Ok(p) }
    });
    let d = builder(settings())
        .processor(record)
        .route("rec", RouteSettings::new("record"))
        .build()
        .unwrap();
    let t0 = Instant::now();
    let delays = [120u64, 40, 80, 40, 0];
    let ids: Vec<_> = delays
        .iter()
        .enumerate()
        .map(|(i, &ms)| {
            d.call_later(Duration::from_millis(ms), Message::new("rec", json!(i)))
                .unwrap()
        })
        .collect();
    let first = d.status(ids[0]).unwrap().status;
    if t0.elapsed() < Duration::from_millis(120) {
        assert_eq!(first, Status::Delayed, "not due yet");
    }
    // Without a delay it may run at once on another thread: anything but delayed.
    assert_ne!(d.status(ids[4]).unwrap().status, Status::Delayed);
    settled(&d).await;
    let seen = seen.lock().clone();
    let order: Vec<i64> = seen.iter().map(|(i, _)| *i).collect();
    assert_eq!(
        order,
        [4, 1, 3, 2, 0],
        "by due time; equal delays keep submission order"
    );
    for (i, at) in &seen {
        let due = Duration::from_millis(delays[*i as usize]);
        assert!(
            *at - t0 >= due,
            "message {i} ran {:?} after submission, due {due:?}",
            *at - t0
        );
    }
    for (i, id) in ids.iter().enumerate() {
        let o = d.status(*id).unwrap();
        assert!(o.timings.queued_ms >= delays[i] as f64, "{o:?}");
    }
}

#[actix_rt::test]
async fn a_route_timeout_ends_a_slow_message_as_timed_out() {
    let d = builder(settings())
        .route(
            "slow",
            RouteSettings::new("sleep").timeout(Duration::from_millis(50)),
        )
        .build()
        .unwrap();
    let out = d
        .send(Message::new("slow", json!({"ms": 5_000})))
        .await
        .unwrap();
    assert_eq!(out.status, Status::TimedOut);
    let err = out.error.as_ref().unwrap();
    assert_eq!(
        (err.class, err.message.as_str()),
        (ErrorClass::Timeout, "timed out after 50 ms")
    );
    // A message's own timeout overrides the route's.
    let out = d
        .send(Message::new("slow", json!({"ms": 100})).timeout(Duration::from_millis(1000)))
        .await
        .unwrap();
    assert_eq!(out.status, Status::Completed);
    let stats = settled(&d).await;
    assert_eq!(stats.kind("slow").unwrap().timed_out, 1);
}

#[actix_rt::test]
async fn a_timeout_stops_cpu_work_and_frees_the_thread() {
    let mut s = settings();
    s.cpu.threads = 1;
    let d = builder(s)
        .route("primes", RouteSettings::new("primes"))
        .build()
        .unwrap();
    // Counting primes to 10 million by trial division takes many seconds; the timeout stops it.
    let out = d
        .send(
            Message::new("primes", json!({"limit": 10_000_000})).timeout(Duration::from_millis(50)),
        )
        .await
        .unwrap();
    assert_eq!(out.status, Status::TimedOut);
    // The only thread is free again: a small job completes, well before the big one could have.
    let started = Instant::now();
    let small = d
        .send(Message::new("primes", json!({"limit": 100})))
        .await
        .unwrap();
    assert_eq!(small.result, Some(json!({"count": 25})));
    assert!(
        started.elapsed() < Duration::from_secs(3),
        "{:?}",
        started.elapsed()
    );
}

#[actix_rt::test]
async fn schedules_run_periodically_and_once() {
    let d = builder(settings()).builtin_routes().build().unwrap();
    let every = d
        .schedule(Schedule {
            kind: "echo".into(),
            payload: json!({"tick": true}),
            when: Every::Interval(Duration::from_millis(20)),
        })
        .unwrap();
    d.schedule(Schedule {
        kind: "sleep".into(),
        payload: json!({"ms": 1}),
        when: Every::Once(Duration::from_millis(30)),
    })
    .unwrap();
    assert!(
        eventually(Duration::from_secs(5), || d
            .stats()
            .kind("echo")
            .unwrap()
            .completed
            >= 3)
        .await
    );
    every.cancel();
    assert!(
        eventually(Duration::from_secs(5), || d
            .stats()
            .kind("sleep")
            .unwrap()
            .completed
            == 1)
        .await
    );
    let ticks = d.stats().kind("echo").unwrap().accepted;
    actix_rt::time::sleep(Duration::from_millis(100)).await;
    assert_eq!(
        d.stats().kind("echo").unwrap().accepted,
        ticks,
        "cancelled schedule stopped"
    );
    assert_eq!(
        d.stats().kind("sleep").unwrap().accepted,
        1,
        "a once-schedule runs once"
    );
    assert!(d
        .schedule(Schedule {
            kind: "nope".into(),
            payload: json!(null),
            when: Every::Once(Duration::ZERO),
        })
        .is_err());
}

#[actix_rt::test]
async fn a_schedule_every_tick_of_which_would_be_rejected_is_refused_up_front() {
    let d = builder(settings()).builtin_routes().build().unwrap();
    let bad = Schedule {
        kind: "sleep".into(),
        payload: json!({"ms": "soon"}),
        when: Every::Interval(Duration::from_millis(5)),
    };
    let err = d.check_schedule(&bad).unwrap_err();
    assert!(
        matches!(&err, ScheduleError::Invalid { kind, reason }
            if kind == "sleep" && reason.starts_with("invalid payload for sleep")),
        "{err:?}"
    );
    assert_eq!(d.schedule(bad).unwrap_err(), err);
    let zero = Schedule {
        kind: "echo".into(),
        payload: json!(1),
        when: Every::Interval(Duration::ZERO),
    };
    assert_eq!(d.check_schedule(&zero), Err(ScheduleError::ZeroInterval));
    let good = Schedule {
        kind: "echo".into(),
        payload: json!(1),
        when: Every::Once(Duration::from_secs(60)),
    };
    assert_eq!(d.check_schedule(&good), Ok(()));
    actix_rt::time::sleep(Duration::from_millis(30)).await;
    assert_eq!(
        d.stats().kind("sleep").unwrap().accepted,
        0,
        "nothing was started or submitted"
    );
    assert_eq!(d.stats().kind("echo").unwrap().accepted, 0);
}
