//! Taps: what `hotdog tap` shows. A session offers every frame it routed (the line, its source,
//! the rules that matched, the record made of it) to the taps open at that moment; each tap
//! keeps what its filter asks for as one JSON line in a bounded queue that the status server
//! streams to its client. A frame that made a record is held until the record is settled
//! (delivered, with its partition and offset, or dead-lettered, with why), and then written
//! with what became of it; one still in flight after [`HOLD`] is written as such. A tap never
//! slows the pipeline down: with no tap open, offering is one atomic load; a tap whose client
//! reads too slowly loses events (counted in `tap.dropped`), never records.

use std::borrow::Cow;
use std::collections::VecDeque;
use std::sync::atomic::AtomicUsize;
use std::sync::atomic::Ordering::Relaxed;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use hotdog_stages::core::{Outcome, Watch};

use regex_automata::meta::{Cache, Regex};
use regex_automata::Input;
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
    /// `unrouted` (no rule forwarded it); for a frame that made a record, written once the
    /// record is settled (see [`Watched`]).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub outcome: Option<&'static str>,
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

    /// True when one of the rules is labelled `label`: asked of every frame while a tap filters
    /// by rule, so no label is made for it.
    fn has(&self, label: &str) -> bool {
        match self {
            Labels::Given(v) => v.iter().any(|l| l == label),
            Labels::Of(rules, matched) => matched.iter().any(|i| rules.is_labelled(*i, label)),
        }
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
            outcome: record.is_none().then_some("unrouted"),
            topic: record.map(|r| r.topic.as_ref()),
            key: record.and_then(|r| r.key.as_deref()),
            headers: Headers(record),
            payload: record.map(Payload),
        }
    }
}

impl Filter {
    /// True when this filter keeps `e`; `cache` is the session's for the filter's regex.
    fn keeps(&self, e: &Event<'_>, cache: Option<&mut Cache>) -> bool {
        self.rule.as_ref().is_none_or(|r| e.rules.has(r))
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
            && self.line.as_ref().is_none_or(|r| {
                let input = Input::new(e.line).earliest(true);
                match cache {
                    Some(cache) => r.search_half_with(cache, &input).is_some(),
                    None => r.is_match(input),
                }
            })
    }
}

/// How long a frame that made a record is held for its outcome; then it is written as
/// `in_flight` (the broker is slow or away: the tap still shows what comes).
pub const HOLD: Duration = Duration::from_secs(5);

struct Tap {
    filter: Filter,
    queue: async_channel::Sender<String>,
    held: Arc<Held>,
}

/// A kept event waiting for its record's outcome: its JSON without the closing brace, taken
/// out by whichever comes first, the outcome or the end of [`HOLD`].
type Slot = Mutex<Option<String>>;

/// A tap's events that wait for their records' outcomes, oldest first; at most [`TAP_QUEUE`].
#[derive(Default)]
pub struct Held(Mutex<VecDeque<(Instant, Arc<Slot>)>>);

impl Held {
    /// Holds `json` (an event without its closing brace); `None` when the tap holds as many
    /// as it may.
    fn hold(&self, json: String, now: Instant) -> Option<Arc<Slot>> {
        let mut held = self.0.lock().unwrap_or_else(|p| p.into_inner());
        // Those settled already go (most are: a delivery takes milliseconds).
        while held.front().is_some_and(|(_, slot)| lock(slot).is_none()) {
            held.pop_front();
        }
        if held.len() >= TAP_QUEUE {
            return None;
        }
        let slot = Arc::new(Mutex::new(Some(json)));
        held.push_back((now, slot.clone()));
        Some(slot)
    }

    /// The events held for `hold` or longer that are still waiting, written as in flight (all
    /// of them with no `hold`: the tap ends); those that were settled are let go.
    pub fn expired(&self, hold: Duration) -> Vec<String> {
        let mut held = self.0.lock().unwrap_or_else(|p| p.into_inner());
        let mut out = Vec::new();
        while let Some((at, slot)) = held.front() {
            let mut json = lock(slot);
            if json.is_some() && at.elapsed() < hold {
                break;
            }
            if let Some(mut json) = json.take() {
                json.push_str(",\"outcome\":\"in_flight\"}");
                out.push(json);
            }
            drop(json);
            held.pop_front();
        }
        out
    }

    /// True when events wait for their outcomes.
    #[cfg(test)]
    pub fn any(&self) -> bool {
        !self.0.lock().unwrap_or_else(|p| p.into_inner()).is_empty()
    }
}

