//! custom_kinds — an application that registers its own processors for several kinds of
//! message and embeds the library without HTTP.
//!
//! The seed's "a program must be able to handle diverse kinds of messages": an order event
//! (async, calls another kind), a thumbnail job (CPU, on the thread pool), a reminder email
//! (delayed), and a heartbeat from a timer source. Each kind has its own route, bound and
//! timeout; the dispatcher is the only thing the application talks to.
//!
//! Run: `cargo run --example custom_kinds`

use std::time::Duration;

use mailroom_actors::{
    Dispatcher, Every, Message, ProcessError, Processor, RouteSettings, Schedule, Settings,
};
use serde_json::{json, Value};

fn processors() -> Vec<Processor> {
    let order = Processor::from_fn("order.created", |job, order: Value| async move {
        let total: f64 = order["items"]
            .as_array()
            .ok_or_else(|| ProcessError::new("items must be a list"))?
            .iter()
            .map(|i| i["price"].as_f64().unwrap_or(0.0) * i["qty"].as_f64().unwrap_or(1.0))
            .sum();
        // Follow-up work is just another message: a reminder email in 200 ms.
        let reminder = job
            .submitter()
            .call_later(
                Duration::from_millis(200),
                Message::new(
                    "email.send",
                    json!({"to": order["email"], "subject": "Thanks!"}),
                ),
            )
            .map_err(|e| ProcessError::new(e.to_string()))?;
        Ok(json!({"order": order["id"], "total": total, "reminder": reminder.to_string()}))
    })
    .validate(|p| {
        p["items"]
            .is_array()
            .then_some(())
            .ok_or_else(|| "items must be a list".into())
    });

    let thumbnail = Processor::cpu_fn("image.thumbnail", |job, img: Value| {
        // Stand-in for image work: downsample a generated "image" by averaging 4x4 blocks.
        let w = img["width"].as_u64().unwrap_or(256) as usize;
        let pixels: Vec<u32> = (0..w * w).map(|i| (i * 2654435761) as u32 >> 24).collect();
        let mut out = Vec::with_capacity(w * w / 16);
        for by in (0..w).step_by(4) {
            job.check()?; // stops promptly if the run timeout elapses
            for bx in (0..w).step_by(4) {
                let sum: u32 = (0..16).map(|k| pixels[(by + k / 4) * w + bx + k % 4]).sum();
                out.push(sum / 16);
            }
        }
        Ok(json!({"width": w / 4, "checksum": out.iter().map(|&p| p as u64).sum::<u64>()}))
    });

    let email = Processor::from_fn("email.send", |_job, mail: Value| async move {
        actix_rt::time::sleep(Duration::from_millis(20)).await; // talking to an SMTP server
        Ok(json!({"sent_to": mail["to"]}))
    });
    let heartbeat = Processor::from_fn("heartbeat", |_job, p: Value| async move { Ok(p) });
    vec![order, thumbnail, email, heartbeat]
}

#[actix::main]
async fn main() {
    let mut b = Dispatcher::builder(Settings::default());
    for p in processors() {
        b = b.processor(p);
    }
    let d = b
        .route(
            "order.created",
            RouteSettings::new("order.created").capacity(100),
        )
        .route(
            "image.thumbnail",
            RouteSettings::new("image.thumbnail").timeout(Duration::from_secs(5)),
        )
        .route(
            "email.send",
            RouteSettings::new("email.send").retries(2, Duration::from_millis(50)),
        )
        .route("heartbeat", RouteSettings::new("heartbeat"))
        .build()
        .unwrap();
    d.schedule(Schedule {
        kind: "heartbeat".into(),
        payload: json!({"alive": true}),
        when: Every::Interval(Duration::from_millis(100)),
    })
    .unwrap();

    let outcomes = d
        .gather(vec![
            Message::new(
                "order.created",
                json!({"id": 17, "email": "ada@example.com",
                "items": [{"price": 9.5, "qty": 2}, {"price": 1.0}]}),
            ),
            Message::new("image.thumbnail", json!({"width": 512})),
            Message::new("order.created", json!({"id": 18, "items": "oops"})),
            Message::new("newsletter", json!({})),
        ])
        .await;
    for (i, o) in outcomes.iter().enumerate() {
        match o {
            Ok(o) => println!(
                "#{i} {:<16} {:<9} {}",
                o.kind.as_str(),
                o.status.as_str(),
                o.result.as_ref().unwrap()
            ),
            Err(r) => println!("#{i} rejected: {r}"),
        }
    }
    // The reminder was scheduled by the order processor; wait for it.
    let reminder = outcomes[0].as_ref().unwrap().result.as_ref().unwrap()["reminder"]
        .as_str()
        .unwrap()
        .parse()
        .unwrap();
    let sent = d.wait(reminder, Duration::from_secs(5)).await.unwrap();
    println!(
        "reminder {}: {}",
        sent.status.as_str(),
        sent.result.as_ref().unwrap()
    );
    actix_rt::time::sleep(Duration::from_millis(150)).await;

    println!("\nledger by kind:");
    for k in d.stats().kinds {
        println!(
            "  {:<16} accepted {:>2}  completed {:>2}  rejected {:>2}  in flight {}",
            k.kind.as_str(),
            k.accepted,
            k.completed,
            k.rejected.invalid + k.rejected.full,
            k.in_flight
        );
    }
    let report = d.shutdown(Duration::from_secs(2)).await;
    println!(
        "shut down: {} drained, {} unfinished",
        report.drained,
        report.unfinished.len()
    );
}
