//! `GET /tap` on the status server: the routed frames a filter keeps, one JSON object per line,
//! streamed as they come (see [`crate::base::tap`]), until `limit` events were sent or
//! `seconds` passed. It shows log records, so it needs authentication wherever `POST /reload`
//! does ([`crate::control::access`]).
//!
//! Query parameters (percent-encoded): `rule`, `topic`, `source` (address prefix), `listener`,
//! `match` (a regex on the line), `limit` (events, default unlimited), `rate` (events a second,
//! default 1000, at most 100,000: more are left out), `cpu` (the most the taps may cost, in
//! percent of the rest of hotdog's CPU time, default 3, 100 to look at every frame whatever it
//! costs), `seconds` (default 60, at most 3600).

use std::collections::VecDeque;
use std::convert::Infallible;
use std::pin::Pin;
use std::sync::Arc;
use std::time::{Duration, Instant};

use futures_lite::{FutureExt, Stream};
use http_body_util::StreamBody;
use hyper::body::{Bytes, Frame};

use crate::base::tap::{Filter, Kept, Opened, Shown, Taps, TAP_QUEUE};

/// How long a tap runs without `seconds`.
pub const DEFAULT_TIME: Duration = Duration::from_secs(60);
/// Events are written together at most this often: each write wakes the status server's
/// thread, and the reactor's for its timer, and costs about as much as a hundred events (a tap
/// that kept 100 events a second cost hotdog 1.04x with writes every 100 ms, 1.02x every 250).
const GATHER: Duration = Duration::from_millis(250);
/// The longest a tap runs.
pub const MAX_TIME: Duration = Duration::from_secs(3600);

/// The body of a tap's answer.
pub type TapBody = StreamBody<Pin<Box<dyn Stream<Item = Result<Frame<Bytes>, Infallible>> + Send>>>;

/// What a `/tap` request asks for.
#[derive(Debug)]
pub struct Request {
    pub filter: Filter,
    pub limit: Option<u64>,
    /// The most events kept a second.
    pub rate: u32,
    /// Its CPU budget, in percent ([`crate::base::tap::DEFAULT_CPU`]).
    pub cpu: u32,
    pub time: Duration,
    /// How long an event is held for its record's outcome ([`crate::base::tap::HOLD`]).
    pub hold: Duration,
}

/// Reads `/tap`'s query; an error says which parameter is wrong.
pub fn parse(query: Option<&str>) -> Result<Request, String> {
    let mut request = Request {
        filter: Filter::default(),
        limit: None,
        rate: crate::base::tap::DEFAULT_RATE,
        cpu: crate::base::tap::DEFAULT_CPU,
        time: DEFAULT_TIME,
        hold: crate::base::tap::HOLD,
    };
    for (key, value) in form_urlencoded::parse(query.unwrap_or("").as_bytes()) {
        let value = value.into_owned();
        match key.as_ref() {
            "rule" => request.filter.rule = Some(value),
            "topic" => request.filter.topic = Some(value),
            "source" => request.filter.source = Some(value),
            "listener" => request.filter.listener = Some(value),
            "match" => {
                let regex = regex_automata::meta::Regex::new(&value)
                    .map_err(|e| format!("`match` is not a regex: {e}"))?;
                request.filter.line = Some(regex);
            }
            "limit" => {
                let n = value
                    .parse()
                    .map_err(|_| format!("`limit` must be a whole number, found `{value}`"))?;
                request.limit = Some(n);
            }
            "rate" => request.rate = from_one(&key, &value, crate::base::tap::MAX_RATE, "")?,
            "cpu" => {
                request.cpu = from_one(&key, &value, crate::base::tap::MAX_CPU, " of percent")?;
            }
            "seconds" => {
                let s: u64 = value
                    .parse()
                    .map_err(|_| format!("`seconds` must be a whole number, found `{value}`"))?;
                request.time = Duration::from_secs(s).min(MAX_TIME);
            }
            other => {
                return Err(format!(
                "unknown parameter `{other}`; expected rule, topic, source, listener, match, limit, rate, cpu, seconds"
            ))
            }
        }
    }
    Ok(request)
}

