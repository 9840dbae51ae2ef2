//! The counters read the same through `/stats`, `/metrics` and statsd.

use super::*;

/// A `Metrics` with every counter, gauge and family non-zero.
fn busy() -> Metrics {
    let m = Metrics::default();
    for a in [
        &m.connections_total,
        &m.lines,
        &m.unparsed,
        &m.truncated,
        &m.invalid_utf8,
        &m.unrouted,
        &m.forwarded,
        &m.invalid_topics,
        &m.render_errors,
        &m.merge_errors,
        &m.tls_handshakes,
        &m.tls_handshake_failed,
        &m.tls_handshake_timeout,
        &m.udp_dropped,
        &m.refused_listener,
        &m.refused_source,
        &m.idle_closed,
        &m.proxy_refused,
        &m.dead_letter_write_failed,
        &m.dead_letter_unwritten,
        &m.status_refused,
        &m.tap_dropped,
        &m.tap_skipped,
        &m.topics_over_limit,
        &m.producer_fatal,
        &m.producer_restarts,
        &m.relp_sessions_total,
        &m.relp_acknowledged,
        &m.relp_unacknowledged,
        &m.relp_refused,
        &m.spool_written,
        &m.spool_replayed,
        &m.spool_corrupt,
        &m.spool_full,
        &m.quota_dropped,
        &m.quota_dropped_bytes,
        &m.quota_waited_ms,
    ] {
        a.store(1000, Relaxed);
    }
    m.connections.store(2, Relaxed);
    m.relp_sessions.store(4, Relaxed);
    // 9 outstanding: neither acknowledged (1000) nor left unacknowledged (1000).
    m.relp_messages.store(2009, Relaxed);
    m.handshaking.store(3, Relaxed);
    let t = m.topic("logs");
    m.submitted(&t, 7);
    m.delivered(&t);
    m.failed("logs", "msgsizetoolarge");
    m.dead_lettered("logs");
    m.dead_letter_reason("msgsizetoolarge");
    m.latency.observe(3);
    m.config_generation.store(2, Relaxed);
    m.config_reloads.store(1, Relaxed);
    m.config_reload_failed.store(1, Relaxed);
    m.watch_queues(Arc::new(|| 5), Arc::new(|| 6));
    m.watch_rules(Arc::new(|| vec![("errors".into(), 4), ("1".into(), 2)]));
    m.watch_udp_kernel(Arc::new(|| 3));
    m.listener("127.0.0.1:514").fetch_add(7, Relaxed);
    m.quota_dropped("127.0.0.1:514", "10.0.0.9", 5, 500);
    m
}

/// The names `/metrics` gives its samples, labels included.
fn prometheus_samples(text: &str) -> Vec<String> {
    text.lines()
        .filter(|l| !l.starts_with('#'))
        .filter_map(|l| l.rsplit_once(' ').map(|(name, _)| name.to_string()))
        .collect()
}

#[test]
fn stats_metrics_and_statsd_list_the_same_values() {
    let m = busy();
    let stats = m.snapshot();
    let samples = prometheus_samples(&prometheus(&m));
    // What Prometheus must show for each /stats name.
    let mut expected = Vec::new();
    for c in &COUNTERS {
        assert!(stats.contains_key(c.name), "/stats lacks {}", c.name);
        match c.prometheus {
            Some((name, labels)) => expected.push(format!("hotdog_{name}{labels}")),
            None if c.name.starts_with("kafka.latency_ms.") => {
                expected.push("hotdog_delivery_latency_seconds_sum".into());
                expected.push("hotdog_delivery_latency_seconds_count".into());
            }
            // A total: Prometheus has it per label, in the family of the same prefix.
            None => assert!(
                FAMILIES.iter().any(|f| f.prefix == c.name),
                "{} is in no Prometheus family",
                c.name
            ),
        }
    }
    for f in &FAMILIES {
        let values = (f.read)(&m);
        assert!(!values.is_empty(), "{} has no values to compare", f.prefix);
        for (label, _) in values {
            assert!(stats.contains_key(&format!("{}.{label}{}", f.prefix, f.suffix)));
            expected.push(format!(
                "hotdog_{}{{{}=\"{label}\"}}",
                f.prometheus, f.label_name
            ));
        }
    }
    for e in &expected {
        assert!(samples.contains(e), "/metrics lacks {e}:\n{samples:#?}");
    }
    // /metrics has nothing else but the histogram buckets.
    for s in &samples {
        assert!(
            expected.contains(s) || s.starts_with("hotdog_delivery_latency_seconds_bucket"),
            "/metrics has {s}, which /stats does not"
        );
    }
    // The first statsd report sends every value /stats has (all are non-zero here).
    let sent: Vec<String> = statsd_updates(&BTreeMap::new(), &stats)
        .into_iter()
        .map(|(name, _)| name)
        .collect();
    let listed: Vec<String> = stats.keys().cloned().collect();
    assert_eq!(sent, listed);
}

#[test]
fn statsd_gets_gauges_as_values_and_counters_as_increments() {
    let m = busy();
    let first = m.snapshot();
    m.lines.fetch_add(5, Relaxed);
    m.connections.store(1, Relaxed);
    let updates = statsd_updates(&first, &m.snapshot());
    assert!(updates.contains(&("lines".into(), Update::Count(5))));
    assert!(updates.contains(&("connections".into(), Update::Gauge(1))));
    assert!(updates.contains(&("queue.channel".into(), Update::Gauge(5))));
    // Counters that did not move are not sent.
    assert!(!updates.iter().any(|(n, _)| n == "lines.unrouted"));
}

#[test]
fn a_quota_key_is_escaped_in_metrics_and_the_top_keys_are_listed() {
    let m = Metrics::default();
    m.quota_dropped("0.0.0.0:6514", "cn=\"x\"\\y", 3, 30);
    m.quota_dropped("0.0.0.0:6514", "10.0.0.1", 9, 90);
    let text = prometheus(&m);
    assert!(
        text.contains("hotdog_quota_dropped_top_lines{key=\"0.0.0.0:6514/10.0.0.1\"} 9\n"),
        "{text}"
    );
    assert!(
        text.contains(r#"hotdog_quota_dropped_top_lines{key="0.0.0.0:6514/cn=\"x\"\\y"} 3"#),
        "{text}"
    );
    assert!(
        text.contains("hotdog_quota_dropped_bytes_total 120\n"),
        "{text}"
    );
}