/// A slot's lock, poisoned or not.
fn lock(slot: &Slot) -> std::sync::MutexGuard<'_, Option<String>> {
    slot.lock().unwrap_or_else(|p| p.into_inner())
}

/// A tap's held event and the queue it is written to once its outcome is known.
type Waiting = (Arc<Slot>, async_channel::Sender<String>);

/// What a record that taps kept carries to its outcome: each tap's held event, written with
/// the outcome into that tap's queue. The first tap's is kept in place: a record one tap keeps
/// costs no list.
struct Watched {
    first: Waiting,
    more: Vec<Waiting>,
    metrics: Arc<Metrics>,
}

impl Watch for Watched {
    fn outcome(&self, outcome: Outcome<'_>) {
        for (slot, queue) in std::iter::once(&self.first).chain(&self.more) {
            let Some(mut json) = lock(slot).take() else {
                continue;
            };
            end(&mut json, outcome);
            if let Err(async_channel::TrySendError::Full(_)) = queue.try_send(json) {
                self.metrics.tap_dropped.fetch_add(1, Relaxed);
            }
        }
    }
}

/// Room left in a held event for the end [`end`] writes (all but a dead letter's fit): the
/// outcome is written in place, on librdkafka's thread, with no allocation.
const END_ROOM: usize = 80;

/// Ends a held event (`json`, without its closing brace) with `outcome`.
fn end(json: &mut String, outcome: Outcome<'_>) {
    use std::fmt::Write;
    let text = |s: &str| serde_json::to_string(s).unwrap_or_default();
    // Writing to a String cannot fail.
    let _ = match outcome {
        Outcome::Delivered { partition, offset } => write!(
            json,
            ",\"outcome\":\"delivered\",\"partition\":{partition},\"offset\":{offset}}}"
        ),
        Outcome::DeadLettered { reason, to } => write!(
            json,
            ",\"outcome\":\"dead_lettered\",\"reason\":{},\"dead_letter_to\":{}}}",
            text(reason),
            text(to)
        ),
        Outcome::Spooled => write!(json, ",\"outcome\":\"spooled\"}}"),
        Outcome::NotSent => write!(json, ",\"outcome\":\"not_sent\"}}"),
    };
}

/// An open tap: what it writes, and what it holds for outcomes. Dropped, it closes, and the
/// sessions stop offering to it.
pub struct Opened {
    pub events: async_channel::Receiver<String>,
    pub held: Arc<Held>,
    taps: Arc<Taps>,
}

impl Drop for Opened {
    fn drop(&mut self) {
        self.events.close();
        self.taps.prune();
    }
}

/// The taps open now.
#[derive(Default)]
pub struct Taps {
    open: AtomicUsize,
    /// Changes whenever a tap opens or closes: a session's [`View`] is taken again then.
    version: AtomicUsize,
    taps: Mutex<Vec<Arc<Tap>>>,
}

/// The taps open when a session last looked, each with the session's cache for its filter's
/// regex: offering a frame takes no lock, and a regex search no shared cache.
pub struct View {
    version: usize,
    taps: Vec<(Arc<Tap>, Option<Cache>)>,
    /// Where a kept event is written first: the JSON of each event a tap keeps is then made
    /// in one allocation of its own size (writing it out in a growing string took eight, and
    /// those past 1 KiB sent glibc's allocator sorting its free lists on the session's thread).
    scratch: Vec<u8>,
}

impl Default for View {
    fn default() -> View {
        View {
            version: usize::MAX,
            taps: Vec::new(),
            scratch: Vec::new(),
        }
    }
}

impl Taps {
    pub fn new() -> Arc<Taps> {
        Arc::default()
    }

    /// True when a tap is open: only then is an event worth making.
    pub fn any(&self) -> bool {
        self.open.load(Relaxed) > 0
    }

    /// Opens a tap: the JSON lines of the events `filter` keeps, and the events it holds for
    /// their outcomes. It closes when they are dropped. An error when [`MAX_TAPS`] are open.
    pub fn open(self: &Arc<Self>, filter: Filter) -> Result<Opened, String> {
        let mut taps = self.taps.lock().unwrap_or_else(|p| p.into_inner());
        taps.retain(|t| !t.queue.is_closed());
        if taps.len() >= MAX_TAPS {
            return Err(format!("{MAX_TAPS} taps are open already"));
        }
        let (queue, events) = async_channel::bounded(TAP_QUEUE);
        let held = Arc::new(Held::default());
        taps.push(Arc::new(Tap {
            filter,
            queue,
            held: held.clone(),
        }));
        self.changed(&taps);
        Ok(Opened {
            events,
            held,
            taps: self.clone(),
        })
    }