/// `value`, the query's `key`, as a whole number from 1 to `max` (of `unit`); the error says
/// what it must be.
fn from_one(key: &str, value: &str, max: u32, unit: &str) -> Result<u32, String> {
    value
        .parse()
        .ok()
        .filter(|n| (1..=max).contains(n))
        .ok_or_else(|| {
            format!("`{key}` must be a whole number{unit} from 1 to {max}, found `{value}`")
        })
}

/// What a tap's stream woke for, while it waited for an event.
enum Woke {
    /// One came (`None`: the tap ended).
    Event(Option<Arc<Kept>>),
    /// Time to weigh the taps' cost.
    Govern,
}

/// What a tap's stream carries from one write to the next.
struct State {
    tap: Opened,
    /// When the tap ends.
    timer: smol::Timer,
    /// Events it may still write.
    left: u64,
    hold: Duration,
    /// Events taken from the tap's queue that wait for their records' outcomes, oldest first,
    /// each with when it was taken; at most [`TAP_QUEUE`] (more wait in the queue).
    waiting: VecDeque<(Instant, Arc<Kept>)>,
    /// The last write had events: the next gathers at once, without waiting for one to come
    /// first (one wake-up a write, not two, while events flow).
    flowing: bool,
    over: bool,
}

impl State {
    /// Takes what the tap's queue holds, as far as there is room.
    fn take(&mut self) {
        let now = Instant::now();
        while self.waiting.len() < TAP_QUEUE {
            match self.tap.events.try_recv() {
                Ok(kept) => self.waiting.push_back((now, kept)),
                Err(_) => break,
            }
        }
    }

    /// The next write: the events settled by now, and those whose hold is over, or all when
    /// the tap ends. `None` when it has ended.
    async fn next(&mut self) -> Option<Chunk> {
        if self.left == 0 || self.over {
            return None;
        }
        let mut chunk = Chunk::new(self.left);
        loop {
            if self.waiting.is_empty() && !std::mem::take(&mut self.flowing) {
                // Nothing to write until an event comes (or the end).
                // Woken meanwhile when the taps' cost is to be weighed: a filter that keeps
                // nothing can cost the most.
                let (events, timer) = (&self.tap.events, &mut self.timer);
                let first = async { Woke::Event(events.recv().await.ok()) }
                    .or(async {
                        timer.await;
                        Woke::Event(None)
                    })
                    .or(async {
                        smol::Timer::after(self.tap.next_weighing()).await;
                        Woke::Govern
                    })
                    .await;
                match first {
                    Woke::Event(Some(kept)) => self.waiting.push_back((Instant::now(), kept)),
                    Woke::Event(None) => self.over = true,
                    Woke::Govern => {
                        self.tap.govern(Duration::ZERO, 0);
                        continue;
                    }
                }
            }
            if !self.over {
                // What comes over the next moment, and the outcomes that come meanwhile, go
                // out in the same write: a write (and a wake-up of this thread) per event cost
                // more than the tap itself.
                let timer = &mut self.timer;
                self.over = async {
                    smol::Timer::after(GATHER).await;
                    false
                }
                .or(async {
                    timer.await;
                    true
                })
                .await;
            }
            self.take();
            let hold = if self.over { Duration::ZERO } else { self.hold };
            chunk.write(&mut self.waiting, hold, &self.tap);
            if !chunk.is_empty() || self.over {
                break;
            }
        }
        if chunk.is_empty() {
            return None;
        }
        self.left -= chunk.taken;
        self.flowing = true;
        Some(chunk)
    }
}

/// Opens a tap for `request`: the body that streams it, and when it ends. An error when too
/// many taps are open.
pub fn open(taps: &Arc<Taps>, request: Request) -> Result<(TapBody, Instant), String> {
    let tap = taps.open(request.filter, request.rate, request.cpu)?;
    let until = Instant::now() + request.time;
    let state = State {
        tap,
        timer: smol::Timer::at(until),
        left: request.limit.unwrap_or(u64::MAX),
        hold: request.hold,
        waiting: VecDeque::new(),
        flowing: false,
        over: false,
    };
    let stream = futures_lite::stream::unfold(state, |mut state| async move {
        let chunk = state.next().await?;
        Some((Ok(Frame::data(Bytes::from(chunk.text))), state))
    });
    Ok((StreamBody::new(Box::pin(stream)), until))
}

/// The events of one write, at most as many as the tap has left.
struct Chunk {
    text: Vec<u8>,
    taken: u64,
    left: u64,
}

