//! Taps: what `hotdog tap` shows. A session offers every frame it routed (the line, its source,
//! the rules that matched, the record made of it) to the taps open at that moment; each tap
//! keeps what its filter asks for as one JSON line in a bounded queue that the status server
//! streams to its client. A tap never slows the pipeline down: with no tap open, offering is
//! one atomic load; a tap whose client reads too slowly loses events (counted in
//! `tap.dropped`), never records.

use std::borrow::Cow;
use std::sync::atomic::AtomicUsize;
use std::sync::atomic::Ordering::Relaxed;
use std::sync::{Arc, Mutex};

use regex_automata::meta::Regex;
use serde::Serialize;

use crate::base::metrics::Metrics;
use hotdog_stages::core::{Origin, Record};
use hotdog_stages::route::Rules;

/// Taps open at once; one more is refused.
pub const MAX_TAPS: usize = 8;
/// Events a tap holds for its client; more are dropped and counted.
pub const TAP_QUEUE: usize = 4096;

/// What a tap keeps: every condition given must hold.
#[derive(Debug, Default)]
pub struct Filter {
    /// A rule that matched the frame, by name (or index for a rule without one).
    pub rule: Option<String>,
    /// The record's topic.
    pub topic: Option<String>,
    /// The sender: its address (`IP:port`) starts with this.
    pub source: Option<String>,
    /// The listener: its bound address (`IP:port`), or only its port.
    pub listener: Option<String>,
    /// The frame's text matches this regex.
    pub line: Option<Regex>,
}

/// One routed frame as a tap sees it. Made for every frame while a tap is open, so what costs
/// (the payload as text, the headers) is only worked out for a tap that keeps it, when the
/// event is written.
#[derive(Serialize)]
pub struct Event<'a> {
    /// The frame's text (invalid UTF-8 replaced).
    pub line: &'a str,
    pub source: Option<&'a str>,
    /// The listener's bound address (`IP:port`).
    pub listener: Option<&'a str>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub tls_client_cn: Option<&'a str>,
    /// The rules that matched, in order.
    pub rules: Labels<'a>,
    /// `routed` (a record was made: it goes to Kafka) or `unrouted` (no rule forwarded it).
    pub outcome: &'static str,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub topic: Option<&'a str>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub key: Option<&'a str>,
    #[serde(skip_serializing_if = "Headers::is_empty")]
    pub headers: Headers<'a>,
    /// The record's payload (invalid UTF-8 replaced; `otlp_proto` shows as such).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub payload: Option<Payload<'a>>,
}

/// The rules a frame matched: given as labels, or as indexes into the rules in use, whose labels
/// (the index itself for a rule without a name) are only made for an event a filter keeps.
pub enum Labels<'a> {
    Given(Vec<Cow<'a, str>>),
    Of(&'a Rules, &'a [usize]),
}

impl Labels<'_> {
    fn each(&self) -> impl Iterator<Item = Cow<'_, str>> {
        let (given, of) = match self {
            Labels::Given(v) => (Some(v.iter().map(|l| Cow::Borrowed(l.as_ref()))), None),
            Labels::Of(rules, matched) => (None, Some(matched.iter().map(|i| rules.label(*i)))),
        };
        given.into_iter().flatten().chain(of.into_iter().flatten())
    }
}

impl Serialize for Labels<'_> {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.collect_seq(self.each())
    }
}

/// A record's headers, written as `[name, value]` pairs.
pub struct Headers<'a>(Option<&'a Record>);

impl Headers<'_> {
    fn is_empty(&self) -> bool {
        self.0.is_none_or(|r| r.headers.is_empty())
    }
}

impl Serialize for Headers<'_> {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        let headers = self.0.map(|r| r.headers.as_slice()).unwrap_or_default();
        s.collect_seq(headers.iter().map(|(k, v)| (k.as_ref(), v.as_str())))
    }
}

/// A record's payload, written as text.
pub struct Payload<'a>(&'a Record);

impl Serialize for Payload<'_> {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_str(&self.0.payload_text())
    }
}

impl<'a> Event<'a> {
    /// The event of a frame (`line`) from `origin`, that `rules` matched and that made
    /// `record`, if any.
    pub fn new(
        line: &'a str,
        origin: &'a Origin,
        rules: Labels<'a>,
        record: Option<&'a Record>,
    ) -> Event<'a> {
        Event {
            line,
            source: origin.peer_addr.as_deref(),
            listener: origin.listener.as_deref(),
            tls_client_cn: origin.tls_client_cn.as_deref(),
            rules,
            outcome: if record.is_some() {
                "routed"
            } else {
                "unrouted"
            },
            topic: record.map(|r| r.topic.as_ref()),
            key: record.and_then(|r| r.key.as_deref()),
            headers: Headers(record),
            payload: record.map(Payload),
        }
    }
}

impl Filter {
    /// True when this filter keeps `e`.
    fn keeps(&self, e: &Event<'_>) -> bool {
        self.rule
            .as_ref()
            .is_none_or(|r| e.rules.each().any(|m| m == r.as_str()))
            && self.topic.as_deref().is_none_or(|t| e.topic == Some(t))
            && self
                .source
                .as_deref()
                .is_none_or(|s| e.source.is_some_and(|a| a.starts_with(s)))
            && self.listener.as_deref().is_none_or(|l| {
                e.listener.is_some_and(|a| {
                    a == l || a.rsplit_once(':').is_some_and(|(_, port)| port == l)
                })
            })
            && self.line.as_ref().is_none_or(|r| r.is_match(e.line))
    }
}

struct Tap {
    filter: Filter,
    queue: async_channel::Sender<String>,
}