    fn changed(&self, taps: &[Arc<Tap>]) {
        self.open.store(taps.len(), Relaxed);
        self.version.fetch_add(1, Relaxed);
    }

    /// Lets closed taps go.
    fn prune(&self) {
        let mut taps = self.taps.lock().unwrap_or_else(|p| p.into_inner());
        let before = taps.len();
        taps.retain(|t| !t.queue.is_closed());
        if taps.len() != before {
            self.changed(&taps);
        }
    }

    /// `view` as the taps are now, taken again only when they changed.
    fn look(&self, view: &mut View) {
        let version = self.version.load(Relaxed);
        if view.version == version {
            return;
        }
        let taps = self.taps.lock().unwrap_or_else(|p| p.into_inner());
        view.taps = taps
            .iter()
            .map(|t| (t.clone(), t.filter.line.as_ref().map(Regex::create_cache)))
            .collect();
        view.version = version;
    }

    /// Gives `event` to every open tap that keeps it (`view` is the session's); a tap that is
    /// full loses it (counted). An event with a record is held by each tap for the record's
    /// outcome: what to watch the record with is returned.
    pub fn offer(
        &self,
        view: &mut View,
        event: &Event<'_>,
        metrics: &Arc<Metrics>,
    ) -> Option<Box<dyn Watch>> {
        self.look(view);
        let View { taps, scratch, .. } = view;
        // The event's JSON, written into the session's scratch buffer when a tap keeps it.
        let mut json: Option<String> = None;
        let (mut first, mut more) = (None, Vec::new());
        let mut closed = false;
        // A tap's queue is only looked at when its filter keeps a frame: the status server's
        // thread takes from it, and a look for every frame would pull its state to and fro
        // between the threads.
        for (tap, cache) in taps.iter_mut() {
            if !tap.filter.keeps(event, cache.as_mut()) {
                continue;
            }
            let line = json.get_or_insert_with(|| {
                let mut buffer = std::mem::take(scratch);
                buffer.clear();
                // Serializing to memory fails only for a map with keys that are not strings.
                let _ = serde_json::to_writer(&mut buffer, event);
                String::from_utf8(buffer).unwrap_or_default()
            });
            if event.outcome.is_some() {
                match tap.queue.try_send(line.to_owned()) {
                    Err(async_channel::TrySendError::Full(_)) => {
                        metrics.tap_dropped.fetch_add(1, Relaxed);
                    }
                    Err(async_channel::TrySendError::Closed(_)) => closed = true,
                    Ok(()) => {}
                }
                continue;
            }
            if tap.queue.is_closed() {
                closed = true;
                continue;
            }
            // Without its closing brace, and with room for the outcome written after it.
            let open = line.strip_suffix('}').unwrap_or(line);
            let mut held = String::with_capacity(open.len() + END_ROOM);
            held.push_str(open);
            match tap.held.hold(held, Instant::now()) {
                Some(slot) => {
                    let waiting = (slot, tap.queue.clone());
                    match first {
                        None => first = Some(waiting),
                        Some(_) => more.push(waiting),
                    }
                }
                None => {
                    metrics.tap_dropped.fetch_add(1, Relaxed);
                }
            }
        }
        if let Some(json) = json {
            *scratch = json.into_bytes();
        }
        if closed {
            self.prune();
        }
        Some(Box::new(Watched {
            first: first?,
            more,
            metrics: metrics.clone(),
        }))
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
        let mut view = View::default();
        assert!(!taps.any());
        let all_tap = taps.open(Filter::default()).expect("tap");
        let errors_tap = taps
            .open(Filter {
                rule: Some("errors".into()),
                line: Some(Regex::new("disk").expect("regex")),
                source: Some("10.0.0.".into()),
                ..Filter::default()
            })
            .expect("tap");
        let (all, errors, errors_held) = (&all_tap.events, &errors_tap.events, &errors_tap.held);
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
        let watch = taps
            .offer(
                &mut view,
                &event("disk full", &origin, &["errors"], Some(&record)),
                &metrics,
            )
            .expect("a record kept is watched");
        assert!(errors_held.any(), "held for its outcome");
        assert!(taps
            .offer(
                &mut view,
                &event("disk full", &origin, &["other"], None),
                &metrics
            )
            .is_none());
        taps.offer(
            &mut view,
            &event("cpu hot", &origin, &["errors"], None),
            &metrics,
        );
        assert_eq!(all.len(), 2, "the unrouted ones at once");
        assert_eq!(errors.len(), 0);
        watch.outcome(Outcome::Delivered {
            partition: 2,
            offset: 41,
        });
        assert_eq!(all.len(), 3);
        assert_eq!(errors.len(), 1);
        let first: serde_json::Value =
            serde_json::from_str(&errors.try_recv().expect("event")).expect("JSON");
        assert_eq!(first["line"], "disk full");
        assert_eq!(first["source"], "10.0.0.7:5140");
        assert_eq!(first["rules"], serde_json::json!(["errors"]));
        assert_eq!(first["outcome"], "delivered");
        assert_eq!(
            (first["partition"].clone(), first["offset"].clone()),
            (2.into(), 41.into())
        );
        assert_eq!(first["topic"], "logs");
        assert_eq!(first["payload"], "payload");
        assert_eq!(first["headers"], serde_json::json!([["h", "v"]]));
        assert!(
            errors_held.expired(Duration::ZERO).is_empty(),
            "settled, not held"
        );

        // A tap whose reader is behind loses events, counted; the others get theirs.
        for _ in 0..TAP_QUEUE {
            taps.offer(
                &mut view,
                &event("disk", &origin, &["errors"], None),
                &metrics,
            );
        }
        assert_eq!(all.len(), TAP_QUEUE);
        assert_eq!(metrics.tap_dropped.load(Relaxed), 3);
        // A closed tap is let go; past the cap, a tap is refused.
        drop(all_tap);
        drop(errors_tap);
        taps.offer(&mut view, &event("x", &origin, &[], None), &metrics);
        assert!(!taps.any());
        let open: Vec<_> = (0..MAX_TAPS)
            .map(|_| taps.open(Filter::default()).expect("tap"))
            .collect();
        assert!(taps.open(Filter::default()).is_err());
        drop(open);
    }