impl Chunk {
    fn new(left: u64) -> Chunk {
        Chunk {
            text: Vec::new(),
            taken: 0,
            left,
        }
    }

    fn is_empty(&self) -> bool {
        self.taken == 0
    }

    /// Writes the events of `waiting` that are settled, or waited `hold` or longer (as in
    /// flight), as far as the tap has events left, and gives them back to `tap`; the others
    /// wait on, in their order.
    fn write(
        &mut self,
        waiting: &mut VecDeque<(Instant, Arc<Kept>)>,
        hold: Duration,
        tap: &Opened,
    ) {
        let now = Instant::now();
        let taken_before = self.taken;
        for _ in 0..waiting.len() {
            let Some((at, kept)) = waiting.pop_front() else {
                break;
            };
            let outcome = match kept.settled() {
                _ if self.taken >= self.left => None,
                Some(settled) => Some(settled),
                None if now.duration_since(at) >= hold => Some(Shown::InFlight),
                None => None,
            };
            let Some(outcome) = outcome else {
                waiting.push_back((at, kept));
                continue;
            };
            kept.write(outcome, &mut self.text);
            self.text.push(b'\n');
            self.taken += 1;
            tap.written(kept);
        }
        tap.restock();
        tap.govern(now.elapsed(), self.taken - taken_before);
    }
}

/// What `hotdog tap` asks a running hotdog for.
#[derive(Debug, Default)]
pub struct Ask {
    pub rule: Option<String>,
    pub topic: Option<String>,
    pub source: Option<String>,
    pub listener: Option<String>,
    pub pattern: Option<String>,
    pub limit: Option<u64>,
    pub rate: Option<u32>,
    pub cpu: Option<u32>,
    pub duration: Duration,
}

impl Ask {
    /// The query of `GET /tap` that asks for this.
    pub fn query(&self) -> String {
        let mut q = form_urlencoded::Serializer::new(String::new());
        for (key, value) in [
            ("rule", &self.rule),
            ("topic", &self.topic),
            ("source", &self.source),
            ("listener", &self.listener),
            ("match", &self.pattern),
        ] {
            if let Some(v) = value {
                q.append_pair(key, v);
            }
        }
        if let Some(n) = self.limit {
            q.append_pair("limit", &n.to_string());
        }
        if let Some(n) = self.rate {
            q.append_pair("rate", &n.to_string());
        }
        if let Some(n) = self.cpu {
            q.append_pair("cpu", &n.to_string());
        }
        q.append_pair("seconds", &self.duration.as_secs().max(1).to_string());
        q.finish()
    }
}

/// What `hotdog tap` wrote, and what the taps left out while it ran.
#[derive(Debug)]
pub struct Followed {
    pub events: u64,
    /// `tap.dropped` and `tap.skipped` went up by this much meanwhile (every tap's, counted
    /// by hotdog as a whole); `None` when `/stats` could not be read.
    pub left_out: Option<(i64, i64)>,
}

impl std::fmt::Display for Followed {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{} events", self.events)?;
        match self.left_out {
            Some((dropped, skipped)) if dropped > 0 || skipped > 0 => write!(
                f,
                "; meanwhile the taps left out {dropped} events (past their rate, or not read in \
                 time: tap.dropped) and did not look at {skipped} frames (to keep within their \
                 CPU budget, --cpu: tap.skipped)"
            ),
            _ => Ok(()),
        }
    }
}

/// `tap.dropped` and `tap.skipped`, from `server`'s `/stats`.
async fn left_out(
    server: &crate::control::client::Server,
    token: Option<&str>,
) -> Option<(i64, i64)> {
    let answer = crate::control::client::get(server, token, "/stats")
        .await
        .ok()?;
    let body = answer.success().await.ok()?.bytes().await.ok()?;
    let stats: serde_json::Value = serde_json::from_slice(&body).ok()?;
    let get = |name: &str| stats["stats"][name].as_i64().unwrap_or(0);
    Some((get("tap.dropped"), get("tap.skipped")))
}

