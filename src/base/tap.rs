//! Taps: what `hotdog tap` shows. A session offers every frame it routed (the line, its source,
//! the rules that matched, the record made of it) to the taps open at that moment; for a frame
//! a tap's filter keeps, the session copies what the tap shows into one [`Kept`] and puts it in
//! the tap's bounded queue. The status server's thread takes it from there, waits for its
//! record's outcome (delivered, with its partition and offset, or dead-lettered, with why: kept
//! in the [`Kept`]'s [`Watch`] by whichever thread settles the record) and writes it as one JSON
//! line; one still in flight after [`HOLD`] is written as such. A tap never slows the pipeline
//! down by more than its CPU budget: with no tap open, offering is one atomic load; a tap whose
//! client reads too slowly loses events (counted in `tap.dropped`), never records; and when
//! what the taps cost passes their budget (a regex that is dear on every line), the sessions
//! look at only some of the frames, chosen at random, and count the others in `tap.skipped`
//! (see [`Taps::govern`]).

use std::borrow::Cow;
use std::ops::Range;
use std::sync::atomic::Ordering::Relaxed;
use std::sync::atomic::{AtomicU32, AtomicU64, AtomicUsize};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant, SystemTime};

use concurrent_queue::ConcurrentQueue;
use hotdog_stages::core::{Origin, Record, Settled, Watch};
use hotdog_stages::route::Rules;
use regex_automata::meta::{Cache, Regex};
use regex_automata::Input;
use serde::ser::{SerializeMap, SerializeSeq};
use serde::{Serialize, Serializer};

use crate::base::metrics::Metrics;

/// Taps open at once; one more is refused.
pub const MAX_TAPS: usize = 8;
/// Events a tap's queue holds for the status server's thread; more are dropped and counted.
/// The thread holds as many again while they wait for their records' outcomes.
pub const TAP_QUEUE: usize = 4096;

/// The events a tap keeps a second unless it asks for another rate; what its filter keeps
/// beyond that is left out (counted in `tap.dropped`): a tap samples, so that one that keeps
/// every frame of a busy hotdog costs no more than one that keeps this many.
pub const DEFAULT_RATE: u32 = 1000;
/// The most a tap may ask for.
pub const MAX_RATE: u32 = 100_000;
/// A tap's rate is kept over windows this long: `rate / 10` events each.
const WINDOW_MS: u64 = 100;

/// The most CPU a tap may cost unless it asks for another budget, in percent of what hotdog
/// spends on everything else: what the sessions spend offering frames to the taps (filters,
/// copies) and the status server's thread writing events. Past it, the sessions look at only
/// some of the frames (see [`Taps::govern`]).
pub const DEFAULT_CPU: u32 = 3;
/// The most a tap may ask for: a tap with this budget looks at every frame, whatever it costs.
pub const MAX_CPU: u32 = 100;
/// One offer in this many, chosen at random, is timed: what the sessions spend is estimated
/// from those, for a clock read per 32 frames, not two per frame. While the sessions look at
/// one frame in a stride, one in `TIMED / stride` of those is timed (every one from a stride of
/// `TIMED` on): as many timings a second, for an estimate as good.
const TIMED: u32 = 64;
/// How often the taps' cost is weighed against their budget.
const GOVERN_EVERY: Duration = Duration::from_millis(250);
/// How soon it is weighed when the first tap opens, and after a weighing that found it over
/// the budget: a filter that costs many times its budget does so for this long, a few times.
const GOVERN_SOON: Duration = Duration::from_millis(50);
/// What a written event costs beyond what the timings see (the sessions' copy and the write
/// are timed): its record's outcome told on librdkafka's thread, and the connections' threads'
/// other work made slower by its copy. Over RELP, events cost 2.6 µs each in all, 1 µs of it
/// the write (`dev/tap-cost.sh`, a tap that sends its events against one that only copies them).
const EVENT_COST: Duration = Duration::from_micros(2);
/// The fewest frames the sessions look at: one in this many.
const MAX_STRIDE: u32 = 1 << 16;

/// Spare events kept for the sessions to fill, at most: a kept event costs no allocation, and
/// no free on another thread, which cost its connection's thread more than the copy (the status
/// server's thread freed them by the hundred, into the arena the connection's thread allocates
/// from). They are made on the status server's thread, as many as half a tap's rate: made on
/// the connections' threads and kept, they had lain among what those threads allocate for
/// every line, and cost them more than the tap itself did (over RELP, `dev/tap-cost.sh`: 30 ms
/// more a run against 12, and 1.054x the CPU against 1.031x).
const SPARE: usize = 1024;
/// The fewest spare events kept for a tap, however low its rate.
const SPARE_MIN: usize = 64;
/// A spare event's room for its text, and for its rule labels and headers: what a line of
/// 400 bytes needs; a longer one grows it, in the status server's thread's heap still.
const SPARE_TEXT: usize = 1024;
const SPARE_PARTS: usize = 4;
/// A written event whose buffer grew beyond this is freed, not kept spare.
const SPARE_BYTES: usize = 8 * 1024;

/// How long an event whose frame made a record waits for the record's outcome; then it is
/// written as `in_flight` (the broker is slow or away: the tap still shows what comes).
pub const HOLD: Duration = Duration::from_secs(5);

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

/// One routed frame as a tap's filter sees it: made for every frame while a tap is open, so it
/// only borrows.
pub struct Event<'a> {
    /// The frame's text (invalid UTF-8 replaced).
    pub line: &'a str,
    pub origin: &'a Origin,
    /// The rules that matched, in order.
    pub rules: Labels<'a>,
    /// The record made of it; `None`: no rule forwarded it.
    pub record: Option<&'a Record>,
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

