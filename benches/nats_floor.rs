//! The NATS floor of the cluster benchmark (`benches/cluster.sh`): what a NATS server spends per
//! message on the least a durable work queue does — publish with an acknowledgement, pull,
//! acknowledge — and with the two state writes a cluster node adds per message (create the
//! message's entry when it is taken, update it at the end). No Mailroom in the loop: this
//! program is the client, the shell script reads the server's CPU time.
//!
//! Usage: `nats_floor NATS_URL SECONDS CONCURRENCY queue|state` → prints `messages N rate R`.

use std::sync::atomic::{AtomicBool, AtomicU64, Ordering::Relaxed};
use std::sync::Arc;
use std::time::{Duration, Instant};

use async_nats::jetstream::{self, consumer, kv, stream};
use futures_util::StreamExt;

#[tokio::main(flavor = "current_thread")]
async fn main() -> Result<(), Box<dyn std::error::Error>> {
    let args: Vec<String> = std::env::args().collect();
    let (url, secs, conc, mode) = match &args[..] {
        [_, url, secs, conc, mode] => (url, secs.parse()?, conc.parse()?, mode.as_str()),
        _ => return Err("usage: nats_floor NATS_URL SECONDS CONCURRENCY queue|state".into()),
    };
    let secs: u64 = secs;
    let conc: usize = conc;
    let state = mode == "state";
    let client = async_nats::connect(url.as_str()).await?;
    let js = jetstream::new(client);
    let name = format!("floor_{mode}");
    let _ = js.delete_stream(&name).await;
    let s = js
        .create_stream(stream::Config {
            name: name.clone(),
            subjects: vec![format!("{name}.>")],
            retention: stream::RetentionPolicy::WorkQueue,
            storage: stream::StorageType::File,
            ..Default::default()
        })
        .await?;
    let c: consumer::PullConsumer = s
        .create_consumer(consumer::pull::Config {
            durable_name: Some("floor".into()),
            ack_policy: consumer::AckPolicy::Explicit,
            ..Default::default()
        })
        .await?;
    let bucket = format!("{name}_state");
    let _ = js.delete_key_value(&bucket).await;
    let kv = js
        .create_key_value(kv::Config {
            bucket,
            history: 1,
            storage: stream::StorageType::File,
            ..Default::default()
        })
        .await?;
    let stop = Arc::new(AtomicBool::new(false));
    let done = Arc::new(AtomicU64::new(0));
    // The worker: pull, (write state twice,) acknowledge; up to `conc` at once.
    let worker = {
        let (stop, done) = (stop.clone(), done.clone());
        tokio::spawn(async move {
            let mut msgs = c.messages().await.expect("pull");
            let slots = Arc::new(tokio::sync::Semaphore::new(conc));
            while let Some(Ok(m)) = msgs.next().await {
                if stop.load(Relaxed) {
                    break;
                }
                let permit = slots.clone().acquire_owned().await.expect("open");
                let (kv, done) = (kv.clone(), done.clone());
                tokio::spawn(async move {
                    if state {
                        let key = m.subject.rsplit('.').next().unwrap_or("x").to_owned();
                        if let Ok(rev) = kv.create(&key, "running".into()).await {
                            let _ = kv.update(&key, "completed".into(), rev).await;
                        }
                    }
                    let _ = m.ack().await;
                    done.fetch_add(1, Relaxed);
                    drop(permit);
                });
            }
        })
    };
    // The publishers: `conc` of them, each waiting for its acknowledgement before the next.
    let n = Arc::new(AtomicU64::new(0));
    let started = Instant::now();
    let mut publishers = Vec::new();
    for _ in 0..conc {
        let (js, stop, n, name) = (js.clone(), stop.clone(), n.clone(), name.clone());
        publishers.push(tokio::spawn(async move {
            while !stop.load(Relaxed) {
                let i = n.fetch_add(1, Relaxed);
                let publish = jetstream::message::PublishMessage::build()
                    .payload(r#"{"kind":"echo","payload":{"hello":"world","n":42}}"#.into())
                    .message_id(format!("m{i}"));
                if let Ok(ack) = js.send_publish(format!("{name}.m{i}"), publish).await {
                    let _ = ack.await;
                }
            }
        }));
    }
    tokio::time::sleep(Duration::from_secs(secs)).await;
    let counted = done.load(Relaxed);
    let elapsed = started.elapsed().as_secs_f64();
    stop.store(true, Relaxed);
    for p in publishers {
        let _ = p.await;
    }
    worker.abort();
    println!("messages {counted} rate {:.0}", counted as f64 / elapsed);
    Ok(())
}
