//! select_loop — the TCP source as the select/epoll server of the seed notes.
//!
//! The seed's server loops over `select.select(...)` to serve many sockets from one thread. Here
//! the TCP source accepts connections as actors (one per connection) and every line of JSON is a
//! message; a client sends lines and reads one answer per line, in the order messages finish.
//!
//! Run: `cargo run --example select_loop`

use std::time::Duration;

use mailroom_actors::{Dispatcher, Settings, TcpSettings, TcpSource};
use serde_json::{json, Value};
use tokio::io::{AsyncBufReadExt, AsyncWriteExt, BufReader};

#[actix::main]
async fn main() {
    let d = Dispatcher::builder(Settings::default())
        .builtin_routes()
        .build()
        .unwrap();
    let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let addr = listener.local_addr().unwrap();
    TcpSource::start(d.clone(), listener, TcpSettings::default()).unwrap();
    println!("TCP source listening on {addr}");

    let stream = tokio::net::TcpStream::connect(addr).await.unwrap();
    let (read, mut write) = stream.into_split();
    let lines = [
        json!({"ref": "slow", "kind": "sleep", "payload": {"ms": 150}}),
        json!({"ref": "fast", "kind": "echo", "payload": "hello"}),
        json!({"ref": "cpu", "kind": "primes", "payload": {"limit": 10000}}),
        json!({"ref": "bad", "kind": "nope"}),
    ];
    for l in &lines {
        println!("-> {l}");
        write.write_all(format!("{l}\n").as_bytes()).await.unwrap();
    }
    write.write_all(b"this line is not JSON\n").await.unwrap();
    println!("-> this line is not JSON");
    write.shutdown().await.unwrap(); // done sending; answers still come back

    let mut reader = BufReader::new(read).lines();
    let mut n = 0;
    while let Ok(Ok(Some(line))) =
        actix_rt::time::timeout(Duration::from_secs(5), reader.next_line()).await
    {
        let v: Value = serde_json::from_str(&line).unwrap();
        let what = match v["status"].as_str() {
            Some("rejected") => format!("rejected {}: {}", v["code"], v["error"]["message"]),
            Some(s) => format!("{s}: {}", v["result"]),
            None => line.clone(),
        };
        println!("<- ref {:<7} {what}", v["ref"].to_string());
        n += 1;
    }
    println!("{n} answers for 5 lines; the slow sleep answered last although it was sent first");
    assert_eq!(n, 5);
    d.shutdown(Duration::from_secs(1)).await;
}
