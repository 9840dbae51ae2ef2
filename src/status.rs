//! The HTTP status server (tiny_http, on its own thread): `/stats` as JSON (hotdog 0.5's
//! format), `/metrics` in the Prometheus text format, `/health`.

use std::fmt::Write as _;
use std::sync::Arc;

use serde::Serialize;
use tiny_http::{Header, Method, Response, Server};

use crate::metrics::Metrics;
use crate::publisher::Health;

/// A gauge read when it is scraped.
pub type Gauge = Arc<dyn Fn() -> i64 + Send + Sync>;

/// What the status server reports on.
pub struct Sources {
    pub metrics: Arc<Metrics>,
    pub health: Arc<Health>,
    /// Batches waiting in the channel to the publisher.
    pub channel_len: Gauge,
    /// Records librdkafka holds.
    pub kafka_queue_len: Gauge,
}

#[derive(Serialize)]
struct StatsBody {
    message: &'static str,
    version: &'static str,
    stats: std::collections::BTreeMap<String, i64>,
}

/// Binds `address` and serves until the process exits.
pub fn serve(
    address: &str,
    sources: Sources,
) -> Result<std::thread::JoinHandle<()>, Box<dyn std::error::Error + Send + Sync>> {
    let server = Server::http(address)?;
    let handle = std::thread::Builder::new()
        .name("status".into())
        .spawn(move || {
            for request in server.incoming_requests() {
                let path = request.url().split('?').next().unwrap_or("");
                let response = match (request.method(), path) {
                    (Method::Get, "/stats") => {
                        let mut stats = sources.metrics.snapshot();
                        stats.insert("queue.channel".into(), (sources.channel_len)());
                        stats.insert("queue.librdkafka".into(), (sources.kafka_queue_len)());
                        json(&StatsBody {
                            message: "hotdog is running",
                            version: env!("CARGO_PKG_VERSION"),
                            stats,
                        })
                    }
                    (Method::Get, "/metrics") => {
                        with_type(text(prometheus(&sources), 200), "text/plain; version=0.0.4")
                    }
                    (Method::Get, "/health") => match sources.health.get() {
                        Ok(()) => text("ok: a Kafka broker is reachable\n".into(), 200),
                        Err(reason) => text(format!("unavailable: {reason}\n"), 503),
                    },
                    (Method::Get, "/") => text(
                        "hotdog status server: /stats /metrics /health\n".into(),
                        200,
                    ),
                    _ => text("not found\n".into(), 404),
                };
                if let Err(e) = request.respond(response) {
                    log::debug!("status response failed: {e}");
                }
            }
        })?;
    Ok(handle)
}

fn with_type(
    r: Response<std::io::Cursor<Vec<u8>>>,
    content_type: &str,
) -> Response<std::io::Cursor<Vec<u8>>> {
    match Header::from_bytes("Content-Type", content_type) {
        Ok(h) => r.with_header(h),
        Err(()) => r,
    }
}

fn text(body: String, code: u16) -> Response<std::io::Cursor<Vec<u8>>> {
    Response::from_string(body).with_status_code(code)
}

fn json<T: Serialize>(body: &T) -> Response<std::io::Cursor<Vec<u8>>> {
    let text = serde_json::to_vec(body).unwrap_or_default();
    with_type(Response::from_data(text), "application/json")
}

/// The Prometheus text exposition of every counter.
pub fn prometheus(s: &Sources) -> String {
    use std::sync::atomic::Ordering::Relaxed;
    let m = &s.metrics;
    let mut out = String::new();
    let mut metric = |name: &str, kind: &str, help: &str, samples: &[(String, i64)]| {
        let _ = writeln!(
            out,
            "# HELP hotdog_{name} {help}\n# TYPE hotdog_{name} {kind}"
        );
        for (labels, v) in samples {
            let _ = writeln!(out, "hotdog_{name}{labels} {v}");
        }
    };
    let v = |a: &std::sync::atomic::AtomicU64| i64::try_from(a.load(Relaxed)).unwrap_or(i64::MAX);
    let one = |x: i64| vec![(String::new(), x)];
    metric(
        "lines_received_total",
        "counter",
        "Lines read.",
        &one(v(&m.lines)),
    );
    metric(
        "lines_unrouted_total",
        "counter",
        "Lines no rule forwarded (discarded on purpose).",
        &one(v(&m.unrouted)),
    );
    metric(
        "lines_in_flight",
        "gauge",
        "Lines read and not yet delivered, dead-lettered, discarded or dropped.",
        &one(m.in_flight()),
    );
    metric(
        "lines_truncated_total",
        "counter",
        "Frames cut to max_message_size.",
        &one(v(&m.truncated)),
    );
    metric(
        "parse_errors_total",
        "counter",
        "Lines that were neither RFC 5424 nor RFC 3164.",
        &one(v(&m.unparsed)),
    );
    metric(
        "udp_dropped_total",
        "counter",
        "UDP messages dropped with the queue full.",
        &one(v(&m.udp_dropped)),
    );
    metric(
        "connections",
        "gauge",
        "Connections open now.",
        &one(m.connections.load(Relaxed)),
    );
    metric(
        "connections_total",
        "counter",
        "Connections accepted.",
        &one(v(&m.connections_total)),
    );
    metric(
        "tls_handshake_failures_total",
        "counter",
        "TLS handshakes that failed or timed out.",
        &one(v(&m.tls_handshake_failed) + v(&m.tls_handshake_timeout)),
    );
    let topics = m.topics();
    let per = |f: fn(&crate::metrics::TopicCounts) -> u64| -> Vec<(String, i64)> {
        topics
            .iter()
            .map(|(t, c)| {
                (
                    format!("{{topic=\"{t}\"}}"),
                    i64::try_from(f(c)).unwrap_or(i64::MAX),
                )
            })
            .collect()
    };
    metric(
        "kafka_submitted_total",
        "counter",
        "Records handed to librdkafka.",
        &per(|c| c.submitted),
    );
    metric(
        "kafka_delivered_total",
        "counter",
        "Records Kafka acknowledged.",
        &per(|c| c.delivered),
    );
    metric(
        "kafka_failed_total",
        "counter",
        "Records Kafka refused.",
        &per(|c| c.failed),
    );
    metric(
        "dead_lettered_total",
        "counter",
        "Records that ended in the dead-letter topic or file, by the topic they were meant for.",
        &per(|c| c.dead_lettered),
    );
    metric(
        "queue_depth",
        "gauge",
        "Records waiting: batches in hotdog's channel, records in librdkafka.",
        &[
            ("{queue=\"channel\"}".to_string(), (s.channel_len)()),
            ("{queue=\"librdkafka\"}".to_string(), (s.kafka_queue_len)()),
        ],
    );
    let (buckets, count, sum_ms) = m.latency.read();
    let _ = writeln!(
        out,
        "# HELP hotdog_delivery_latency_seconds Line read to Kafka acknowledgement.\n# TYPE hotdog_delivery_latency_seconds histogram"
    );
    for (le_ms, c) in buckets {
        let _ = writeln!(
            out,
            "hotdog_delivery_latency_seconds_bucket{{le=\"{}\"}} {c}",
            le_ms as f64 / 1000.0
        );
    }
    let _ = writeln!(
        out,
        "hotdog_delivery_latency_seconds_bucket{{le=\"+Inf\"}} {count}"
    );
    let _ = writeln!(
        out,
        "hotdog_delivery_latency_seconds_sum {}",
        sum_ms as f64 / 1000.0
    );
    let _ = writeln!(out, "hotdog_delivery_latency_seconds_count {count}");
    out
}