/// `hotdog tap`: asks the status `server` for a tap and
/// writes its events to `out` as they come, until it ends (limit, duration) or the server
/// closes. Returns how many events were written, and what the taps left out meanwhile; an
/// error says what went wrong (refused, 401, ...).
pub async fn follow(
    server: &crate::control::client::Server,
    token: Option<&str>,
    ask: &Ask,
    out: &mut impl std::io::Write,
) -> Result<Followed, String> {
    let before = left_out(server, token).await;
    use http_body_util::BodyExt;
    let mut answer = crate::control::client::get(server, token, &format!("/tap?{}", ask.query()))
        .await?
        .success()
        .await?;
    let mut events = 0;
    while let Some(frame) = answer.body.frame().await {
        let frame = frame.map_err(|e| format!("the tap broke off: {e}"))?;
        if let Ok(data) = frame.into_data() {
            events += data.iter().filter(|b| **b == b'\n').count() as u64;
            out.write_all(&data)
                .and_then(|()| out.flush())
                .map_err(|e| format!("cannot write: {e}"))?;
        }
    }
    let after = left_out(server, token).await;
    let left_out = before
        .zip(after)
        .map(|((d0, s0), (d1, s1))| (d1 - d0, s1 - s0));
    Ok(Followed { events, left_out })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::base::metrics::Metrics;
    use crate::base::tap::{Event, Labels};
    use http_body_util::BodyExt;

    /// The lines a tap's body streams for a `query` when `n` frames are offered, and in how
    /// many writes.
    fn streamed(query: &str, n: usize) -> (Vec<String>, usize) {
        let taps = Taps::new();
        let (mut body, _) = open(&taps, parse(Some(query)).expect("query")).expect("open");
        let (metrics, origin) = (Metrics::new(), hotdog_stages::core::Origin::default());
        let mut view = crate::base::tap::View::default();
        for i in 0..n {
            let line = format!("frame {i}");
            let _ = taps.offer(
                &mut view,
                &Event {
                    line: &line,
                    origin: &origin,
                    rules: Labels::Given(Vec::new()),
                    record: None,
                },
                &metrics,
            );
        }
        let mut writes = Vec::new();
        smol::block_on(async {
            while let Some(frame) = body.frame().await {
                if let Ok(data) = frame.expect("frame").into_data() {
                    writes.push(String::from_utf8_lossy(&data).into_owned());
                }
            }
        });
        let lines = writes
            .iter()
            .flat_map(|w| w.lines())
            .map(String::from)
            .collect();
        (lines, writes.len())
    }

    #[test]
    fn events_that_come_together_go_out_in_one_write_within_the_limit_and_the_time() {
        // 8 waiting, a limit of 5: one write of 5, and the tap ends there.
        let (lines, writes) = streamed("limit=5&seconds=5", 8);
        assert_eq!((lines.len(), writes), (5, 1), "{lines:?}");
        assert!(lines[0].contains("\"line\":\"frame 0\""), "{}", lines[0]);
        assert!(lines[4].contains("frame 4"), "{}", lines[4]);
        // No limit: what came is written, and the tap ends at its time.
        let started = Instant::now();
        let (lines, writes) = streamed("seconds=1", 3);
        assert_eq!((lines.len(), writes), (3, 1), "{lines:?}");
        let took = started.elapsed();
        assert!(
            (Duration::from_secs(1)..Duration::from_secs(3)).contains(&took),
            "{took:?}"
        );
    }

    /// The writes of a tap held `hold`, for `seconds`, to which `offer` offers (and maybe
    /// settles) events once it is open; each write with when it came.
    fn held_writes(
        seconds: u64,
        hold: Duration,
        offer: impl FnOnce(&Taps, &dyn Fn(&Taps, &str) -> Arc<hotdog_stages::core::Watch>),
    ) -> Vec<(Duration, String)> {
        let taps = Taps::new();
        let mut request = parse(Some(&format!("seconds={seconds}"))).expect("query");
        request.hold = hold;
        let (mut body, _) = open(&taps, request).expect("open");
        let record = hotdog_stages::core::Record {
            topic: "logs".into(),
            key: None,
            payload: Bytes::from_static(b"p"),
            block: Default::default(),
            headers: Vec::new(),
            read_ms: 0,
            ack: Default::default(),
        };
        let (metrics, origin) = (Metrics::new(), hotdog_stages::core::Origin::default());
        let view = std::cell::RefCell::new(crate::base::tap::View::default());
        offer(&taps, &|taps: &Taps, line: &str| {
            taps.offer(
                &mut view.borrow_mut(),
                &Event {
                    line,
                    origin: &origin,
                    rules: Labels::Given(Vec::new()),
                    record: Some(&record),
                },
                &metrics,
            )
            .expect("watched")
        });
        let started = Instant::now();
        let mut writes = Vec::new();
        smol::block_on(async {
            while let Some(frame) = body.frame().await {
                if let Ok(data) = frame.expect("frame").into_data() {
                    writes.push((
                        started.elapsed(),
                        String::from_utf8_lossy(&data).into_owned(),
                    ));
                }
            }
        });
        writes
    }

    /// An event whose record is settled in time is written with its outcome; one still in
    /// flight after its hold, or when the tap ends, is written as such.
    #[test]
    fn held_events_are_written_with_their_outcome_or_as_in_flight() {
        let mut slow = None;
        let writes = held_writes(2, Duration::from_millis(300), |taps, offer| {
            let delivered = offer(taps, "delivered");
            slow = Some(offer(taps, "slow"));
            delivered.tell(hotdog_stages::core::Outcome::Delivered {
                partition: 0,
                offset: 7,
            });
        });
        assert_eq!(writes.len(), 2, "{writes:?}");
        assert!(
            writes[0].1.starts_with("{\"line\":\"delivered\""),
            "{writes:?}"
        );
        assert!(writes[0]
            .1
            .ends_with(",\"outcome\":\"delivered\",\"partition\":0,\"offset\":7}\n"));
        assert!(writes[1].1.starts_with("{\"line\":\"slow\""), "{writes:?}");
        assert!(writes[1].1.ends_with(",\"outcome\":\"in_flight\"}\n"));
        assert!(
            (Duration::from_millis(250)..Duration::from_millis(1500)).contains(&writes[1].0),
            "written after its hold, before the tap's end: {writes:?}"
        );
        // Held longer than the tap runs: written when it ends.
        let mut last = None;
        let writes = held_writes(1, Duration::from_secs(60), |taps, offer| {
            last = Some(offer(taps, "last"));
        });
        assert_eq!(writes.len(), 1, "{writes:?}");
        assert!(writes[0].1.contains("\"outcome\":\"in_flight\""));
        assert!(writes[0].0 >= Duration::from_millis(900), "{writes:?}");
    }

    #[test]
    fn the_query_is_read_and_a_bad_one_says_what_is_wrong() {
        let r = parse(Some(
            "rule=errors&topic=logs&source=10.0.&listener=514&match=disk%20full&limit=5&rate=50&cpu=20&seconds=7200",
        ))
        .expect("query");
        assert_eq!(r.filter.listener.as_deref(), Some("514"));
        assert_eq!(r.filter.rule.as_deref(), Some("errors"));
        assert_eq!(r.filter.topic.as_deref(), Some("logs"));
        assert_eq!(r.filter.source.as_deref(), Some("10.0."));
        assert!(r
            .filter
            .line
            .as_ref()
            .is_some_and(|re| re.is_match("a disk full here")));
        assert_eq!(
            (r.limit, r.rate, r.cpu, r.time),
            (Some(5), 50, 20, MAX_TIME)
        );
        let d = parse(None).expect("no query");
        assert_eq!(
            (d.limit, d.rate, d.cpu, d.time),
            (
                None,
                crate::base::tap::DEFAULT_RATE,
                crate::base::tap::DEFAULT_CPU,
                DEFAULT_TIME
            )
        );
        for (q, why) in [
            ("match=(", "`match` is not a regex"),
            ("limit=x", "`limit` must be a whole number"),
            ("seconds=-1", "`seconds` must be a whole number"),
            ("rate=0", "`rate` must be a whole number from 1 to 100000"),
            (
                "rate=100001",
                "`rate` must be a whole number from 1 to 100000",
            ),
            (
                "cpu=0",
                "`cpu` must be a whole number of percent from 1 to 100",
            ),
            (
                "cpu=5%",
                "`cpu` must be a whole number of percent from 1 to 100",
            ),
            (
                "cpu=101",
                "`cpu` must be a whole number of percent from 1 to 100",
            ),
            ("rules=x", "unknown parameter `rules`"),
        ] {
            let e = parse(Some(q)).expect_err(q);
            assert!(e.starts_with(why), "{q}: {e}");
        }
    }
}
