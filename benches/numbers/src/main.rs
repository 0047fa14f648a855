//! Parse + print of three submission bodies, best of 5 rounds of 200,000 (see Cargo.toml).
use std::time::Instant;
fn main() {
    let bodies = [
        r#"{"kind":"echo","payload":{"n":12345}}"#.to_string(),
        r#"{"kind":"sleep","payload":{"ms":100},"delay_ms":5}"#.to_string(),
        format!(r#"{{"kind":"echo","payload":[{}]}}"#, (0..64).map(|i| format!("{}.{}", i * 7919, i)).collect::<Vec<_>>().join(",")),
    ];
    for b in &bodies {
        let n = 200_000;
        let mut best = f64::MAX;
        for _round in 0..5 {
            let t = Instant::now();
            let mut total = 0;
            for _ in 0..n {
                let v: serde_json::Value = serde_json::from_str(b).unwrap();
                total += serde_json::to_string(&v).unwrap().len();
            }
            std::hint::black_box(total);
            best = best.min(t.elapsed().as_secs_f64() * 1e9 / n as f64);
        }
        println!("{:>4} bytes: {:>7.0} ns parse+print (best of 5)", b.len(), best);
    }
}