impl Filter {
    /// True when this filter keeps `e`; `cache` is the session's for the filter's regex.
    fn keeps(&self, e: &Event<'_>, cache: Option<&mut Cache>) -> bool {
        self.rule.as_ref().is_none_or(|r| e.rules.has(r))
            && self
                .topic
                .as_deref()
                .is_none_or(|t| e.record.is_some_and(|r| r.topic == t))
            && self.source.as_deref().is_none_or(|s| {
                e.origin
                    .peer_addr
                    .as_deref()
                    .is_some_and(|a| a.starts_with(s))
            })
            && self.listener.as_deref().is_none_or(|l| {
                e.origin.listener.as_deref().is_some_and(|a| {
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

/// What a written event says became of its frame.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Shown<'a> {
    /// No rule forwarded it.
    Unrouted,
    /// What became of its record.
    Record(&'a Settled),
    /// Its record was not settled within its hold, or when the tap ended.
    InFlight,
}

/// A frame a tap kept, copied by its session into one buffer: its JSON is written on the status
/// server's thread, many events at a time (written on the session's thread, for one frame in
/// fifty, the same code cost several times as much: it was never warm there). The same one goes
/// to every tap that keeps the frame.
#[derive(Default)]
pub struct Kept {
    /// The event's text, one field after another (the payload as Kafka gets it, so maybe not
    /// UTF-8); the ranges below are into it.
    text: Vec<u8>,
    line: Range<usize>,
    source: Option<Range<usize>>,
    listener: Option<Range<usize>>,
    tls_client_cn: Option<Range<usize>>,
    /// The rule labels, then each header's name and value.
    parts: Vec<Range<usize>>,
    rules: usize,
    /// The record's topic, key and payload, when the frame made one.
    record: Option<KeptRecord>,
    /// Told once what became of the record, by whichever thread settles it; the record holds
    /// it too until then. Reset when the event is filled again.
    watch: Arc<Watch>,
    /// Made on the status server's thread, as a spare: filled again once written. One a
    /// session made (there was no spare) is freed once written.
    spare: bool,
}

struct KeptRecord {
    topic: Range<usize>,
    key: Option<Range<usize>>,
    payload: Range<usize>,
}

impl Kept {
    /// A spare event, for the sessions to fill (see [`SPARE`]).
    fn spare() -> Kept {
        Kept {
            text: Vec::with_capacity(SPARE_TEXT),
            parts: Vec::with_capacity(SPARE_PARTS),
            spare: true,
            ..Kept::default()
        }
    }

    /// The copy of `event`.
    fn new(event: &Event<'_>) -> Kept {
        // Room for the line and the payload, the two that matter, and the few short fields;
        // the rare event with long headers or many rules grows it once.
        let size = event.line.len() + event.record.map_or(0, |r| r.payload.len()) + 256;
        let mut kept = Kept {
            text: Vec::with_capacity(size),
            ..Kept::default()
        };
        kept.fill(event);
        kept
    }

    /// Makes this the copy of `event`, in the buffers it has.
    fn fill(&mut self, event: &Event<'_>) {
        let origin = event.origin;
        let headers = event.record.map_or(&[][..], |r| r.headers.as_slice());
        let text = &mut self.text;
        text.clear();
        let mut put = |bytes: &[u8]| {
            let start = text.len();
            text.extend_from_slice(bytes);
            start..text.len()
        };
        self.line = put(event.line.as_bytes());
        self.source = origin.peer_addr.as_deref().map(|s| put(s.as_bytes()));
        self.listener = origin.listener.as_deref().map(|s| put(s.as_bytes()));
        self.tls_client_cn = origin.tls_client_cn.as_deref().map(|s| put(s.as_bytes()));
        self.parts.clear();
        self.parts
            .extend(event.rules.each().map(|l| put(l.as_bytes())));
        self.rules = self.parts.len();
        for (name, value) in headers {
            self.parts.push(put(name.as_bytes()));
            self.parts.push(put(value.as_bytes()));
        }
        self.record = event.record.map(|r| KeptRecord {
            topic: put(r.topic.as_bytes()),
            key: r.key.as_deref().map(|k| put(k.as_bytes())),
            payload: put(&r.payload),
        });
        match Arc::get_mut(&mut self.watch) {
            Some(watch) => watch.reset(),
            // Its last record is still in flight, and holds the old one.
            None => self.watch = Arc::default(),
        }
    }

    /// What became of it, once known.
    pub fn settled(&self) -> Option<Shown<'_>> {
        match self.record {
            None => Some(Shown::Unrouted),
            Some(_) => self.watch.settled().map(Shown::Record),
        }
    }

    /// Writes it as one JSON object (no newline), with `outcome`, to `out`.
    pub fn write(&self, outcome: Shown<'_>, out: &mut Vec<u8>) {
        // Serializing to memory fails only for a map with keys that are not strings.
        let _ = serde_json::to_writer(out, &Json(self, outcome));
    }

    fn text(&self, range: &Range<usize>) -> Cow<'_, str> {
        hotdog_stages::core::text_of(self.text.get(range.clone()).unwrap_or_default())
    }
}

/// A [`Kept`] with its outcome, as JSON: `line`, `source`, `listener`, `tls_client_cn` (only
/// with one), `rules`, then the record's `topic`, `key`, `headers`, `payload` (when there is
/// one), then `outcome` and what goes with it.
struct Json<'a>(&'a Kept, Shown<'a>);

impl Serialize for Json<'_> {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        let Json(k, outcome) = self;
        let text = |r: &Option<Range<usize>>| r.as_ref().map(|r| k.text(r));
        let mut m = s.serialize_map(None)?;
        m.serialize_entry("line", &k.text(&k.line))?;
        m.serialize_entry("source", &text(&k.source))?;
        m.serialize_entry("listener", &text(&k.listener))?;
        if let Some(cn) = text(&k.tls_client_cn) {
            m.serialize_entry("tls_client_cn", &cn)?;
        }
        let (rules, headers) = k.parts.split_at(k.rules.min(k.parts.len()));
        m.serialize_entry("rules", &Texts(k, rules, 1))?;
        if let Some(r) = &k.record {
            m.serialize_entry("topic", &k.text(&r.topic))?;
            if let Some(key) = text(&r.key) {
                m.serialize_entry("key", &key)?;
            }
            if !headers.is_empty() {
                m.serialize_entry("headers", &Texts(k, headers, 2))?;
            }
            m.serialize_entry("payload", &k.text(&r.payload))?;
        }
        match outcome {
            Shown::Unrouted => m.serialize_entry("outcome", "unrouted")?,
            Shown::InFlight => m.serialize_entry("outcome", "in_flight")?,
            Shown::Record(Settled::Delivered { partition, offset }) => {
                m.serialize_entry("outcome", "delivered")?;
                m.serialize_entry("partition", partition)?;
                m.serialize_entry("offset", offset)?;
            }
            Shown::Record(Settled::DeadLettered { reason, to }) => {
                m.serialize_entry("outcome", "dead_lettered")?;
                m.serialize_entry("reason", reason)?;
                m.serialize_entry("dead_letter_to", to)?;
            }
            Shown::Record(Settled::Spooled) => m.serialize_entry("outcome", "spooled")?,
            Shown::Record(Settled::NotSent) => m.serialize_entry("outcome", "not_sent")?,
        }
        m.end()
    }
}

/// Parts of a [`Kept`] as a list: of strings (`1`), or of `[name, value]` pairs (`2`).
struct Texts<'a>(&'a Kept, &'a [Range<usize>], usize);

impl Serialize for Texts<'_> {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        let Texts(k, parts, by) = self;
        let mut seq = s.serialize_seq(Some(parts.len() / by))?;
        for part in parts.chunks(*by) {
            match part {
                [one] => seq.serialize_element(&k.text(one))?,
                [name, value] => seq.serialize_element(&(k.text(name), k.text(value)))?,
                _ => {}
            }
        }
        seq.end()
    }
}

