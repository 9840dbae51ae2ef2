//! `GET /tap` on the status server: the routed frames a filter keeps, one JSON object per line,
//! streamed as they come (see [`crate::base::tap`]), until `limit` events were sent or
//! `seconds` passed. It shows log records, so it needs authentication wherever `POST /reload`
//! does ([`crate::control::access`]).
//!
//! Query parameters (percent-encoded): `rule`, `topic`, `source` (address prefix), `match` (a
//! regex on the line), `limit` (events, default unlimited), `seconds` (default 60, at most
//! 3600).

use std::convert::Infallible;
use std::pin::Pin;
use std::time::{Duration, Instant};

use futures_lite::{FutureExt, Stream};
use http_body_util::StreamBody;
use hyper::body::{Bytes, Frame};

use crate::base::tap::{Filter, Taps};

/// How long a tap runs without `seconds`.
pub const DEFAULT_TIME: Duration = Duration::from_secs(60);
/// Events that come within this long of the first of them are written together.
const GATHER: Duration = Duration::from_millis(100);
/// The longest a tap runs.
pub const MAX_TIME: Duration = Duration::from_secs(3600);

/// The body of a tap's answer.
pub type TapBody = StreamBody<Pin<Box<dyn Stream<Item = Result<Frame<Bytes>, Infallible>> + Send>>>;

/// What a `/tap` request asks for.
#[derive(Debug)]
pub struct Request {
    pub filter: Filter,
    pub limit: Option<u64>,
    pub time: Duration,
}

/// Reads `/tap`'s query; an error says which parameter is wrong.
pub fn parse(query: Option<&str>) -> Result<Request, String> {
    let mut request = Request {
        filter: Filter::default(),
        limit: None,
        time: DEFAULT_TIME,
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
            "seconds" => {
                let s: u64 = value
                    .parse()
                    .map_err(|_| format!("`seconds` must be a whole number, found `{value}`"))?;
                request.time = Duration::from_secs(s).min(MAX_TIME);
            }
            other => {
                return Err(format!(
                "unknown parameter `{other}`; expected rule, topic, source, listener, match, limit, seconds"
            ))
            }
        }
    }
    Ok(request)
}

/// Opens a tap for `request`: the body that streams it, and when it ends. An error when too
/// many taps are open.
pub fn open(taps: &Taps, request: Request) -> Result<(TapBody, Instant), String> {
    let events = taps.open(request.filter)?;
    let until = Instant::now() + request.time;
    let left = request.limit.unwrap_or(u64::MAX);
    let stream = futures_lite::stream::unfold(
        (events, smol::Timer::at(until), left, false),
        |(events, mut timer, left, over)| async move {
            if left == 0 || over {
                return None;
            }
            let first = async { events.recv().await.ok() }
                .or(async {
                    (&mut timer).await;
                    None
                })
                .await?;
            // What comes over the next moment goes out in the same write: a write (and a
            // wake-up of the status server's thread) per event cost more than the tap itself.
            let over = async {
                smol::Timer::after(GATHER).await;
                false
            }
            .or(async {
                (&mut timer).await;
                true
            })
            .await;
            let mut chunk = first;
            chunk.push('\n');
            let mut taken = 1;
            while taken < left {
                let Ok(event) = events.try_recv() else {
                    break;
                };
                chunk.push_str(&event);
                chunk.push('\n');
                taken += 1;
            }
            let frame = Frame::data(Bytes::from(chunk));
            Some((Ok(frame), (events, timer, left - taken, over)))
        },
    );
    Ok((StreamBody::new(Box::pin(stream)), until))
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
        q.append_pair("seconds", &self.duration.as_secs().max(1).to_string());
        q.finish()
    }
}

/// `hotdog tap`: asks the status `server` for a tap and
/// writes its events to `out` as they come, until it ends (limit, duration) or the server
/// closes. Returns how many events were written; an error says what went wrong (refused,
/// 401, ...).
pub async fn follow(
    server: &crate::control::client::Server,
    token: Option<&str>,
    ask: &Ask,
    out: &mut impl std::io::Write,
) -> Result<u64, String> {
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
    Ok(events)
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
        let taps = Taps::default();
        let (mut body, _) = open(&taps, parse(Some(query)).expect("query")).expect("open");
        let (metrics, origin) = (Metrics::new(), hotdog_stages::core::Origin::default());
        for i in 0..n {
            let line = format!("frame {i}");
            taps.offer(
                &Event::new(&line, &origin, Labels::Given(Vec::new()), None),
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

    #[test]
    fn the_query_is_read_and_a_bad_one_says_what_is_wrong() {
        let r = parse(Some(
            "rule=errors&topic=logs&source=10.0.&listener=514&match=disk%20full&limit=5&seconds=7200",
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
        assert_eq!((r.limit, r.time), (Some(5), MAX_TIME));
        let d = parse(None).expect("no query");
        assert_eq!((d.limit, d.time), (None, DEFAULT_TIME));
        for (q, why) in [
            ("match=(", "`match` is not a regex"),
            ("limit=x", "`limit` must be a whole number"),
            ("seconds=-1", "`seconds` must be a whole number"),
            ("rules=x", "unknown parameter `rules`"),
        ] {
            let e = parse(Some(q)).expect_err(q);
            assert!(e.starts_with(why), "{q}: {e}");
        }
    }
}
