//! Where the counters are read: Prometheus text (`/metrics`) and statsd (the same values as
//! `/stats`, gauges as values and counters as increments).

use super::*;

pub(super) fn entries(map: &Mutex<BTreeMap<String, u64>>) -> Vec<(String, u64)> {
    lock(map).iter().map(|(k, v)| (k.clone(), *v)).collect()
}

impl Metrics {
    pub(super) fn per_topic(&self, f: fn(&TopicCounts) -> u64) -> Vec<(String, u64)> {
        self.topics().into_iter().map(|(t, c)| (t, f(&c))).collect()
    }
}

/// The Prometheus text exposition of every value in [`COUNTERS`] and [`FAMILIES`], and the
/// latency histogram.
pub fn prometheus(m: &Metrics) -> String {
    let mut out = String::new();
    let mut last = "";
    let mut header = |out: &mut String, name: &'static str, kind: Kind, help: &str| {
        if name != last {
            let kind = match kind {
                Kind::Counter => "counter",
                Kind::Gauge => "gauge",
            };
            let _ = writeln!(
                out,
                "# HELP hotdog_{name} {help}\n# TYPE hotdog_{name} {kind}"
            );
            last = name;
        }
    };
    for c in &COUNTERS {
        if let Some((name, labels)) = c.prometheus {
            header(&mut out, name, c.kind, c.help);
            let _ = writeln!(out, "hotdog_{name}{labels} {}", (c.read)(m));
        }
    }
    for f in &FAMILIES {
        header(&mut out, f.prometheus, Kind::Counter, f.help);
        for (label, v) in (f.read)(m) {
            let _ = writeln!(
                out,
                "hotdog_{}{{{}=\"{}\"}} {v}",
                f.prometheus,
                f.label_name,
                escape_label(&label)
            );
        }
    }
    let (buckets, count, sum_ms) = m.latency.read();
    let name = "hotdog_delivery_latency_seconds";
    let _ = writeln!(
        out,
        "# HELP {name} Line read to Kafka acknowledgement.\n# TYPE {name} histogram"
    );
    for (le_ms, c) in buckets {
        let _ = writeln!(out, "{name}_bucket{{le=\"{}\"}} {c}", le_ms as f64 / 1000.0);
    }
    let _ = writeln!(out, "{name}_bucket{{le=\"+Inf\"}} {count}");
    let _ = writeln!(out, "{name}_sum {}", sum_ms as f64 / 1000.0);
    let _ = writeln!(out, "{name}_count {count}");
    out
}

/// A label value as the Prometheus text format writes it: a quota's key is the sender's
/// (a TLS client name may hold anything).
fn escape_label(value: &str) -> std::borrow::Cow<'_, str> {
    if !value.contains(['\\', '"', '\n']) {
        return value.into();
    }
    value
        .replace('\\', "\\\\")
        .replace('"', "\\\"")
        .replace('\n', "\\n")
        .into()
}

/// One value sent to statsd.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(super) enum Update {
    Gauge(i64),
    Count(usize),
}

/// What statsd is sent for the change from `last` to `now`: every gauge, and the counters that
/// grew, by how much.
pub(super) fn statsd_updates(
    last: &BTreeMap<String, i64>,
    now: &BTreeMap<String, i64>,
) -> Vec<(String, Update)> {
    let gauge = |name: &str| {
        COUNTERS
            .iter()
            .any(|c| c.kind == Kind::Gauge && c.name == name)
    };
    let mut out = Vec::new();
    for (name, value) in now {
        if gauge(name) {
            out.push((name.clone(), Update::Gauge(*value)));
            continue;
        }
        let before = last.get(name).copied().unwrap_or(0);
        if let Ok(delta) = usize::try_from(value - before) {
            if delta > 0 {
                out.push((name.clone(), Update::Count(delta)));
            }
        }
    }
    out
}

/// Sends the counters to statsd every `every` (see [`statsd_updates`]), until `stop` is closed
/// (then once more). Runs on its own thread.
pub fn report_to_statsd(
    metrics: Arc<Metrics>,
    address: &str,
    every: Duration,
    stop: async_channel::Receiver<()>,
) -> std::io::Result<std::thread::JoinHandle<()>> {
    let scope = Statsd::send_to(address)?.named("hotdog").metrics();
    std::thread::Builder::new()
        .name("statsd".into())
        .spawn(move || {
            let mut last: BTreeMap<String, i64> = BTreeMap::new();
            let mut closing = false;
            loop {
                let now = metrics.snapshot();
                for (name, update) in statsd_updates(&last, &now) {
                    match update {
                        Update::Gauge(v) => scope.gauge(&name).value(v),
                        Update::Count(n) => scope.counter(&name).count(n),
                    }
                }
                last = now;
                if closing {
                    break;
                }
                closing = smol::block_on(async {
                    futures_lite::future::or(
                        async {
                            smol::Timer::after(every).await;
                            false
                        },
                        async {
                            let _ = stop.recv().await;
                            true
                        },
                    )
                    .await
                });
            }
        })
}