struct Tap {
    filter: Filter,
    queue: async_channel::Sender<Arc<Kept>>,
    budget: Budget,
    /// Its CPU budget, in percent (see [`DEFAULT_CPU`]).
    cpu: u32,
}

/// What a tap may still keep in the current window, shared by the sessions: the window's
/// number in the high 32 bits, the events kept in it in the low 32.
struct Budget {
    per_window: u64,
    used: AtomicU64,
}

impl Budget {
    fn new(rate: u32) -> Budget {
        Budget {
            per_window: (u64::from(rate) * WINDOW_MS).div_ceil(1000).max(1),
            used: AtomicU64::new(0),
        }
    }

    /// Takes one event from `window`'s share; false when it is spent.
    fn take(&self, window: u64) -> bool {
        let window = window & u64::from(u32::MAX);
        let mut used = self.used.load(Relaxed);
        loop {
            let next = if used >> 32 != window {
                (window << 32) | 1
            } else if used & u64::from(u32::MAX) < self.per_window {
                used + 1
            } else {
                return false;
            };
            match self
                .used
                .compare_exchange_weak(used, next, Relaxed, Relaxed)
            {
                Ok(_) => return true,
                Err(now) => used = now,
            }
        }
    }
}

/// The rate window a frame read at `origin.clock` (now, without one) falls in.
fn window_of(origin: &Origin) -> u64 {
    let at = origin.clock.unwrap_or_else(SystemTime::now);
    let ms = at
        .duration_since(SystemTime::UNIX_EPOCH)
        .map_or(0, |d| u64::try_from(d.as_millis()).unwrap_or(u64::MAX));
    ms / WINDOW_MS
}

/// The stride that brings the taps' `share` of the CPU within `budget` (fractions), `before`
/// the share the weighing before found: raised at once in proportion when over the budget (to
/// 80% of it, for room), lowered by a quarter when this weighing and the one before both found
/// under half of that (one low weighing is as likely noise). The cost of looking at frames
/// falls about in proportion to the stride; the rest (events written, at most their rate) does
/// not, so the next weighing corrects what this one misjudged.
fn next_stride(stride: u32, share: f64, before: f64, budget: f64) -> u32 {
    let aim = budget * 0.8;
    if share > budget {
        let raised = (f64::from(stride) * share / aim).ceil();
        if raised >= f64::from(MAX_STRIDE) {
            MAX_STRIDE
        } else {
            // At least one more: a weighing over the budget always looks at fewer frames.
            (raised as u32).max(stride + 1)
        }
    } else if stride > 1 && share.max(before) < aim / 2.0 {
        stride - (stride / 4).max(1)
    } else {
        stride
    }
}

/// What timing an offer adds to the time it reads, in nanoseconds: the least of a few timings
/// of nothing.
fn clock_cost() -> u64 {
    (0..32)
        .map(|_| {
            let start = Instant::now();
            u64::try_from(start.elapsed().as_nanos()).unwrap_or(u64::MAX)
        })
        .min()
        .unwrap_or(0)
}

/// The CPU time the whole process has used, all its threads; `None` where the clock cannot
/// be read (then the taps are not governed).
fn process_cpu() -> Option<Duration> {
    let t = nix::time::clock_gettime(nix::time::ClockId::CLOCK_PROCESS_CPUTIME_ID).ok()?;
    Some(Duration::new(
        u64::try_from(t.tv_sec()).ok()?,
        u32::try_from(t.tv_nsec()).ok()?,
    ))
}

/// An open tap: the events it kept, oldest first. Dropped, it closes, and the sessions stop
/// offering to it.
pub struct Opened {
    pub events: async_channel::Receiver<Arc<Kept>>,
    taps: Arc<Taps>,
    /// The spare events kept for this tap (see [`SPARE`]).
    stock: usize,
}

impl Opened {
    /// `kept` was written: the sessions may fill it again, when it is a spare one, no one else
    /// holds it and its buffer is not too big to keep.
    pub fn written(&self, mut kept: Arc<Kept>) {
        if Arc::get_mut(&mut kept).is_some_and(|k| k.spare && k.text.capacity() <= SPARE_BYTES) {
            let _ = self.taps.spare.push(kept);
        }
    }

    /// Makes spare events for the sessions, on this thread, until there are as many as this
    /// tap keeps: called after each write, for those written that were not kept.
    pub fn restock(&self) {
        self.taps.restock(self.stock);
    }

    /// Weighs the taps' cost against their budget (see [`Taps::govern`]): called on the status
    /// server's thread after each write, with what the write took and how many events it wrote.
    pub fn govern(&self, write: Duration, events: u64) {
        let unseen = EVENT_COST.saturating_mul(u32::try_from(events).unwrap_or(u32::MAX));
        self.taps.govern(write.saturating_add(unseen));
    }

    /// How long until the taps' cost is to be weighed again.
    pub fn next_weighing(&self) -> Duration {
        self.taps.next_weighing()
    }
}

impl Drop for Opened {
    fn drop(&mut self) {
        self.events.close();
        self.taps.prune();
    }
}