    /// Each outcome is written as such; an event whose record is not settled within its hold
    /// is written as in flight, and its outcome later is not written twice.
    #[test]
    fn a_held_event_is_written_with_its_outcome_or_as_in_flight() {
        let taps = Taps::new();
        let metrics = Metrics::new();
        let mut view = View::default();
        let tap = taps.open(Filter::default()).expect("tap");
        let (events, held) = (&tap.events, &tap.held);
        let origin = Origin::default();
        let record = Record {
            topic: "logs".into(),
            key: None,
            payload: bytes::Bytes::from_static(b"p"),
            block: Default::default(),
            headers: Vec::new(),
            read_ms: 0,
            ack: Default::default(),
        };
        let mut offer = || {
            taps.offer(
                &mut view,
                &event("x", &origin, &[], Some(&record)),
                &metrics,
            )
            .expect("watched")
        };
        let outcomes = [
            Outcome::DeadLettered {
                reason: "message_too_large",
                to: "dead \"letters\"",
            },
            Outcome::Spooled,
            Outcome::NotSent,
        ];
        for outcome in outcomes {
            offer().outcome(outcome);
        }
        let got: Vec<serde_json::Value> = std::iter::from_fn(|| events.try_recv().ok())
            .map(|e| serde_json::from_str(&e).expect("JSON"))
            .collect();
        assert_eq!(got[0]["outcome"], "dead_lettered");
        assert_eq!(got[0]["reason"], "message_too_large");
        assert_eq!(got[0]["dead_letter_to"], "dead \"letters\"");
        assert_eq!(got[1]["outcome"], "spooled");
        assert_eq!(got[2]["outcome"], "not_sent");
        assert_eq!(got.len(), 3);
        let late = offer();
        assert!(
            held.expired(Duration::from_secs(60)).is_empty(),
            "within its hold"
        );
        let expired = held.expired(Duration::ZERO);
        assert_eq!(expired.len(), 1);
        let e: serde_json::Value = serde_json::from_str(&expired[0]).expect("JSON");
        assert_eq!(e["outcome"], "in_flight");
        late.outcome(Outcome::Spooled);
        assert!(events.try_recv().is_err(), "written once");
        assert!(!held.any());
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
            .keeps(&event("x", origin, &[], None), None)
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
