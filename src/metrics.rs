//! `GET /metrics`: the library's ledger rendered as Prometheus text (format 0.0.4). The metric
//! names are part of the API contract (README, "Metric names"): dashboards and alerts rely on them.

use std::collections::BTreeMap;
use std::fmt::Write;

use mailroom_actors::{ClusterStats, HistogramSnapshot, KindStats, LedgerSnapshot, Status};

const FINISHED: [Status; 5] = [
    Status::Completed,
    Status::Failed,
    Status::TimedOut,
    Status::Cancelled,
    Status::Dead,
];

fn header(out: &mut String, name: &str, kind: &str, help: &str) {
    let _ = writeln!(out, "# HELP {name} {help}\n# TYPE {name} {kind}");
}

/// One metric with a `kind` label: its header, then one line per route.
fn per_kind(
    out: &mut String,
    s: &LedgerSnapshot,
    (name, kind, help): (&str, &str, &str),
    value: impl Fn(&KindStats) -> u64,
) {
    header(out, name, kind, help);
    for k in &s.kinds {
        let _ = writeln!(out, "{name}{{kind=\"{}\"}} {}", k.kind, value(k));
    }
}

/// One histogram with a `kind` label: its header, then each route's buckets, sum and count.
fn histogram(
    out: &mut String,
    s: &LedgerSnapshot,
    (name, help): (&str, &str),
    of: impl Fn(&KindStats) -> &HistogramSnapshot,
) {
    header(out, name, "histogram", help);
    for k in &s.kinds {
        let h = of(k);
        let kind = &k.kind;
        for (bound, n) in h.bounds.iter().zip(&h.cumulative) {
            let _ = writeln!(out, "{name}_bucket{{kind=\"{kind}\",le=\"{bound}\"}} {n}");
        }
        let _ = writeln!(
            out,
            "{name}_bucket{{kind=\"{kind}\",le=\"+Inf\"}} {}",
            h.count
        );
        let _ = writeln!(out, "{name}_sum{{kind=\"{kind}\"}} {}", h.sum_seconds);
        let _ = writeln!(out, "{name}_count{{kind=\"{kind}\"}} {}", h.count);
    }
}

/// Renders a cluster node's view of the cluster: JetStream's figures per route (the same on
/// every node), this node's admissions and the terminal states it wrote, and its connection.
pub fn render_cluster(c: &ClusterStats) -> String {
    let mut out = String::with_capacity(1024 + c.routes.len() * 512);
    // The node's name comes from configuration: escaped as a label value must be.
    let node = label_value(&c.node);
    header(
        &mut out,
        "mailroom_cluster_connected",
        "gauge",
        "1 while this node is connected to NATS",
    );
    let _ = writeln!(
        out,
        "mailroom_cluster_connected{{node=\"{}\"}} {}",
        node,
        u8::from(c.connected)
    );
    header(
        &mut out,
        "mailroom_cluster_running",
        "gauge",
        "Messages running on this node",
    );
    let _ = writeln!(
        out,
        "mailroom_cluster_running{{node=\"{}\"}} {}",
        node, c.running_here
    );
    // A figure NATS did not give (unreachable, or no answer within 2 s) has no sample.
    type Of = fn(&mailroom_actors::cluster::ClusterRouteStats) -> Option<u64>;
    let gauges: [(&str, &str, Of); 3] = [
        (
            "mailroom_cluster_pending",
            "Messages in the cluster's stream not yet delivered, per kind",
            |r| r.pending,
        ),
        (
            "mailroom_cluster_ack_pending",
            "Messages delivered and not yet acknowledged (running, delayed, waiting to retry), per kind",
            |r| r.ack_pending,
        ),
        (
            "mailroom_cluster_redelivered",
            "Messages delivered more than once now outstanding, per kind",
            |r| r.redelivered,
        ),
    ];
    for (name, help, value) in gauges {
        header(&mut out, name, "gauge", help);
        for r in &c.routes {
            if let Some(v) = value(r) {
                let _ = writeln!(out, "{name}{{kind=\"{}\"}} {v}", r.kind);
            }
        }
    }
    header(
        &mut out,
        "mailroom_cluster_accepted_total",
        "counter",
        "Messages this node admitted into the cluster, per kind",
    );
    for r in &c.routes {
        let _ = writeln!(
            out,
            "mailroom_cluster_accepted_total{{kind=\"{}\",node=\"{}\"}} {}",
            r.kind, node, r.accepted_here
        );
    }
    header(
        &mut out,
        "mailroom_cluster_finished_total",
        "counter",
        "Terminal states this node wrote, per kind and status",
    );
    for r in &c.routes {
        let mut statuses: Vec<_> = r.finished_here.iter().collect();
        statuses.sort();
        for (status, n) in statuses {
            let _ = writeln!(
                out,
                "mailroom_cluster_finished_total{{kind=\"{}\",node=\"{}\",status=\"{status}\"}} {n}",
                r.kind, node
            );
        }
    }
    out
}