/// The taps open now.
pub struct Taps {
    open: AtomicUsize,
    /// Changes whenever a tap opens or closes: a session's [`View`] is taken again then.
    version: AtomicUsize,
    taps: Mutex<Vec<Arc<Tap>>>,
    /// Written events, for the sessions to fill again (see [`SPARE`]).
    spare: ConcurrentQueue<Arc<Kept>>,
    /// The sessions look at one frame in this many, chosen at random (see [`Taps::govern`]).
    stride: AtomicU32,
    /// What the sessions spent offering frames, in nanoseconds, since the last weighing: an
    /// estimate from the offers timed (see [`TIMED`]), added with their other counts.
    spent: AtomicU64,
    /// What timing an offer adds to it, in nanoseconds: taken off each one timed.
    clock: u64,
    governor: Mutex<Governor>,
}

/// What the last weighing of the taps' cost left for the next.
struct Governor {
    /// When it was, and the process's CPU time then.
    since: Option<(Instant, Duration)>,
    /// The status server's thread's time writing events since then, with their cost that no
    /// timing sees.
    written: Duration,
    /// The share it found (see [`next_stride`]).
    share: f64,
    /// How long after it the next is.
    next: Duration,
}

impl Default for Governor {
    fn default() -> Governor {
        Governor {
            since: None,
            written: Duration::ZERO,
            share: f64::MAX,
            next: GOVERN_SOON,
        }
    }
}

impl Default for Taps {
    fn default() -> Taps {
        Taps {
            open: AtomicUsize::new(0),
            version: AtomicUsize::new(0),
            taps: Mutex::new(Vec::new()),
            spare: ConcurrentQueue::bounded(SPARE),
            stride: AtomicU32::new(1),
            spent: AtomicU64::new(0),
            clock: clock_cost(),
            governor: Mutex::default(),
        }
    }
}

/// The taps open when a session last looked, each with the session's cache for its filter's
/// regex and the rate window in which the session found its budget spent: offering a frame
/// takes no lock, a regex search no shared cache, and a frame past a tap's rate is left out
/// without a look at the shared budget.
pub struct View {
    version: usize,
    taps: Vec<(Arc<Tap>, Option<Cache>, u64)>,
    /// Events left out by the taps' rates, not yet added to `tap.dropped` (the session adds
    /// them with its other counts: not a shared counter for each frame).
    left_out: u64,
    /// Frames not looked at (the taps' stride), not yet added to `tap.skipped`.
    skipped: u64,
    /// What offering cost, in nanoseconds, not yet added to [`Taps::spent`].
    spent: u64,
    /// What an offer timed here typically takes, in nanoseconds: a moving average.
    typical: u64,
    /// Picks the frames looked at, and those timed.
    rng: fastrand::Rng,
}

impl Default for View {
    fn default() -> View {
        View {
            version: usize::MAX,
            taps: Vec::new(),
            left_out: 0,
            skipped: 0,
            spent: 0,
            typical: 0,
            rng: fastrand::Rng::new(),
        }
    }
}