/// The taps open now.
#[derive(Default)]
pub struct Taps {
    open: AtomicUsize,
    taps: Mutex<Vec<Tap>>,
}

impl Taps {
    pub fn new() -> Arc<Taps> {
        Arc::default()
    }

    /// True when a tap is open: only then is an event worth making.
    pub fn any(&self) -> bool {
        self.open.load(Relaxed) > 0
    }

    /// Opens a tap: the JSON lines of the events `filter` keeps. It closes when the receiver
    /// is dropped. An error when [`MAX_TAPS`] are open.
    pub fn open(&self, filter: Filter) -> Result<async_channel::Receiver<String>, String> {
        let mut taps = self.taps.lock().unwrap_or_else(|p| p.into_inner());
        taps.retain(|t| !t.queue.is_closed());
        if taps.len() >= MAX_TAPS {
            return Err(format!("{MAX_TAPS} taps are open already"));
        }
        let (queue, events) = async_channel::bounded(TAP_QUEUE);
        taps.push(Tap { filter, queue });
        self.open.store(taps.len(), Relaxed);
        Ok(events)
    }

    /// Gives `event` to every open tap that keeps it; a tap that is full loses it (counted).
    pub fn offer(&self, event: &Event<'_>, metrics: &Metrics) {
        let mut taps = self.taps.lock().unwrap_or_else(|p| p.into_inner());
        let mut json: Option<String> = None;
        for tap in taps.iter().filter(|t| t.filter.keeps(event)) {
            let line = json.get_or_insert_with(|| serde_json::to_string(event).unwrap_or_default());
            if let Err(async_channel::TrySendError::Full(_)) = tap.queue.try_send(line.clone()) {
                metrics.tap_dropped.fetch_add(1, Relaxed);
            }
        }
        let before = taps.len();
        taps.retain(|t| !t.queue.is_closed());
        if taps.len() != before {
            self.open.store(taps.len(), Relaxed);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn event<'a>(
        line: &'a str,
        origin: &'a Origin,
        rules: &[&'a str],
        record: Option<&'a Record>,
    ) -> Event<'a> {
        Event::new(
            line,
            origin,
            Labels::Given(rules.iter().map(|r| Cow::Borrowed(*r)).collect()),
            record,
        )
    }

    #[test]
    fn taps_keep_what_their_filter_asks_for_and_drop_when_full() {
        let taps = Taps::new();
        let metrics = Metrics::new();
        assert!(!taps.any());
        let all = taps.open(Filter::default()).expect("tap");
        let errors = taps
            .open(Filter {
                rule: Some("errors".into()),
                line: Some(Regex::new("disk").expect("regex")),
                source: Some("10.0.0.".into()),
                ..Filter::default()
            })
            .expect("tap");
        assert!(taps.any());
        let origin = Origin {
            peer_addr: Some("10.0.0.7:5140".into()),
            ..Origin::default()
        };
        let record = Record {
            topic: "logs".into(),
            key: Some("k".into()),
            payload: bytes::Bytes::from_static(b"payload"),
            block: Default::default(),
            headers: vec![("h".into(), "v".to_string())],
            read_ms: 0,
            ack: Default::default(),
        };
        taps.offer(
            &event("disk full", &origin, &["errors"], Some(&record)),
            &metrics,
        );
        taps.offer(&event("disk full", &origin, &["other"], None), &metrics);
        taps.offer(&event("cpu hot", &origin, &["errors"], None), &metrics);
        assert_eq!(all.len(), 3);
        assert_eq!(errors.len(), 1);
        let first: serde_json::Value =
            serde_json::from_str(&errors.try_recv().expect("event")).expect("JSON");
        assert_eq!(first["line"], "disk full");
        assert_eq!(first["source"], "10.0.0.7:5140");
        assert_eq!(first["rules"], serde_json::json!(["errors"]));
        assert_eq!(first["outcome"], "routed");
        assert_eq!(first["topic"], "logs");
        assert_eq!(first["payload"], "payload");
        assert_eq!(first["headers"], serde_json::json!([["h", "v"]]));

        // A tap whose reader is behind loses events, counted; the others get theirs.
        for _ in 0..TAP_QUEUE {
            taps.offer(&event("disk", &origin, &["errors"], None), &metrics);
        }
        assert_eq!(all.len(), TAP_QUEUE);
        assert_eq!(metrics.tap_dropped.load(Relaxed), 3);
        // A closed tap is let go; past the cap, a tap is refused.
        drop(all);
        drop(errors);
        taps.offer(&event("x", &origin, &[], None), &metrics);
        assert!(!taps.any());
        let open: Vec<_> = (0..MAX_TAPS)
            .map(|_| taps.open(Filter::default()).expect("tap"))
            .collect();
        assert!(taps.open(Filter::default()).is_err());
        drop(open);
    }

    #[test]
    fn a_listener_filter_keeps_its_listeners_frames_by_address_or_port() {
        let on = |listener: Option<&str>| Origin {
            listener: listener.map(Into::into),
            ..Origin::default()
        };
        let keeps = |filter: &str, origin: &Origin| {
            Filter {
                listener: Some(filter.into()),
                ..Filter::default()
            }
            .keeps(&event("x", origin, &[], None))
        };
        let syslog = on(Some("0.0.0.0:514"));
        assert!(keeps("514", &syslog));
        assert!(keeps("0.0.0.0:514", &syslog));
        assert!(!keeps("51", &syslog));
        assert!(!keeps("5140", &syslog));
        assert!(!keeps("10.0.0.1:514", &syslog));
        assert!(!keeps("514", &on(None)));
        assert!(keeps("[::1]:6514", &on(Some("[::1]:6514"))));
        assert!(keeps("6514", &on(Some("[::1]:6514"))));
    }
}