/// The HTTP edge's refusals (see [`crate::connections`] and `api::BodyBudget`) as Prometheus
/// text.
pub fn render_http_refusals(connection_share: u64, body_share: u64, body_budget: u64) -> String {
    let mut out = String::new();
    header(
        &mut out,
        "mailroom_http_refused_total",
        "counter",
        "What the HTTP edge refused before reading a request whole: connections over their \
         client's share (server.max_connections_per_client), bodies over their client's share \
         (server.max_buffered_body_bytes_per_client) or over the server's \
         (server.max_buffered_body_bytes).",
    );
    for (reason, n) in [
        ("connection_share", connection_share),
        ("body_share", body_share),
        ("body_budget", body_budget),
    ] {
        let _ = writeln!(
            out,
            "mailroom_http_refused_total{{reason=\"{reason}\"}} {n}"
        );
    }
    out
}

/// Renders the snapshot.
pub fn render(s: &LedgerSnapshot) -> String {
    let mut out = String::with_capacity(4096 + s.kinds.len() * 2048);
    let o = &mut out;
    per_kind(
        o,
        s,
        (
            "mailroom_messages_accepted_total",
            "counter",
            "Messages accepted, by kind.",
        ),
        |k| k.accepted,
    );
    header(
        o,
        "mailroom_messages_rejected_total",
        "counter",
        "Messages refused at admission, by kind and reason (no_route has no kind).",
    );
    for k in &s.kinds {
        for (reason, n) in [
            ("full", k.rejected.full),
            ("degraded", k.rejected.degraded),
            ("draining", k.rejected.draining),
            ("invalid", k.rejected.invalid),
            ("client_share", k.rejected.client_share),
            ("storage", k.rejected.storage),
        ] {
            let _ = writeln!(
                o,
                "mailroom_messages_rejected_total{{kind=\"{}\",reason=\"{reason}\"}} {n}",
                k.kind
            );
        }
    }
    let _ = writeln!(
        o,
        "mailroom_messages_rejected_total{{kind=\"\",reason=\"no_route\"}} {}",
        s.rejected_no_route
    );
    let _ = writeln!(
        o,
        "mailroom_messages_rejected_total{{kind=\"\",reason=\"invalid\"}} {}",
        s.rejected_malformed
    );
    header(
        o,
        "mailroom_messages_finished_total",
        "counter",
        "Messages that reached a terminal state, by kind and status.",
    );
    for k in &s.kinds {
        for st in FINISHED {
            let _ = writeln!(
                o,
                "mailroom_messages_finished_total{{kind=\"{}\",status=\"{st}\"}} {}",
                k.kind,
                k.finished_with(st)
            );
        }
    }
    per_kind(
        o,
        s,
        (
            "mailroom_messages_retried_total",
            "counter",
            "Failed attempts that were retried, by kind.",
        ),
        |k| k.retried,
    );
    per_kind(
        o,
        s,
        (
            "mailroom_messages_in_flight",
            "gauge",
            "Accepted and not finished (queued + delayed + running), by kind.",
        ),
        |k| k.in_flight,
    );
    per_kind(
        o,
        s,
        (
            "mailroom_queue_depth",
            "gauge",
            "Messages waiting (queued + delayed), by kind.",
        ),
        |k| k.queue_depth,
    );
    per_kind(
        o,
        s,
        (
            "mailroom_messages_running",
            "gauge",
            "Messages running now, by kind.",
        ),
        |k| k.running,
    );
    per_kind(
        o,
        s,
        (
            "mailroom_messages_delayed",
            "gauge",
            "Messages waiting for their time (delayed, or a retry in backoff), by kind.",
        ),
        |k| k.delayed,
    );
    header(
        &mut out,
        "mailroom_processor_restarts_total",
        "counter",
        "Processor restarts after panics, by processor.",
    );
    let mut restarts: BTreeMap<&str, u64> = BTreeMap::new();
    for k in &s.kinds {
        *restarts.entry(k.processor.as_str()).or_default() += k.restarts;
    }
    for (p, n) in restarts {
        let _ = writeln!(
            out,
            "mailroom_processor_restarts_total{{processor=\"{p}\"}} {n}"
        );
    }
    histogram(
        &mut out,
        s,
        (
            "mailroom_message_duration_seconds",
            "Time from acceptance to a terminal state, by kind.",
        ),
        |k| &k.duration,
    );
    histogram(
        &mut out,
        s,
        (
            "mailroom_message_run_seconds",
            "Running time of the last attempt of finished messages that ran, by kind.",
        ),
        |k| &k.run_time,
    );
    header(
        &mut out,
        "mailroom_outcomes_stored",
        "gauge",
        "Message records held by the store.",
    );
    let _ = writeln!(out, "mailroom_outcomes_stored {}", s.stored);
    header(
        &mut out,
        "mailroom_dead_letters",
        "gauge",
        "Dead letters held.",
    );
    let _ = writeln!(out, "mailroom_dead_letters {}", s.dead_letters);
    header(
        &mut out,
        "mailroom_thread_stalls_total",
        "counter",
        "Times a thread running actors (an HTTP worker or an arbiter) did not answer for \
         pools.io.stall_warn_ms: something on it blocks.",
    );
    let _ = writeln!(out, "mailroom_thread_stalls_total {}", s.stalls);
    for (name, kind, help, value) in [
        (
            "mailroom_journal_records_total",
            "counter",
            "Records written to the journal (0 with storage.kind = \"memory\").",
            s.storage.records,
        ),
        (
            "mailroom_journal_fsyncs_total",
            "counter",
            "fsyncs of the journal (each shared by every record waiting for it).",
            s.storage.fsyncs,
        ),
        (
            "mailroom_journal_write_failures_total",
            "counter",
            "Journal writes or fsyncs that failed (their messages were refused).",
            s.storage.failures,
        ),
        (
            "mailroom_journal_bytes",
            "gauge",
            "Bytes of the journal's records on disk (its open segment's file is allocated ahead to storage.segment_bytes).",
            s.storage.bytes,
        ),
    ] {
        header(&mut out, name, kind, help);
        let _ = writeln!(out, "{name} {value}");
    }
    out
}

/// A label value as the text format wants it: backslash, double quote and newline escaped.
fn label_value(text: &str) -> String {
    text.replace('\\', "\\\\")
        .replace('"', "\\\"")
        .replace('\n', "\\n")
}

#[cfg(test)]
mod tests {
    #[test]
    fn a_label_value_is_escaped() {
        assert_eq!(super::label_value("node-a"), "node-a");
        assert_eq!(
            super::label_value("a\"b\\c\nd"),
            "a\\\"b\\\\c\\nd",
            "a quote, a backslash and a newline from the configuration"
        );
    }
}