impl View {
    /// Adds what this session counted since the last time to the shared counters: the events
    /// left out by the taps' rates, the frames not looked at, and what offering cost.
    pub fn settle(&mut self, taps: &Taps, metrics: &Metrics) {
        if self.left_out > 0 {
            metrics
                .tap_dropped
                .fetch_add(std::mem::take(&mut self.left_out), Relaxed);
        }
        if self.skipped > 0 {
            metrics
                .tap_skipped
                .fetch_add(std::mem::take(&mut self.skipped), Relaxed);
        }
        if self.spent > 0 {
            taps.spent
                .fetch_add(std::mem::take(&mut self.spent), Relaxed);
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

    /// Opens a tap: the events `filter` keeps. It closes when they are dropped. An error when
    /// [`MAX_TAPS`] are open. At most `rate` events a second are kept, and the taps cost at most
    /// `cpu` percent (see [`DEFAULT_CPU`]; the least of the open taps' budgets holds).
    pub fn open(self: &Arc<Self>, filter: Filter, rate: u32, cpu: u32) -> Result<Opened, String> {
        let mut taps = self.taps.lock().unwrap_or_else(|p| p.into_inner());
        taps.retain(|t| !t.queue.is_closed());
        if taps.len() >= MAX_TAPS {
            return Err(format!("{MAX_TAPS} taps are open already"));
        }
        let (queue, events) = async_channel::bounded(TAP_QUEUE);
        taps.push(Arc::new(Tap {
            filter,
            queue,
            budget: Budget::new(rate),
            cpu,
        }));
        self.changed(&taps);
        drop(taps);
        let mut governor = self.governor.lock().unwrap_or_else(|p| p.into_inner());
        if governor.since.is_none() {
            // The first weighing is GOVERN_SOON from now.
            governor.since = process_cpu().map(|cpu| (Instant::now(), cpu));
        }
        drop(governor);
        let stock = usize::try_from(rate / 2).map_or(SPARE, |n| n.clamp(SPARE_MIN, SPARE));
        self.restock(stock);
        Ok(Opened {
            events,
            taps: self.clone(),
            stock,
        })
    }

    /// Makes spare events until there are `stock` (or [`SPARE`]), on the caller's thread: the
    /// status server's (see [`SPARE`]).
    fn restock(&self, stock: usize) {
        while self.spare.len() < stock {
            if self.spare.push(Arc::new(Kept::spare())).is_err() {
                break;
            }
        }
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
        if taps.is_empty() {
            // No tap: no memory kept for one, and the next looks at every frame at first.
            while self.spare.pop().is_ok() {}
            self.stride.store(1, Relaxed);
            self.spent.store(0, Relaxed);
            *self.governor.lock().unwrap_or_else(|p| p.into_inner()) = Governor::default();
        }
    }

    /// Weighs what the taps cost against their budget, when it is due ([`GOVERN_SOON`] after
    /// the first tap opens and after a weighing over the budget, [`GOVERN_EVERY`] otherwise):
    /// called on the status server's thread after each write, with what the write cost. The
    /// cost is what the sessions spent offering frames (estimated from the offers timed) and
    /// the status server's thread spent writing events (with [`EVENT_COST`] each), over the
    /// rest of the process's CPU time. Over the least budget of the open taps, the sessions look at fewer frames, one in
    /// [`Taps::stride`], chosen at random (a pattern in the traffic cannot hide from it); well
    /// under, at more again.
    fn govern(&self, write: Duration) {
        // The taps' lock is never taken while the governor's is held: `prune` takes the
        // governor's while it holds the taps'.
        let budget = {
            let taps = self.taps.lock().unwrap_or_else(|p| p.into_inner());
            taps.iter().map(|t| t.cpu).min().unwrap_or(DEFAULT_CPU)
        };
        let mut governor = self.governor.lock().unwrap_or_else(|p| p.into_inner());
        governor.written += write;
        let Some(cpu) = process_cpu() else {
            return;
        };
        let now = Instant::now();
        let Some((at, before)) = governor.since else {
            governor.since = Some((now, cpu));
            return;
        };
        if now.duration_since(at) < governor.next {
            return;
        }
        let spent = Duration::from_nanos(self.spent.swap(0, Relaxed)) + governor.written;
        let rest = cpu.saturating_sub(before).saturating_sub(spent);
        let share = spent.as_secs_f64() / rest.as_secs_f64().max(1e-3);
        let stride = self.stride.load(Relaxed);
        let next = next_stride(stride, share, governor.share, f64::from(budget) / 100.0);
        *governor = Governor {
            since: Some((now, cpu)),
            written: Duration::ZERO,
            share,
            next: if next > stride {
                GOVERN_SOON
            } else {
                GOVERN_EVERY
            },
        };
        drop(governor);
        if next != stride {
            self.stride.store(next, Relaxed);
            log::info!(
                "tap: its work was {:.1}% of the rest of hotdog's CPU time (its budget {budget}%): \
                 it now looks at {}",
                share * 100.0,
                if next == 1 {
                    "every frame".to_string()
                } else {
                    format!("one frame in {next}, at random (the others counted in tap.skipped)")
                }
            );
        }
    }

    /// How long until the taps' cost is to be weighed again (see [`Taps::govern`]).
    fn next_weighing(&self) -> Duration {
        let governor = self.governor.lock().unwrap_or_else(|p| p.into_inner());
        governor.since.map_or(GOVERN_SOON, |(at, _)| {
            governor.next.saturating_sub(at.elapsed())
        })
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
            .map(|t| {
                let cache = t.filter.line.as_ref().map(Regex::create_cache);
                (t.clone(), cache, u64::MAX)
            })
            .collect();
        view.version = version;
    }

    /// The copy of `event`: in a spare written event, when there is one.
    fn keep(&self, event: &Event<'_>) -> Arc<Kept> {
        if let Ok(mut spare) = self.spare.pop() {
            if let Some(kept) = Arc::get_mut(&mut spare) {
                kept.fill(event);
                return spare;
            }
        }
        Arc::new(Kept::new(event))
    }

    /// Gives `event` to every open tap that keeps it (`view` is the session's); a tap whose
    /// queue is full loses it (counted). For an event with a record, what to watch the record
    /// with is returned: it keeps the record's outcome for the event.
    pub fn offer(
        &self,
        view: &mut View,
        event: &Event<'_>,
        metrics: &Metrics,
    ) -> Option<Arc<Watch>> {
        let stride = self.stride.load(Relaxed);
        if stride > 1 && view.rng.u32(..stride) != 0 {
            view.skipped += 1;
            return None;
        }
        // No division for each frame while the sessions look at every one.
        let every = if stride == 1 {
            TIMED
        } else {
            (TIMED / stride).max(1)
        };
        if every > 1 && view.rng.u32(..every) != 0 {
            return self.offer_to_each(view, event, metrics);
        }
        let start = Instant::now();
        let watch = self.offer_to_each(view, event, metrics);
        let took = u64::try_from(start.elapsed().as_nanos()).unwrap_or(u64::MAX);
        let took = took.saturating_sub(self.clock);
        // A timing the thread's losing the CPU stretched (by a millisecond or more: a thousand
        // offers' worth) is cut to 8 times what this session's offers typically take.
        let took = match view.typical {
            0 => took,
            typical => took.min(typical.saturating_mul(8)),
        };
        view.typical = view.typical - view.typical / 8 + took.div_ceil(8);
        view.spent = view
            .spent
            .saturating_add(took.saturating_mul(u64::from(every)));
        watch
    }

    /// [`Taps::offer`], for a frame looked at.
    fn offer_to_each(
        &self,
        view: &mut View,
        event: &Event<'_>,
        metrics: &Metrics,
    ) -> Option<Arc<Watch>> {
        self.look(view);
        let mut kept: Option<Arc<Kept>> = None;
        let (mut queued, mut closed) = (false, false);
        // A tap's queue is only looked at when its filter keeps a frame: the status server's
        // thread takes from it, and a look for every frame would pull its state to and fro
        // between the threads.
        let mut window = None;
        for (tap, cache, spent) in view.taps.iter_mut() {
            if !tap.filter.keeps(event, cache.as_mut()) {
                continue;
            }
            let window = *window.get_or_insert_with(|| window_of(event.origin));
            if *spent == window || !tap.budget.take(window) {
                *spent = window;
                view.left_out += 1;
                continue;
            }
            let kept = kept.get_or_insert_with(|| self.keep(event));
            match tap.queue.try_send(kept.clone()) {
                Ok(()) => queued = true,
                Err(async_channel::TrySendError::Full(_)) => {
                    metrics.tap_dropped.fetch_add(1, Relaxed);
                }
                Err(async_channel::TrySendError::Closed(_)) => closed = true,
            }
        }
        if closed {
            self.prune();
        }
        let kept = kept.filter(|_| queued && event.record.is_some())?;
        Some(kept.watch.clone())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use hotdog_stages::core::Outcome;

    fn event<'a>(
        line: &'a str,
        origin: &'a Origin,
        rules: &[&'a str],
        record: Option<&'a Record>,
    ) -> Event<'a> {
        Event {
            line,
            origin,
            rules: Labels::Given(rules.iter().map(|r| Cow::Borrowed(*r)).collect()),
            record,
        }
    }

    /// A record for topic `logs` of `payload`, with `key` and `headers`.
    fn record(
        payload: &'static [u8],
        key: Option<&str>,
        headers: &[(&'static str, &str)],
    ) -> Record {
        Record {
            topic: "logs".into(),
            key: key.map(str::to_string),
            payload: bytes::Bytes::from_static(payload),
            block: Default::default(),
            headers: headers
                .iter()
                .map(|(k, v)| (Cow::Borrowed(*k), v.to_string()))
                .collect(),
            read_ms: 0,
            ack: Default::default(),
        }
    }

    /// `kept` as JSON, with what became of it.
    fn json(kept: &Kept) -> serde_json::Value {
        let mut out = Vec::new();
        kept.write(kept.settled().expect("settled"), &mut out);
        serde_json::from_slice(&out).expect("JSON")
    }

    #[test]
    fn spare_events_are_made_when_a_tap_opens_and_made_again_after_a_write() {
        let taps = Taps::new();
        let (metrics, mut view) = (Metrics::new(), View::default());
        // Half its rate, at least SPARE_MIN, at most SPARE.
        let tap = taps.open(Filter::default(), 300, DEFAULT_CPU).expect("tap");
        assert_eq!(taps.spare.len(), 150);
        let other = taps
            .open(Filter::default(), MAX_RATE, DEFAULT_CPU)
            .expect("tap");
        assert_eq!(taps.spare.len(), SPARE);
        drop((tap, other));
        assert!(
            taps.spare.is_empty(),
            "nothing kept once the last tap closed"
        );
        let tap2 = taps.open(Filter::default(), 100, DEFAULT_CPU).expect("tap");
        assert_eq!(taps.spare.len(), SPARE_MIN);

        // A session fills the spare events; once written they are filled again.
        let origin = Origin::default();
        for line in ["a", "b", "c"] {
            taps.offer(&mut view, &event(line, &origin, &[], None), &metrics);
        }
        assert_eq!(taps.spare.len(), SPARE_MIN - 3);
        for _ in 0..3 {
            let kept = tap2.events.try_recv().expect("kept");
            assert!(kept.spare);
            tap2.written(kept);
        }
        assert_eq!(taps.spare.len(), SPARE_MIN);

        // With none left, the session makes one; it is not kept once written, and the status
        // server's thread makes another in its place.
        while taps.spare.pop().is_ok() {}
        taps.offer(&mut view, &event("d", &origin, &[], None), &metrics);
        let made = tap2.events.try_recv().expect("kept");
        assert!(!made.spare);
        tap2.written(made);
        assert!(taps.spare.is_empty());
        tap2.restock();
        assert_eq!(taps.spare.len(), SPARE_MIN);
        assert!(taps.spare.pop().is_ok_and(|k| k.spare));
    }

    #[test]
    fn a_written_event_is_filled_again_with_nothing_left_of_the_one_before() {
        let taps = Taps::new();
        let (metrics, mut view) = (Metrics::new(), View::default());
        let tap = taps
            .open(Filter::default(), MAX_RATE, DEFAULT_CPU)
            .expect("tap");
        let origin = Origin {
            peer_addr: Some("10.0.0.7:5140".into()),
            tls_client_cn: Some("client".into()),
            ..Origin::default()
        };
        let record = record(b"payload", Some("k"), &[("h", "v")]);
        let first = &event("first line", &origin, &["a", "b"], Some(&record));
        let watch = taps.offer(&mut view, first, &metrics).expect("watched");
        watch.tell(Outcome::Delivered {
            partition: 1,
            offset: 9,
        });
        drop(watch);
        let kept = tap.events.try_recv().expect("kept");
        assert_eq!(json(&kept)["outcome"], "delivered");
        let at = Arc::as_ptr(&kept);
        // The others made when the tap opened out of the way: the next is filled in this one.
        while taps.spare.pop().is_ok() {}
        tap.written(kept);

        // The next event is made in the same one: unrouted, from another origin, one rule.
        let plain = Origin::default();
        let second = &event("second", &plain, &["c"], None);
        assert!(taps.offer(&mut view, second, &metrics).is_none());
        let again = tap.events.try_recv().expect("kept");
        assert_eq!(Arc::as_ptr(&again), at, "the spare one was filled");
        assert_eq!(
            json(&again),
            serde_json::json!({"line": "second", "source": null, "listener": null,
                "rules": ["c"], "outcome": "unrouted"})
        );

        // One another tap still holds is not taken back.
        let other = again.clone();
        tap.written(again);
        assert!(taps.spare.is_empty());

        // One whose record is still in flight is, and is filled with a watch of its own: the
        // old record's outcome, when it comes, is not the new event's.
        taps.restock(1);
        let held = taps.offer(&mut view, first, &metrics).expect("watched");
        tap.written(tap.events.try_recv().expect("kept"));
        assert_eq!(taps.spare.len(), 1);
        let renewed = taps.offer(&mut view, first, &metrics).expect("watched");
        assert!(!Arc::ptr_eq(&held, &renewed));
        held.tell(Outcome::NotSent);
        let kept = tap.events.try_recv().expect("kept");
        assert_eq!(kept.settled(), None, "waits for its own record");
        renewed.tell(Outcome::Spooled);
        assert_eq!(json(&kept)["outcome"], "spooled");

        // With the last tap closed, no spare one is kept.
        tap.written(other);
        assert_eq!(taps.spare.len(), 1);
        drop(tap);
        assert!(taps.spare.is_empty());
    }

    #[test]
    fn taps_keep_what_their_filter_asks_for_and_drop_when_full() {
        let taps = Taps::new();
        let metrics = Metrics::new();
        let mut view = View::default();
        assert!(!taps.any());
        let all_tap = taps
            .open(Filter::default(), MAX_RATE, DEFAULT_CPU)
            .expect("tap");
        let errors_tap = taps
            .open(
                Filter {
                    rule: Some("errors".into()),
                    line: Some(Regex::new("disk").expect("regex")),
                    source: Some("10.0.0.".into()),
                    ..Filter::default()
                },
                MAX_RATE,
                DEFAULT_CPU,
            )
            .expect("tap");
        let (all, errors) = (&all_tap.events, &errors_tap.events);
        assert!(taps.any());
        let origin = Origin {
            peer_addr: Some("10.0.0.7:5140".into()),
            listener: Some("0.0.0.0:514".into()),
            ..Origin::default()
        };
        let record = record(b"pay\xffload", Some("k"), &[("h", "v"), ("h2", "w")]);
        let watch = taps
            .offer(
                &mut view,
                &event("disk full", &origin, &["errors", "7"], Some(&record)),
                &metrics,
            )
            .expect("a record kept is watched");
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
        assert_eq!(all.len(), 3);
        assert_eq!(errors.len(), 1);
        let first = errors.try_recv().expect("event");
        assert!(first.settled().is_none(), "waits for its outcome");
        watch.tell(Outcome::Delivered {
            partition: 2,
            offset: 41,
        });
        // One copy for both taps: the outcome is the same for each.
        let same = all.try_recv().expect("event");
        assert!(Arc::ptr_eq(&first, &same));
        let first = json(&first);
        assert_eq!(first["line"], "disk full");
        assert_eq!(first["source"], "10.0.0.7:5140");
        assert_eq!(first["listener"], "0.0.0.0:514");
        assert!(first.get("tls_client_cn").is_none(), "{first}");
        assert_eq!(first["rules"], serde_json::json!(["errors", "7"]));
        assert_eq!(first["outcome"], "delivered");
        assert_eq!(
            (first["partition"].clone(), first["offset"].clone()),
            (2.into(), 41.into())
        );
        assert_eq!(first["topic"], "logs");
        assert_eq!(first["key"], "k");
        assert_eq!(first["payload"], "pay\u{fffd}load");
        assert_eq!(
            first["headers"],
            serde_json::json!([["h", "v"], ["h2", "w"]])
        );
        let unrouted = json(&all.try_recv().expect("event"));
        assert_eq!(unrouted["outcome"], "unrouted");
        assert_eq!(unrouted["rules"], serde_json::json!(["other"]));
        for absent in ["topic", "key", "headers", "payload", "partition"] {
            assert!(unrouted.get(absent).is_none(), "{unrouted}");
        }

        // A tap whose reader is behind loses events, counted; the others get theirs.
        for _ in 0..=TAP_QUEUE {
            taps.offer(
                &mut view,
                &event("disk", &origin, &["errors"], None),
                &metrics,
            );
        }
        assert_eq!(all.len(), TAP_QUEUE);
        assert_eq!(errors.len(), TAP_QUEUE);
        assert_eq!(metrics.tap_dropped.load(Relaxed), 2 + 1);
        // A closed tap is let go; past the cap, a tap is refused.
        drop(all_tap);
        drop(errors_tap);
        taps.offer(&mut view, &event("x", &origin, &[], None), &metrics);
        assert!(!taps.any());
        let open: Vec<_> = (0..MAX_TAPS)
            .map(|_| {
                taps.open(Filter::default(), MAX_RATE, DEFAULT_CPU)
                    .expect("tap")
            })
            .collect();
        assert!(taps.open(Filter::default(), MAX_RATE, DEFAULT_CPU).is_err());
        drop(open);
    }

    /// A tap keeps at most its rate, shared by every session, and the sessions count what it
    /// left out; the next window has room again.
    #[test]
    fn a_tap_keeps_at_most_its_rate_and_counts_what_it_leaves_out() {
        let taps = Taps::new();
        let metrics = Metrics::new();
        let (mut one, mut other) = (View::default(), View::default());
        // 20 a second: 2 each 100 ms.
        let tap = taps.open(Filter::default(), 20, DEFAULT_CPU).expect("tap");
        let wide = taps
            .open(Filter::default(), MAX_RATE, DEFAULT_CPU)
            .expect("tap");
        let at = |ms: u64| Origin {
            clock: Some(SystemTime::UNIX_EPOCH + Duration::from_millis(1_700_000_000_000 + ms)),
            ..Origin::default()
        };
        let offer = |view: &mut View, origin: &Origin, line: &str| {
            taps.offer(view, &event(line, origin, &[], None), &metrics);
        };
        let (early, late, next) = (at(0), at(99), at(100));
        offer(&mut one, &early, "a");
        offer(&mut other, &early, "b");
        offer(&mut one, &late, "c");
        offer(&mut other, &late, "d");
        offer(&mut one, &next, "e");
        let kept: Vec<String> = std::iter::from_fn(|| tap.events.try_recv().ok())
            .map(|k| json(&k)["line"].as_str().unwrap_or_default().to_owned())
            .collect();
        assert_eq!(kept, ["a", "b", "e"]);
        assert_eq!(wide.events.len(), 5, "another tap's rate is its own");
        one.settle(&taps, &metrics);
        assert_eq!(metrics.tap_dropped.load(Relaxed), 1);
        other.settle(&taps, &metrics);
        assert_eq!(metrics.tap_dropped.load(Relaxed), 2);
        one.settle(&taps, &metrics);
        assert_eq!(metrics.tap_dropped.load(Relaxed), 2, "added once");
    }

    #[test]
    fn over_its_cpu_budget_a_tap_looks_at_fewer_frames_and_well_under_at_more() {
        let low = 0.01;
        // Within the budget, or a little under: as it is.
        assert_eq!(next_stride(1, 0.049, low, 0.05), 1);
        assert_eq!(
            next_stride(4, 0.03, low, 0.05),
            4,
            "3% is over half of 80% of 5%"
        );
        // Over: in proportion, aiming at 80% of the budget, and always at least one more.
        assert_eq!(next_stride(1, 0.08, low, 0.05), 2);
        assert_eq!(next_stride(1, 0.80, low, 0.05), 20);
        assert_eq!(next_stride(3, 0.0501, low, 0.05), 4);
        assert_eq!(next_stride(1, 1e9, low, 0.05), MAX_STRIDE);
        // Well under twice in a row: a quarter fewer skipped (at least one), down to none.
        assert_eq!(next_stride(8, 0.01, low, 0.05), 6);
        assert_eq!(next_stride(3, 0.0, low, 0.05), 2);
        assert_eq!(next_stride(2, 0.0, 0.0, 0.05), 1);
        assert_eq!(next_stride(1, 0.0, 0.0, 0.05), 1);
        // Well under once, after a weighing that was not: as it is.
        assert_eq!(next_stride(8, 0.01, 0.03, 0.05), 8);
        assert_eq!(
            next_stride(8, 0.01, f64::MAX, 0.05),
            8,
            "the first weighing"
        );
    }

    #[test]
    fn a_governed_tap_looks_at_frames_at_random_and_counts_the_others() {
        let taps = Taps::new();
        let (metrics, mut view) = (Metrics::new(), View::default());
        let tap = taps
            .open(Filter::default(), MAX_RATE, DEFAULT_CPU)
            .expect("tap");
        let origin = Origin::default();
        taps.stride.store(10, Relaxed);
        // Every frame alike, and every tenth alike: a fixed step would see all or none of them.
        for i in 0..10_000 {
            let line = if i % 10 == 0 { "tenth" } else { "other" };
            taps.offer(&mut view, &event(line, &origin, &[], None), &metrics);
        }
        view.settle(&taps, &metrics);
        let (looked, skipped) = (tap.events.len(), metrics.tap_skipped.load(Relaxed));
        assert_eq!(
            looked as u64 + skipped,
            10_000,
            "each frame looked at or counted"
        );
        assert!(
            (800..1200).contains(&looked),
            "about one in ten looked at: {looked}"
        );
        let tenth = std::iter::from_fn(|| tap.events.try_recv().ok())
            .filter(|k| json(k)["line"] == "tenth")
            .count();
        assert!((40..160).contains(&tenth), "the tenth frames too: {tenth}");
        assert_eq!(metrics.tap_dropped.load(Relaxed), 0);
        // What offering cost was estimated from the offers timed, and handed on.
        assert!(taps.spent.load(Relaxed) > 0);

        // Once the last tap closes, the next one looks at every frame at first.
        drop(tap);
        assert_eq!(taps.stride.load(Relaxed), 1);
        assert_eq!(taps.spent.load(Relaxed), 0);
        let tap = taps
            .open(Filter::default(), MAX_RATE, DEFAULT_CPU)
            .expect("tap");
        for _ in 0..100 {
            taps.offer(&mut view, &event("x", &origin, &[], None), &metrics);
        }
        assert_eq!(tap.events.len(), 100);
    }

    #[test]
    fn the_governor_weighs_the_taps_cost_each_period_against_the_least_budget() {
        let taps = Taps::new();
        let _wide = taps
            .open(Filter::default(), MAX_RATE, MAX_CPU)
            .expect("tap");
        let tap = taps.open(Filter::default(), MAX_RATE, 1).expect("tap");
        // The clock started when the first tap opened: nothing is weighed before it is due.
        tap.govern(Duration::ZERO, 0);
        assert_eq!(taps.stride.load(Relaxed), 1);
        // Then the sessions say they spent 10 s: far over 1% of the rest.
        std::thread::sleep(GOVERN_SOON);
        taps.spent.store(10_000_000_000, Relaxed);
        tap.govern(Duration::ZERO, 0);
        assert_eq!(
            taps.stride.load(Relaxed),
            MAX_STRIDE,
            "the least budget holds"
        );
        assert_eq!(taps.spent.load(Relaxed), 0, "taken for the weighing");
        // Over the budget, the next weighing comes soon; within that, nothing changes; one
        // weighing of nothing spent, after that one, does not either; a second lowers it by a
        // quarter, and the one after comes a whole period later.
        assert!(tap.next_weighing() <= GOVERN_SOON);
        tap.govern(Duration::ZERO, 0);
        assert_eq!(taps.stride.load(Relaxed), MAX_STRIDE);
        std::thread::sleep(GOVERN_SOON);
        tap.govern(Duration::ZERO, 0);
        assert_eq!(taps.stride.load(Relaxed), MAX_STRIDE);
        assert!(tap.next_weighing() > GOVERN_SOON);
        std::thread::sleep(GOVERN_EVERY);
        tap.govern(Duration::ZERO, 0);
        assert_eq!(taps.stride.load(Relaxed), MAX_STRIDE / 4 * 3);
        // Events written count for more than their write: 10 million of them are 20 s.
        std::thread::sleep(GOVERN_EVERY);
        tap.govern(Duration::ZERO, 10_000_000);
        assert_eq!(taps.stride.load(Relaxed), MAX_STRIDE);
    }

    /// Each outcome is written as such, with what goes with it; a record is settled once.
    #[test]
    fn each_outcome_is_written_as_such_and_only_the_first_counts() {
        let taps = Taps::new();
        let metrics = Metrics::new();
        let mut view = View::default();
        let tap = taps
            .open(Filter::default(), MAX_RATE, DEFAULT_CPU)
            .expect("tap");
        let origin = Origin {
            tls_client_cn: Some("client \"one\"".into()),
            ..Origin::default()
        };
        let record = record(b"p", None, &[]);
        let outcomes = [
            Outcome::DeadLettered {
                reason: "message_too_large",
                to: "dead \"letters\"",
            },
            Outcome::Spooled,
            Outcome::NotSent,
        ];
        for outcome in outcomes {
            let watch = taps
                .offer(
                    &mut view,
                    &event("x", &origin, &[], Some(&record)),
                    &metrics,
                )
                .expect("watched");
            watch.tell(outcome);
            watch.tell(Outcome::Delivered {
                partition: 0,
                offset: 1,
            });
        }
        let got: Vec<serde_json::Value> = std::iter::from_fn(|| tap.events.try_recv().ok())
            .map(|k| json(&k))
            .collect();
        assert_eq!(got.len(), 3);
        assert_eq!(got[0]["outcome"], "dead_lettered");
        assert_eq!(got[0]["reason"], "message_too_large");
        assert_eq!(got[0]["dead_letter_to"], "dead \"letters\"");
        assert_eq!(got[0]["tls_client_cn"], "client \"one\"");
        assert_eq!(got[0]["source"], serde_json::Value::Null);
        assert!(got[0].get("key").is_none() && got[0].get("headers").is_none());
        assert_eq!(got[1]["outcome"], "spooled");
        assert_eq!(got[2]["outcome"], "not_sent");
        let mut out = Vec::new();
        let kept = Kept::new(&event("late", &origin, &[], Some(&record)));
        kept.write(Shown::InFlight, &mut out);
        let late: serde_json::Value = serde_json::from_slice(&out).expect("JSON");
        assert_eq!(late["outcome"], "in_flight");
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
