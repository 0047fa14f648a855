//! Every example program, built by `cargo test` and run here; its output is checked for the
//! facts it claims (overlap, order, speed-up, supervision).

use std::process::Command;

fn run(name: &str) -> String {
    // target/<profile>/deps/service-… → target/<profile>/examples/<name>
    let exe = std::env::current_exe().unwrap();
    let dir = exe.parent().unwrap().parent().unwrap().join("examples");
    let out = Command::new(dir.join(name))
        .output()
        .unwrap_or_else(|e| panic!("cannot run example {name} from {}: {e}", dir.display()));
    let stdout = String::from_utf8_lossy(&out.stdout).into_owned();
    assert!(
        out.status.success(),
        "{name} failed: {}\n{stdout}\n{}",
        out.status,
        String::from_utf8_lossy(&out.stderr)
    );
    stdout
}

fn position(out: &str, needle: &str) -> usize {
    out.find(needle)
        .unwrap_or_else(|| panic!("{needle:?} not in:\n{out}"))
}

/// The number right after `prefix` in `out`.
fn number_after(out: &str, prefix: &str) -> f64 {
    let rest = &out[position(out, prefix) + prefix.len()..];
    let n: String = rest
        .trim_start()
        .chars()
        .take_while(|c| c.is_ascii_digit() || *c == '.')
        .collect();
    n.parse()
        .unwrap_or_else(|_| panic!("no number after {prefix:?} in:\n{out}"))
}

#[test]
fn hello_world_runs_one_message_to_completion() {
    let out = run("hello_world");
    assert!(
        out.contains("Hello world!\nstatus: completed\nresult: 42\n"),
        "{out}"
    );
}

#[test]
fn await_chain_prints_events_in_awaited_order() {
    let out = run("await_chain");
    let steps = [
        "Hello 1",
        "await add_42(23)",
        "add_42: adding 42",
        "add_42 returned 65",
        "Hello 2",
        "finished with",
    ];
    let at: Vec<usize> = steps.iter().map(|s| position(&out, s)).collect();
    assert!(at.windows(2).all(|w| w[0] < w[1]), "{out}");
}

#[test]
fn gather_sleep_overlaps_and_keeps_order() {
    let out = run("gather_sleep");
    assert!(
        out.contains("adding up to 600 ms: they overlapped"),
        "{out}"
    );
    let order = [
        "#0 echo",
        "#1 sleep",
        "{\"slept_ms\":300}",
        "#2 sleep",
        "{\"slept_ms\":200}",
        "#3 sleep",
        "#4 echo",
    ];
    let at: Vec<usize> = order.iter().map(|s| position(&out, s)).collect();
    assert!(at.windows(2).all(|w| w[0] < w[1]), "{out}");
}

#[test]
fn concurrent_fetch_has_every_fetch_in_flight_at_once() {
    let out = run("concurrent_fetch");
    assert!(out.contains("16/16 fetches answered 200"), "{out}");
    // The upstream holds each request until all have arrived: a fact, not a timing.
    assert!(
        out.contains("16 fetches were in flight at the upstream at once"),
        "{out}"
    );
    assert!(
        out.contains(
            "refused: invalid message: invalid payload for fetch: refused to fetch 127.0.0.2"
        ),
        "{out}"
    );
}

#[test]
fn call_later_runs_delayed_messages_in_order_and_skips_the_cancelled_one() {
    let out = run("call_later");
    let at: Vec<usize> = [
        "cancelled 01",
        "first, at 100 ms",
        "second, at 250 ms",
        "third, at 300 ms",
    ]
    .iter()
    .map(|s| position(&out, s))
    .collect();
    assert!(at.windows(2).all(|w| w[0] < w[1]), "{out}");
    assert!(
        !out.contains("never runs\n") || out.matches("never runs").count() == 0,
        "{out}"
    );
    assert!(out.contains("1 cancelled"), "{out}");
    assert!(
        number_after(&out, "ran in order,") >= 1.0,
        "the schedule ticked:\n{out}"
    );
}

#[test]
fn cpu_pool_uses_more_than_one_core_and_io_stays_responsive() {
    let out = run("cpu_pool");
    // Facts that do not depend on how busy the machine is: every pool thread took jobs, and
    // they ran at the same time. (The speed-up figure is printed, not asserted: other tests
    // share these two cores.)
    let cores = std::thread::available_parallelism().map_or(1, |n| n.get()) as f64;
    assert_eq!(number_after(&out, "jobs ran on"), cores, "{out}");
    assert_eq!(number_after(&out, "at most"), cores, "{out}");
    assert!(out.contains("speed-up :"), "{out}");
    assert!(
        number_after(&out, "while the pool was busy,") >= 1.0,
        "{out}"
    );
}

#[test]
fn select_loop_answers_every_line_as_it_finishes() {
    let out = run("select_loop");
    assert!(out.contains("5 answers for 5 lines"), "{out}");
    let answers: Vec<&str> = out.lines().filter(|l| l.starts_with("<-")).collect();
    assert!(answers.last().unwrap().contains("\"slow\""), "{out}");
    assert!(
        out.contains("rejected 422: \"no route for kind \\\"nope\\\"\""),
        "{out}"
    );
}

#[test]
fn supervision_restarts_and_the_ledger_balances() {
    let out = run("supervision");
    assert!(number_after(&out, "restarts:") >= 1.0, "{out}");
    let accepted = number_after(&out, "ledger: accepted");
    let completed = number_after(&out, "= completed");
    let failed = number_after(&out, "+ failed");
    let dead = number_after(&out, "+ dead");
    assert_eq!(accepted, 12.0, "{out}");
    assert_eq!(completed + failed + dead, 12.0, "{out}");
    assert_eq!(number_after(&out, "+ in flight"), 0.0, "{out}");
    assert!(
        out.contains("processor panicked: moody processor gave up"),
        "{out}"
    );
}

#[test]
fn custom_kinds_routes_each_kind_to_its_own_processor() {
    let out = run("custom_kinds");
    assert!(out.contains("#0 order.created    completed"), "{out}");
    assert!(out.contains("\"total\":20.0"), "{out}");
    assert!(
        out.contains("#1 image.thumbnail  completed {\"width\":128,\"checksum\""),
        "{out}"
    );
    assert!(
        out.contains(
            "#2 rejected: invalid message: invalid payload for order.created: items must be a list"
        ),
        "{out}"
    );
    assert!(
        out.contains("#3 rejected: no route for kind \"newsletter\""),
        "{out}"
    );
    assert!(
        out.contains("reminder completed: {\"sent_to\":\"ada@example.com\"}"),
        "{out}"
    );
    assert!(out.contains("0 unfinished"), "{out}");
}
