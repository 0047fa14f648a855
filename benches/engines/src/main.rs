//! Durable appends per second: Mailroom's journal log, fjall and redb, same records, same
//! writers, same disk, rounds interleaved; prints the medians and the bytes each left on disk.

use std::path::Path;
use std::sync::Arc;
use std::time::Instant;

use mailroom_actors::journal::{Fsync, Log};

const WRITERS: usize = 64;
const RECORDS: usize = 20_000;
const ROUNDS: usize = 3;

fn record(i: usize) -> Vec<u8> {
    let mut r = format!("{{\"accepted\":{{\"id\":\"{i:026}\",\"kind\":\"echo\",\"payload\":").into_bytes();
    r.resize(195, b'x');
    r.extend_from_slice(b"\"}}}");
    r
}

fn bytes_in(dir: &Path) -> u64 {
    let mut total = 0;
    for e in std::fs::read_dir(dir).unwrap() {
        let e = e.unwrap();
        let m = e.metadata().unwrap();
        total += if m.is_dir() { bytes_in(&e.path()) } else { m.len() };
    }
    total
}

/// Runs `write(writer, i)` for RECORDS records over WRITERS threads; returns records/s.
fn run(write: impl Fn(usize) + Sync) -> f64 {
    let t = Instant::now();
    std::thread::scope(|s| {
        for w in 0..WRITERS {
            let write = &write;
            s.spawn(move || {
                for i in (w..RECORDS).step_by(WRITERS) {
                    write(i);
                }
            });
        }
    });
    RECORDS as f64 / t.elapsed().as_secs_f64()
}

fn mailroom(dir: &Path) -> f64 {
    let (log, _) = Log::open(dir, Fsync::Always).unwrap();
    run(|i| log.append(record(i)).blocking_recv().unwrap().unwrap())
}

fn fjall(dir: &Path) -> f64 {
    let keyspace = fjall::Config::new(dir).open().unwrap();
    let part = keyspace
        .open_partition("records", fjall::PartitionCreateOptions::default())
        .unwrap();
    run(|i| {
        part.insert((i as u64).to_be_bytes(), record(i)).unwrap();
        keyspace.persist(fjall::PersistMode::SyncData).unwrap();
    })
}

const TABLE: redb::TableDefinition<u64, &[u8]> = redb::TableDefinition::new("records");

fn redb(dir: &Path) -> f64 {
    let db = Arc::new(redb::Database::create(dir.join("db.redb")).unwrap());
    run(|i| {
        let tx = db.begin_write().unwrap();
        {
            let mut t = tx.open_table(TABLE).unwrap();
            t.insert(i as u64, record(i).as_slice()).unwrap();
        }
        tx.commit().unwrap();
    })
}

fn main() {
    let engines: [(&str, fn(&Path) -> f64); 3] =
        [("mailroom journal", mailroom), ("fjall 2", fjall), ("redb 2", redb)];
    let mut rates = vec![Vec::new(); engines.len()];
    let mut disk = vec![0u64; engines.len()];
    for round in 0..ROUNDS {
        for (n, (name, f)) in engines.iter().enumerate() {
            let dir = tempfile::tempdir_in(".").unwrap();
            let r = f(dir.path());
            disk[n] = bytes_in(dir.path());
            println!("round {round}: {name}: {r:.0} records/s");
            rates[n].push(r);
        }
    }
    println!("\n{WRITERS} writers, {RECORDS} records of 200 bytes, each fsynced before its writer goes on; medians of {ROUNDS} interleaved rounds\n");
    println!("| engine | durable records/s | bytes on disk per record |\n|---|---:|---:|");
    for (n, (name, _)) in engines.iter().enumerate() {
        let mut v = rates[n].clone();
        v.sort_by(|a, b| a.total_cmp(b));
        println!("| {name} | {:.0} | {:.0} |", v[v.len() / 2], disk[n] as f64 / RECORDS as f64);
    }
}
