//! One task per connection: read bytes, cut frames, parse, apply the rules, and send the records
//! to the publisher in batches. When the outbox is full, `send` waits, and this task stops reading
//! its socket: the sender feels TCP backpressure, nothing is dropped.

use std::sync::atomic::Ordering::Relaxed;
use std::sync::Arc;
use std::time::{Duration, Instant};

use futures_lite::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};

use crate::control::metrics::{LineCounts, Metrics};
use crate::control::shutdown::Shutdown;
use crate::publish::Outbox;
use hotdog_stages::core::Origin;
use hotdog_stages::core::{Awaited, Batch, Standing};
use hotdog_stages::encode;
use hotdog_stages::frame::lines::{Framer, Step};
use hotdog_stages::frame::relp;
use hotdog_stages::parse::syslog;
use hotdog_stages::route::{Current, Rules};

/// How much is read from the socket at once.
const READ_SIZE: usize = 64 * 1024;
/// Frames handled between two cooperative yields, so a flooding sender cannot starve others.
const YIELD_EVERY: u32 = 256;
/// During shutdown, a connection that has been quiet this long has sent everything it had.
const DRAIN_IDLE: Duration = Duration::from_millis(250);

/// What every connection shares.
pub struct Shared {
    /// The rules in use (replaced on reload).
    pub rules: Current,
    pub metrics: Arc<Metrics>,
    /// The way to the publisher.
    pub outbox: Outbox,
}

/// The per-connection state of the pipeline (everything but the socket).
pub struct Pipeline {
    shared: Arc<Shared>,
    /// The rules this connection applies, and their generation: replaced by the current ones
    /// between two frames when a reload has put new ones in use.
    rules: Arc<Rules>,
    generation: u64,
    origin: Origin,
    batch: Batch,
    batch_max: usize,
    /// How many records the batch handed over last had: what the next one is given room for.
    last_batch: usize,
    counts: LineCounts,
}

impl Pipeline {
    pub fn new(shared: Arc<Shared>, origin: Origin) -> Self {
        let (generation, rules) = shared.rules.get();
        Pipeline {
            rules,
            generation,
            batch: Vec::new(),
            batch_max: shared.outbox.batch_max(),
            last_batch: 0,
            counts: LineCounts::default(),
            shared,
            origin,
        }
    }

    /// Parses one frame and applies the rules to it.
    pub fn frame(&mut self, data: &[u8], truncated: bool) {
        self.frame_for(data, truncated, None);
    }

    /// [`Pipeline::frame`] for a message whose sender waits to hear it is safe: each of its
    /// records carries a share of `awaited`.
    pub fn awaited_frame(&mut self, data: &[u8], awaited: &Arc<Awaited>) {
        self.frame_for(data, false, Some(awaited));
    }

    fn frame_for(&mut self, data: &[u8], truncated: bool, awaited: Option<&Arc<Awaited>>) {
        // Nearly every line is valid UTF-8, which `from_utf8` checks a word at a time; only
        // the others are decoded byte by byte into their lossy text.
        let text = match std::str::from_utf8(data) {
            Ok(text) => std::borrow::Cow::Borrowed(text),
            Err(_) => {
                self.counts.invalid_utf8 += 1;
                String::from_utf8_lossy(data)
            }
        };
        self.counts.lines += 1;
        self.counts.truncated += u64::from(truncated);
        let msg = syslog::parse_frame(data, &text);
        if msg.format == syslog::Format::Unparsed {
            self.counts.unparsed += 1;
        }
        if self.shared.rules.generation() != self.generation {
            (self.generation, self.rules) = self.shared.rules.get();
        }
        if self.batch.capacity() == 0 {
            // At once the room the last batch took, not one doubling after another: the
            // publisher's thread frees it, and each step would be one more wait on the
            // allocator's lock while it does.
            self.batch.reserve(self.last_batch.clamp(1, self.batch_max));
        }
        let (routed, outcome) = self.rules.apply(&msg, &self.origin, None);
        if let Some(routed) = routed {
            let ack = awaited.map(|a| a.share()).unwrap_or_default();
            self.batch
                .push(encode::record(routed, &msg, &self.origin, ack));
        }
        if outcome.forwarded {
            self.counts.forwarded += 1;
        } else {
            self.counts.unrouted += 1;
        }
        self.counts.invalid_topics += u64::from(outcome.invalid_topics);
        self.counts.render_errors += u64::from(outcome.render_errors);
        self.counts.merge_errors += u64::from(outcome.merge_errors);
    }

    /// Notes the time of a read; the records of its lines carry it.
    pub fn stamp(&mut self) {
        // Templates (`{{iso8601}}`), structured records and the Kafka timestamp say when the
        // line was read.
        self.origin.clock = Some(hotdog_stages::core::now());
    }

    /// The connection facts templates see; UDP changes them per datagram.
    pub fn origin_mut(&mut self) -> &mut Origin {
        &mut self.origin
    }

    /// Like [`Pipeline::flush`], but never waits: when the outbox is full the batch is dropped
    /// (only UDP does this: it cannot push back). Returns how many records were dropped.
    pub fn try_flush(&mut self) -> usize {
        self.shared.metrics.add_lines(&self.counts);
        self.counts = LineCounts::default();
        if self.batch.is_empty() {
            return 0;
        }
        let batch = self.take_batch();
        match self.shared.outbox.try_send(batch) {
            Ok(()) => 0,
            Err(batch) => batch.len(),
        }
    }

    /// True when lines were handled since the last flush.
    pub fn has_pending(&self) -> bool {
        !self.batch.is_empty() || self.counts.lines > 0
    }

    pub fn batch_full(&self) -> bool {
        self.batch.len() >= self.batch_max
    }

    /// The batch, leaving an empty one that allocates only when a record comes: an idle
    /// connection holds no batch.
    fn take_batch(&mut self) -> Batch {
        self.last_batch = self.batch.len();
        std::mem::take(&mut self.batch)
    }

    /// Sends what is batched to the publisher, waiting while the outbox is full. False when the
    /// publisher takes nothing more (shutdown ran out of time; the outbox dead-lettered it).
    pub async fn flush(&mut self) -> bool {
        self.shared.metrics.add_lines(&self.counts);
        self.counts = LineCounts::default();
        if self.batch.is_empty() {
            return true;
        }
        let batch = self.take_batch();
        self.shared.outbox.send(batch).await
    }
}

/// What a connection may do, from its listener's settings.
#[derive(Debug, Clone, Copy)]
pub struct Limits {
    /// The longest frame kept (`max_message_size`).
    pub max_message_size: usize,
    /// Close the connection when it has sent nothing this long (`idle_timeout`).
    pub idle_timeout: Option<Duration>,
}

/// Why a connection ended without an error.
#[derive(Debug, PartialEq, Eq)]
pub enum End {
    /// A RELP session broke the protocol (why): closed with a `serverclose` that says so.
    Refused(String),
    /// The peer closed it.
    Closed,
    /// Shutdown: the peer had been quiet for a moment, or the publisher takes nothing more.
    Shutdown,
    /// Nothing was sent for `idle_timeout`.
    Idle,
}

/// Reads `stream` until the peer closes it (or, once shutdown has begun, until it has been
/// quiet for a moment), pushing every frame through the pipeline, then closes it (for TLS,
/// with a close_notify).
pub async fn run<S: AsyncRead + AsyncWrite + Unpin>(
    mut stream: S,
    pipeline: Pipeline,
    limits: Limits,
    shutdown: Shutdown,
) -> std::io::Result<End> {
    let result = read_all(&mut stream, pipeline, limits, shutdown).await;
    let closed = stream.close().await;
    let end = result?;
    closed.map(|()| end)
}

/// The read buffer a connection starts with, and returns to once it has been quiet for
/// [`SHRINK_AFTER`] with nothing buffered: an idle connection costs little. It grows (to at most
/// a whole frame of `max_message_size` plus a read) only while a long frame or a fast sender
/// needs it.
const SMALL: usize = 2 * 1024;
/// How long a larger buffer is kept after its last read.
const SHRINK_AFTER: Duration = Duration::from_secs(1);

async fn read_all<S: AsyncRead + Unpin>(
    mut stream: S,
    mut pipeline: Pipeline,
    limits: Limits,
    shutdown: Shutdown,
) -> std::io::Result<End> {
    let max = limits.max_message_size;
    let mut framer = Framer::new(max);
    // Room for one whole frame of the largest size, its length prefix, and a read.
    let largest = max + 16 + READ_SIZE;
    let mut buf = vec![0u8; SMALL];
    let (mut start, mut end) = (0usize, 0usize);
    let mut since_yield = 0u32;
    let mut last_data = Instant::now();
    let mut filled = false;
    loop {
        make_room(&mut buf, &mut start, &mut end, largest, &mut filled);
        let idle = limits.idle_timeout.map(|t| (last_data + t, Read::Idle));
        let shrink = (start == end && buf.len() > SMALL)
            .then(|| (Instant::now() + SHRINK_AFTER, Read::Shrink));
        let wake = hotdog_stages::core::earliest(idle, shrink);
        let n = match read(&mut stream, &mut buf[end..], &shutdown, wake).await {
            Ok(Read::Bytes(n)) => n,
            Ok(Read::Shrink) => {
                buf = vec![0u8; SMALL];
                continue;
            }
            Ok(Read::Idle) => {
                finish(&mut pipeline, &mut framer, &buf[start..end]).await;
                return Ok(End::Idle);
            }
            Ok(Read::Quiet) => {
                finish(&mut pipeline, &mut framer, &buf[start..end]).await;
                return Ok(End::Shutdown);
            }
            Ok(Read::Closed) => {
                finish(&mut pipeline, &mut framer, &buf[start..end]).await;
                return Ok(End::Closed);
            }
            Err(e) => {
                pipeline.flush().await;
                return Err(e);
            }
        };
        last_data = Instant::now();
        filled = end + n == buf.len();
        end += n;
        pipeline.stamp();
        loop {
            match framer.next_frame(&buf[start..end]) {
                Step::Frame {
                    data,
                    truncated,
                    consumed,
                } => {
                    pipeline.frame(data, truncated);
                    start += consumed;
                    since_yield += 1;
                    if pipeline.batch_full() && !pipeline.flush().await {
                        return Ok(End::Shutdown);
                    }
                    if since_yield >= YIELD_EVERY {
                        since_yield = 0;
                        smol::future::yield_now().await;
                    }
                }
                Step::Skip { consumed } => start += consumed,
                Step::NeedMore => break,
            }
        }
        if !pipeline.flush().await {
            return Ok(End::Shutdown);
        }
    }
}

/// Room to read into after `buf[start..end]`, the bytes not cut into frames yet: they move to
/// the front when less than half the buffer is free. The buffer doubles up to `largest` when
/// that is still not enough (a long frame in progress), and up to [`READ_SIZE`] when the last
/// read filled all the room it had (`filled`): a fast sender, whose bytes read [`SMALL`] at a
/// time would each time cost a read, a batch of a few records and a wake-up of the publisher.
/// `filled` is cleared: a turn without a read (the buffer given back) does not grow it again.
fn make_room(
    buf: &mut Vec<u8>,
    start: &mut usize,
    end: &mut usize,
    largest: usize,
    filled: &mut bool,
) {
    let filled = std::mem::take(filled);
    if start == end {
        (*start, *end) = (0, 0);
    } else if *start > 0 && buf.len() - *end < buf.len() / 2 {
        buf.copy_within(*start..*end, 0);
        *end -= *start;
        *start = 0;
    }
    let up_to = if buf.len() - *end < buf.len() / 2 {
        largest
    } else if filled {
        READ_SIZE.min(largest)
    } else {
        0
    };
    if buf.len() < up_to {
        buf.resize((buf.len() * 2).min(up_to), 0);
    }
}

/// The last frame (one without a terminator), and what is batched, to the publisher.
async fn finish(pipeline: &mut Pipeline, framer: &mut Framer, rest: &[u8]) {
    if let Some(last) = framer.finish(rest) {
        pipeline.frame(last, false);
    }
    pipeline.flush().await;
}

/// What one [`read`] came to.
#[derive(Debug)]
enum Read {
    Bytes(usize),
    /// The peer closed the connection.
    Closed,
    /// Shutdown has begun and the peer has been quiet for [`DRAIN_IDLE`].
    Quiet,
    /// `idle_timeout` passed without a byte.
    Idle,
    /// Time to give back a large buffer (nothing was read).
    Shrink,
}

/// One read, or what came first: shutdown (then reads go on until the peer is quiet), or `wake`
/// (a time and what it means).
async fn read<S: AsyncRead + Unpin>(
    stream: &mut S,
    buf: &mut [u8],
    shutdown: &Shutdown,
    wake: Option<(Instant, Read)>,
) -> std::io::Result<Read> {
    use futures_lite::FutureExt;
    let bytes = |n: usize| if n == 0 { Read::Closed } else { Read::Bytes(n) };
    if !shutdown.is_triggered() {
        let r = shutdown
            .unless(async { stream.read(&mut *buf).await.map(bytes) }.or(async {
                match wake {
                    Some((at, what)) => {
                        smol::Timer::at(at).await;
                        Ok(what)
                    }
                    None => std::future::pending().await,
                }
            }))
            .await;
        if let Some(r) = r {
            return r;
        }
    }
    // Shutdown has begun: keep reading until the peer goes quiet.
    async { stream.read(buf).await.map(bytes) }
        .or(async {
            smol::Timer::after(DRAIN_IDLE).await;
            Ok(Read::Quiet)
        })
        .await
}

/// The most RELP messages a session may have unanswered: past it the session reads no more
/// until answers go out, and its sender waits (librelp's client window is 128 by default).
const RELP_WINDOW: usize = 16 * 1024;
/// How long a RELP client has to take an answer hotdog writes before its session is closed.
const RELP_WRITE_TIMEOUT: Duration = Duration::from_secs(30);
/// What a RELP session's `serverclose` says at shutdown.
const SHUTTING_DOWN: &str = "hotdog is shutting down";

/// A RELP command waiting for its turn to be answered: answers go out in the order the
/// commands came.
enum Turn {
    /// A `syslog` message, answered `200 OK` once it is safe.
    Message(Arc<Awaited>),
    /// A response made already (to `open`).
    Answer(Vec<u8>),
    /// `close`: answered, then the session ends.
    Close,
}

/// What [`RelpSession::answer`] came to.
enum Answered {
    /// Everything ready is answered; the rest waits.
    Waiting,
    /// `close` is answered: the session is over.
    Closed,
    /// A record of this message was neither delivered nor dead-lettered: it must not be
    /// acknowledged, nor anything after it.
    Lost(u32),
}

/// What woke a RELP session.
enum Woke {
    Read(std::io::Result<usize>),
    /// A message became safe (or lost).
    Heard,
    Shutdown,
    Deadline,
    Idle,
    /// Time to give back a large read buffer (nothing was read).
    Shrink,
}

/// One RELP session (librelp's client, rsyslog's omrelp): frames are cut with [`relp::cut`],
/// `syslog` messages go through the pipeline like lines, and each is answered `200 OK` only
/// once every record it made is in Kafka or a dead letter (or it made none). Answers go out in
/// the order of the commands. On shutdown the session reads no more and answers what becomes
/// safe until the deadline; what is still unanswered then its sender sends again.
pub async fn run_relp<S: AsyncRead + AsyncWrite + Unpin>(
    mut stream: S,
    pipeline: Pipeline,
    limits: Limits,
    shutdown: Shutdown,
) -> std::io::Result<End> {
    let metrics = pipeline.shared.metrics.clone();
    metrics.relp_sessions.fetch_add(1, Relaxed);
    metrics.relp_sessions_total.fetch_add(1, Relaxed);
    let mut session = RelpSession {
        pipeline,
        metrics: metrics.clone(),
        protocol: relp::Session::default(),
        turns: std::collections::VecDeque::new(),
        done: Arc::new(event_listener::Event::new()),
        out: Vec::new(),
        acks: 0,
    };
    let result = session.serve(&mut stream, limits, &shutdown).await;
    session.pipeline.flush().await;
    // Messages not answered, and answers made but never written.
    let unanswered = session
        .turns
        .iter()
        .filter(|(_, t)| matches!(t, Turn::Message(_)))
        .count() as u64
        + session.acks;
    if unanswered > 0 {
        metrics.relp_unacknowledged.fetch_add(unanswered, Relaxed);
    }
    metrics.relp_sessions.fetch_sub(1, Relaxed);
    let closed = stream.close().await;
    let end = result?;
    closed.map(|()| end)
}

struct RelpSession {
    pipeline: Pipeline,
    metrics: Arc<Metrics>,
    protocol: relp::Session,
    /// Commands not answered yet, oldest first, with their transaction numbers.
    turns: std::collections::VecDeque<(u32, Turn)>,
    /// Notified when a message of this session becomes safe or lost.
    done: Arc<event_listener::Event>,
    /// Answers to write.
    out: Vec<u8>,
    /// How many `200 OK` answers `out` holds.
    acks: u64,
}

impl RelpSession {
    async fn serve<S: AsyncRead + AsyncWrite + Unpin>(
        &mut self,
        stream: &mut S,
        limits: Limits,
        shutdown: &Shutdown,
    ) -> std::io::Result<End> {
        let max = limits.max_message_size;
        // Room for one whole frame of the largest size, its header, and a read.
        let largest = max + 64 + READ_SIZE;
        let mut buf = vec![0u8; SMALL];
        let (mut start, mut end) = (0usize, 0usize);
        let mut last_data = Instant::now();
        // False once the peer sent `close`, or shutdown began: nothing more is read.
        let mut reading = true;
        let mut since_yield = 0u32;
        let mut filled = false;
        loop {
            let answered = self.answer();
            if let Answered::Lost(txnr) = answered {
                let why = format!(
                    "a record of message {txnr} was neither delivered nor dead-lettered; \
                     closing the session so that its sender sends it again"
                );
                log::error!("RELP: {why}");
                return self.close_with(stream, &why, End::Shutdown).await;
            }
            self.write(stream).await?;
            if let Answered::Closed = answered {
                return Ok(End::Closed);
            }
            if !reading && self.turns.is_empty() {
                if shutdown.is_triggered() {
                    return self.close_with(stream, SHUTTING_DOWN, End::Shutdown).await;
                }
                return Ok(End::Shutdown);
            }
            make_room(&mut buf, &mut start, &mut end, largest, &mut filled);
            let can_read = reading && self.turns.len() < RELP_WINDOW;
            // omrelp writes frame by frame: what came while the last read was handled joins
            // the same batch, and the batch goes to the publisher only once the socket has
            // nothing more. Fewer, larger batches, and nothing waits longer.
            let more = if can_read && self.pipeline.has_pending() && !shutdown.is_triggered() {
                futures_lite::future::poll_once(stream.read(&mut buf[end..])).await
            } else {
                None
            };
            let woke = match more {
                Some(read) => Woke::Read(read),
                None => {
                    if !self.pipeline.flush().await {
                        reading = false;
                        continue;
                    }
                    // Listen, then look again: a message settled since `answer` is either
                    // seen here or heard.
                    let heard = self.done.listen();
                    if self.front_settled() {
                        continue;
                    }
                    let idle = limits
                        .idle_timeout
                        .filter(|_| self.turns.is_empty())
                        .map(|t| (last_data + t, Woke::Idle));
                    // A buffer grown for a long message or a fast sender is given back once
                    // the session has been quiet, as a stream connection's is.
                    let shrink = (start == end && buf.len() > SMALL)
                        .then(|| (Instant::now() + SHRINK_AFTER, Woke::Shrink));
                    let wake = hotdog_stages::core::earliest(idle, shrink);
                    wait_relp(stream, &mut buf[end..], can_read, heard, shutdown, wake).await
                }
            };
            match woke {
                Woke::Heard => {}
                Woke::Shutdown => reading = false,
                Woke::Deadline => {
                    return self.close_with(stream, SHUTTING_DOWN, End::Shutdown).await
                }
                Woke::Idle => return self.close_with(stream, "idle_timeout", End::Idle).await,
                Woke::Shrink => buf = vec![0u8; SMALL],
                // The peer is gone: nothing it sent and is not answered can be answered now.
                Woke::Read(Ok(0)) => return Ok(End::Closed),
                Woke::Read(Err(e)) => return Err(e),
                Woke::Read(Ok(n)) => {
                    last_data = Instant::now();
                    filled = end + n == buf.len();
                    end += n;
                    self.pipeline.stamp();
                    loop {
                        let (frame, consumed) = match relp::cut(&buf[start..end], max) {
                            relp::Cut::Frame { frame, consumed } => (frame, consumed),
                            relp::Cut::NeedMore => break,
                            relp::Cut::Malformed(why) => return self.refuse(stream, why).await,
                        };
                        let txnr = frame.txnr;
                        match self.protocol.command(&frame) {
                            Ok(relp::Step::Open(answer)) => {
                                let mut response = Vec::new();
                                relp::respond(&mut response, txnr, &answer);
                                self.turns.push_back((txnr, Turn::Answer(response)));
                            }
                            Ok(relp::Step::Syslog(data)) => {
                                let awaited = Awaited::new(self.done.clone());
                                self.pipeline.awaited_frame(data, &awaited);
                                awaited.release();
                                self.turns.push_back((txnr, Turn::Message(awaited)));
                                self.metrics.relp_messages.fetch_add(1, Relaxed);
                            }
                            Ok(relp::Step::Close) => {
                                self.turns.push_back((txnr, Turn::Close));
                                reading = false;
                            }
                            Ok(relp::Step::Hint) => {}
                            Err(why) => return self.refuse(stream, why).await,
                        }
                        start += consumed;
                        if self.pipeline.batch_full() && !self.pipeline.flush().await {
                            reading = false;
                        }
                        if !reading {
                            break;
                        }
                        since_yield += 1;
                        if since_yield >= YIELD_EVERY {
                            since_yield = 0;
                            smol::future::yield_now().await;
                        }
                    }
                }
            }
        }
    }

    /// True when the oldest turn can be answered now: [`RelpSession::answer`] left a message
    /// that was not safe yet at the front, and it has become safe (or lost) since.
    fn front_settled(&self) -> bool {
        match self.turns.front() {
            Some((_, Turn::Message(a))) => a.standing() != Standing::Waiting,
            Some(_) => true,
            None => false,
        }
    }

    /// Answers, in order, every command from the oldest up to the first message not safe yet,
    /// which it watches: listen to the session's `done` after, then look again with
    /// [`RelpSession::front_settled`].
    fn answer(&mut self) -> Answered {
        let mut acknowledged = 0u64;
        let mut answered = Answered::Waiting;
        while let Some((txnr, turn)) = self.turns.front() {
            let txnr = *txnr;
            match turn {
                Turn::Message(a) => match a.standing() {
                    // The session waits for this one: it is told when it is safe (what
                    // changes before it listens, `front_settled` sees).
                    Standing::Waiting => {
                        a.watch();
                        break;
                    }
                    Standing::Lost => {
                        answered = Answered::Lost(txnr);
                        break;
                    }
                    Standing::Safe => {
                        relp::ok(&mut self.out, txnr);
                        acknowledged += 1;
                    }
                },
                Turn::Answer(response) => self.out.extend_from_slice(response),
                Turn::Close => {
                    relp::respond(&mut self.out, txnr, b"");
                    answered = Answered::Closed;
                }
            }
            self.turns.pop_front();
            if matches!(answered, Answered::Closed) {
                break;
            }
        }
        // Counted once written (see `write`).
        self.acks += acknowledged;
        answered
    }

    /// Writes the answers made so far; a peer that takes none of them for
    /// [`RELP_WRITE_TIMEOUT`] is gone.
    async fn write<S: AsyncWrite + Unpin>(&mut self, stream: &mut S) -> std::io::Result<()> {
        use futures_lite::FutureExt;
        if self.out.is_empty() {
            return Ok(());
        }
        let out = &self.out;
        let written = async {
            stream.write_all(out).await?;
            stream.flush().await
        }
        .or(async {
            smol::Timer::after(RELP_WRITE_TIMEOUT).await;
            Err(std::io::Error::new(
                std::io::ErrorKind::TimedOut,
                "the RELP client took no answer for 30s",
            ))
        })
        .await;
        let acks = std::mem::take(&mut self.acks);
        if let Err(e) = written {
            // Answers that never reached the sender: it sends those messages again.
            self.metrics.relp_unacknowledged.fetch_add(acks, Relaxed);
            return Err(e);
        }
        self.metrics.relp_acknowledged.fetch_add(acks, Relaxed);
        self.out.clear();
        Ok(())
    }

    /// Writes what is answered and a `serverclose` that says why the session ends as `end`.
    async fn close_with<S: AsyncWrite + Unpin>(
        &mut self,
        stream: &mut S,
        why: &str,
        end: End,
    ) -> std::io::Result<End> {
        relp::serverclose(&mut self.out, why);
        self.write(stream).await?;
        Ok(end)
    }

    /// Ends the session for a frame or command that breaks the protocol: what is safe is
    /// answered, then a `serverclose` says why.
    async fn refuse<S: AsyncWrite + Unpin>(
        &mut self,
        stream: &mut S,
        why: String,
    ) -> std::io::Result<End> {
        self.metrics.relp_refused.fetch_add(1, Relaxed);
        self.pipeline.flush().await;
        if let Answered::Waiting | Answered::Lost(_) = self.answer() {
            relp::serverclose(&mut self.out, &why);
        }
        // The peer may be gone already; the session ends either way.
        let _ = self.write(stream).await;
        Ok(End::Refused(why))
    }
}

/// Waits for what comes first: bytes (when `can_read`), a message settled, shutdown (or, once
/// it began, its deadline), or the idle time.
async fn wait_relp<S: AsyncRead + Unpin>(
    stream: &mut S,
    buf: &mut [u8],
    can_read: bool,
    heard: event_listener::EventListener,
    shutdown: &Shutdown,
    wake: Option<(Instant, Woke)>,
) -> Woke {
    use futures_lite::FutureExt;
    let read = async {
        if can_read {
            Woke::Read(stream.read(buf).await)
        } else {
            std::future::pending().await
        }
    };
    let stop = async {
        // The deadline is set when shutdown begins.
        match shutdown.deadline() {
            Some(deadline) => {
                smol::Timer::at(deadline).await;
                Woke::Deadline
            }
            None => {
                shutdown.wait().await;
                Woke::Shutdown
            }
        }
    };
    let timer = async {
        match wake {
            Some((at, what)) => {
                smol::Timer::at(at).await;
                what
            }
            None => std::future::pending().await,
        }
    };
    read.or(async {
        heard.await;
        Woke::Heard
    })
    .or(stop)
    .or(timer)
    .await
}

#[cfg(test)]
mod tests {
    //! The connection read loop in-process: a byte stream in, records out of the outbox. No
    //! broker needed; the end-to-end tests in tests/ cover what needs Kafka.

    use std::pin::Pin;
    use std::sync::atomic::Ordering::Relaxed;
    use std::task::{Context, Poll};

    use super::*;
    use crate::publish::{self, Inbox};
    use hotdog_stages::config::Config;
    use hotdog_stages::core::Record;

    fn limits(max_message_size: usize) -> Limits {
        Limits {
            max_message_size,
            idle_timeout: None,
        }
    }

    /// A stream that hands out its bytes `chunk` at a time, and takes whatever is written.
    struct Chunked {
        data: Vec<u8>,
        at: usize,
        chunk: usize,
    }

    impl AsyncRead for Chunked {
        fn poll_read(
            mut self: Pin<&mut Self>,
            _: &mut Context<'_>,
            buf: &mut [u8],
        ) -> Poll<std::io::Result<usize>> {
            let n = self.chunk.min(buf.len()).min(self.data.len() - self.at);
            let at = self.at;
            buf[..n].copy_from_slice(&self.data[at..at + n]);
            self.at += n;
            Poll::Ready(Ok(n))
        }
    }

    impl AsyncWrite for Chunked {
        fn poll_write(
            self: Pin<&mut Self>,
            _: &mut Context<'_>,
            buf: &[u8],
        ) -> Poll<std::io::Result<usize>> {
            Poll::Ready(Ok(buf.len()))
        }
        fn poll_flush(self: Pin<&mut Self>, _: &mut Context<'_>) -> Poll<std::io::Result<()>> {
            Poll::Ready(Ok(()))
        }
        fn poll_close(self: Pin<&mut Self>, _: &mut Context<'_>) -> Poll<std::io::Result<()>> {
            Poll::Ready(Ok(()))
        }
    }

    /// What a connection shares, built from `rules` (YAML list items) with an outbox of
    /// `buffer` records, and the outbox's other end.
    fn setup(rules: &str, buffer: usize) -> (Arc<Shared>, Inbox) {
        let text = format!(
            "global:\n  listen:\n    port: 1\n  kafka:\n    conf:\n      bootstrap.servers: b\n    \
             buffer: {buffer}\nrules:\n{rules}"
        );
        let config = Config::parse("test.yml", &text, |_| None).expect("valid config");
        let metrics = Metrics::new();
        let file =
            crate::publish::deadletter::start(None, metrics.clone()).expect("dead-letter writer");
        let (outbox, inbox) = publish::outbox(buffer, file);
        let shared = Arc::new(Shared {
            rules: Current::new(config.rules),
            metrics,
            outbox,
        });
        (shared, inbox)
    }

    /// Runs one connection that sends `data`, `chunk` bytes per read, to its end; every record
    /// the outbox got.
    fn run_stream(
        shared: Arc<Shared>,
        inbox: &Inbox,
        data: &[u8],
        chunk: usize,
        max: usize,
    ) -> Vec<Record> {
        run_batches(shared, inbox, data, chunk, max).concat()
    }

    /// Like [`run_stream`], but the batches as the outbox got them.
    fn run_batches(
        shared: Arc<Shared>,
        inbox: &Inbox,
        data: &[u8],
        chunk: usize,
        max: usize,
    ) -> Vec<Batch> {
        let stream = Chunked {
            data: data.to_vec(),
            at: 0,
            chunk,
        };
        let pipeline = Pipeline::new(shared, Origin::default());
        let (_trigger, shutdown) = crate::control::shutdown::channel();
        smol::block_on(async {
            run(stream, pipeline, limits(max), shutdown)
                .await
                .expect("clean end");
            // The connection is gone, and with it the last sender: the outbox ends.
            let mut out = Vec::new();
            while let Some(batch) = inbox.recv().await {
                out.push(batch);
            }
            out
        })
    }

    const FORWARD_ALL: &str = "  - regex: '^route me'\n    actions:\n      - type: forward\n        topic: 'only'\n  - regex: 'topic'\n    actions:\n      - type: forward\n        topic: 'logs-{{hostname}}'\n  - regex: '.*'\n    field: appname\n    actions:\n      - type: forward\n        topic: 'all'\n";

    /// (topic, payload) of every record.
    fn routed(records: &[Record]) -> Vec<(&str, &str)> {
        records
            .iter()
            .map(|r| {
                (
                    &*r.topic,
                    std::str::from_utf8(&r.payload).unwrap_or("<not UTF-8>"),
                )
            })
            .collect()
    }

    #[test]
    fn a_batch_starts_with_the_room_the_last_one_took_and_an_idle_connection_holds_none() {
        let (shared, inbox) = setup(FORWARD_ALL, 1024);
        let mut pipeline = Pipeline::new(shared, Origin::default());
        let frames = |pipeline: &mut Pipeline, n: usize| {
            for i in 0..n {
                pipeline.frame(format!("<13>route me {i}").as_bytes(), false);
            }
        };
        let mut handed = Vec::new();
        smol::block_on(async {
            frames(&mut pipeline, 300);
            assert!(pipeline.flush().await);
            assert_eq!(pipeline.batch.capacity(), 0, "no batch held after a flush");
            frames(&mut pipeline, 1);
            // One allocation with room for 300, not the doublings up to them.
            assert!(
                pipeline.batch.capacity() >= 300,
                "{}",
                pipeline.batch.capacity()
            );
            assert!(pipeline.flush().await);
            frames(&mut pipeline, 1);
            assert!(
                pipeline.batch.capacity() < 300,
                "{}",
                pipeline.batch.capacity()
            );
            assert!(pipeline.flush().await);
            drop(pipeline);
            while let Some(batch) = inbox.recv().await {
                handed.push(batch.len());
            }
        });
        assert_eq!(handed, [300, 1, 1]);
    }

    #[test]
    fn rules_replaced_while_a_connection_is_open_apply_from_its_next_frame() {
        let (shared, inbox) = setup(FORWARD_ALL, 1024);
        let mut pipeline = Pipeline::new(shared.clone(), Origin::default());
        pipeline.frame(b"<13>route me first", false);
        let text = "global:\n  listen:\n    port: 1\n  kafka:\n    conf:\n      bootstrap.servers: b\nrules:\n  - regex: 'route'\n    actions:\n      - type: forward\n        topic: 'new'\n";
        let config = Config::parse("test.yml", text, |_| None).expect("valid config");
        assert_eq!(shared.rules.replace(config.rules), 2);
        // The record already made keeps its routing; the next frame gets the new rules.
        pipeline.frame(b"<13>route me second", false);
        let got = smol::block_on(async {
            assert!(pipeline.flush().await);
            drop(pipeline);
            drop(shared);
            inbox.recv().await.expect("a batch")
        });
        assert_eq!(
            routed(&got),
            [("only", "route me first"), ("new", "route me second")]
        );
    }

    #[test]
    fn a_byte_stream_in_records_out_at_every_chunk_size() {
        let mut data = Vec::new();
        for line in [
            "<13>route me",
            "<13>Oct 11 22:14:15 web1 app[1]: hello",
            "<13>not me either",
        ] {
            data.extend_from_slice(line.as_bytes());
            data.push(b'\n');
        }
        let octet = "<14>1 2024-05-01T12:00:00Z db1 api 77 - - octet-counted";
        data.extend_from_slice(format!("{} {octet}", octet.len()).as_bytes());
        data.extend_from_slice(b"<13>Oct 11 22:14:15 bad/host app: topic \xff\n");
        data.extend_from_slice(b"<13>last line without a newline");
        for chunk in [1, 2, 7, 64, data.len()] {
            let (shared, inbox) = setup(FORWARD_ALL, 1024);
            let metrics = shared.metrics.clone();
            let got = run_stream(shared, &inbox, &data, chunk, 1000);
            assert_eq!(
                routed(&got),
                [
                    ("only", "route me"),
                    ("all", "hello"),
                    ("all", "octet-counted"),
                    // The rendered topic is not legal: the default topic.
                    ("logs", "<not UTF-8>"),
                ],
                "chunk {chunk}"
            );
            // The body as it came: the byte that is not UTF-8 is kept, not replaced.
            assert_eq!(&got[3].payload[..], b"topic \xff", "chunk {chunk}");
            assert!(
                got.iter().all(|r| r.read_ms > 0),
                "stamped with the read time"
            );
            let count = |a: &std::sync::atomic::AtomicU64| a.load(Relaxed);
            assert_eq!(count(&metrics.lines), 6, "chunk {chunk}");
            assert_eq!(count(&metrics.forwarded), 4);
            assert_eq!(count(&metrics.unrouted), 2);
            assert_eq!(count(&metrics.unparsed), 0);
            assert_eq!(count(&metrics.invalid_utf8), 1);
            assert_eq!(count(&metrics.invalid_topics), 1);
        }
    }

    #[test]
    fn long_lines_are_truncated_and_counted_in_both_framings() {
        let long = format!("<13>{}", "x".repeat(300));
        let mut data = format!("{long}\n<13>short\n").into_bytes();
        data.extend_from_slice(format!("{} {long}9 <13>short", long.len()).as_bytes());
        let (shared, inbox) = setup(
            "  - regex: '.*'\n    actions:\n      - type: forward\n        topic: t\n",
            1024,
        );
        let metrics = shared.metrics.clone();
        let got = run_stream(shared, &inbox, &data, 64, 100);
        let payloads: Vec<&str> = got
            .iter()
            .map(|r| std::str::from_utf8(&r.payload).unwrap_or(""))
            .collect();
        let cut = &long[4..100];
        assert_eq!(payloads, [cut, "short", cut, "short"]);
        assert_eq!(metrics.truncated.load(Relaxed), 2);
    }

    #[test]
    fn buffer_bounds_the_records_waiting_and_holds_the_sender_back() {
        let (shared, inbox) = setup(FORWARD_ALL, 3);
        let metrics = shared.metrics.clone();
        let outbox = shared.outbox.clone();
        let data: Vec<u8> = (0..20)
            .flat_map(|i| format!("<13>route me {i}\n").into_bytes())
            .collect();
        let stream = Chunked {
            data,
            at: 0,
            chunk: 4096,
        };
        let pipeline = Pipeline::new(shared, Origin::default());
        let (_trigger, shutdown) = crate::control::shutdown::channel();
        let ex = smol::Executor::new();
        smol::block_on(ex.run(async {
            let connection = ex.spawn(run(stream, pipeline, limits(1000), shutdown));
            // The connection fills the outbox to `buffer` records, and no further.
            let deadline = std::time::Instant::now() + Duration::from_secs(10);
            while outbox.waiting() < 3 {
                assert!(
                    std::time::Instant::now() < deadline,
                    "the outbox never filled"
                );
                smol::Timer::after(Duration::from_millis(1)).await;
            }
            for _ in 0..10 {
                smol::future::yield_now().await;
            }
            assert_eq!(outbox.waiting(), 3);
            // Held back: it has handed over at most what fits, plus the batch it waits with.
            assert!(
                metrics.lines.load(Relaxed) <= 6,
                "read on with nowhere to put it"
            );
            let mut got = 0;
            while got < 20 {
                let batch = inbox.recv().await.expect("a batch");
                assert!(batch.len() <= 3, "a batch of {} with buffer 3", batch.len());
                assert!(outbox.waiting() <= 3);
                got += batch.len();
            }
            connection.await.expect("clean end");
            assert_eq!(metrics.lines.load(Relaxed), 20);
        }));
    }

    /// The batches one connection hands over for `lines` lines that arrive `chunk` bytes per
    /// read, the records in them, and the bytes sent.
    fn batches_for(lines: usize, chunk: usize) -> (usize, usize, usize) {
        let (shared, inbox) = setup(FORWARD_ALL, 100_000);
        let data: String = (0..lines)
            .map(|i| format!("<13>1 - h app - - - route me {i}\n"))
            .collect();
        let batches = run_batches(shared, &inbox, data.as_bytes(), chunk, 64 * 1024);
        let records = batches.iter().map(Vec::len).sum();
        (batches.len(), records, data.len())
    }

    #[test]
    fn a_fast_sender_is_read_in_large_reads_and_a_slow_one_in_small() {
        // About 690 KB of lines, all waiting. Read 2 KiB at a time they would make some 340
        // batches of about 60 records, each a wake-up of the publisher. Each read that fills
        // the buffer doubles it, up to a read (64 KiB): then a read holds more lines than a
        // batch takes.
        let lines = 20_000;
        let (batches, records, sent) = batches_for(lines, usize::MAX);
        assert_eq!(records, lines);
        assert!(
            batches < lines / hotdog_stages::core::BATCH_MAX * 3 / 2,
            "{batches} batches for {lines} lines ({sent} bytes) that were all waiting"
        );
        // A sender whose every read leaves room over keeps the small buffer: a read, and a
        // batch, per 500 bytes. Its lines all arrive.
        let (batches, records, sent) = batches_for(2_000, 500);
        assert_eq!(records, 2_000);
        assert!(
            batches >= sent / 500,
            "{batches} batches for {sent} bytes read 500 at a time"
        );
    }

    /// Hands out one read that fills whatever room it is given with lines, then nothing (and
    /// never wakes the task: only the read loop's timers do); notes the room of every read.
    struct OneBurst {
        sent: bool,
        offered: Arc<std::sync::Mutex<Vec<usize>>>,
    }

    impl AsyncRead for OneBurst {
        fn poll_read(
            mut self: Pin<&mut Self>,
            _: &mut Context<'_>,
            buf: &mut [u8],
        ) -> Poll<std::io::Result<usize>> {
            self.offered
                .lock()
                .unwrap_or_else(|p| p.into_inner())
                .push(buf.len());
            if self.sent {
                return Poll::Pending;
            }
            self.sent = true;
            for (i, b) in buf.iter_mut().enumerate() {
                *b = if i % 16 == 15 { b'\n' } else { b'x' };
            }
            Poll::Ready(Ok(buf.len()))
        }
    }

    #[test]
    fn a_buffer_grown_for_a_burst_is_given_back_after_a_quiet_second_and_stays_small() {
        let (shared, _inbox) = setup(FORWARD_ALL, 100_000);
        let offered = Arc::new(std::sync::Mutex::new(Vec::new()));
        let stream = OneBurst {
            sent: false,
            offered: offered.clone(),
        };
        let pipeline = Pipeline::new(shared, Origin::default());
        let (_trigger, shutdown) = crate::control::shutdown::channel();
        smol::block_on(async {
            use futures_lite::FutureExt;
            let quiet = async {
                smol::Timer::after(SHRINK_AFTER * 5 / 2).await;
                Ok(End::Idle)
            };
            read_all(stream, pipeline, limits(64 * 1024), shutdown)
                .or(quiet)
                .await
                .expect("no error");
        });
        let offered = offered.lock().unwrap_or_else(|p| p.into_inner()).clone();
        // The burst filled the small buffer, so the next read had twice the room; a quiet
        // second later the buffer was given back, and no read since had more than that.
        assert_eq!(
            offered[..2],
            [SMALL, 2 * SMALL],
            "rooms offered: {offered:?}"
        );
        assert_eq!(offered.last(), Some(&SMALL), "rooms offered: {offered:?}");
    }

    #[test]
    fn a_read_that_fills_the_buffer_doubles_it_up_to_a_read_and_only_a_long_frame_further() {
        let largest = 1024 * 1024;
        let mut buf = vec![0u8; SMALL];
        // Reads that each filled the buffer, every byte of them cut into frames.
        let mut sizes = Vec::new();
        for _ in 0..7 {
            let (mut start, mut end) = (buf.len(), buf.len());
            make_room(&mut buf, &mut start, &mut end, largest, &mut true);
            assert_eq!((start, end), (0, 0));
            sizes.push(buf.len() / 1024);
        }
        assert_eq!(sizes, [4, 8, 16, 32, 64, 64, 64]);
        // A read that left room over: the buffer stays as it is.
        let (mut start, mut end) = (100, 200);
        make_room(&mut buf, &mut start, &mut end, largest, &mut false);
        assert_eq!((buf.len(), start, end), (READ_SIZE, 100, 200));
        // A long frame in progress (more than half the buffer, not cut yet) moves to the
        // front and grows the buffer past a read, up to `largest`.
        let (mut start, mut end) = (10, READ_SIZE);
        make_room(&mut buf, &mut start, &mut end, largest, &mut false);
        assert_eq!((buf.len(), start, end), (2 * READ_SIZE, 0, READ_SIZE - 10));
    }

    #[test]
    fn without_room_a_datagram_batch_is_dropped_not_waited_for() {
        let (shared, _inbox) = setup(FORWARD_ALL, 1);
        let mut pipeline = Pipeline::new(shared, Origin::default());
        pipeline.frame(b"<13>route me 1", false);
        assert_eq!(pipeline.try_flush(), 0);
        pipeline.frame(b"<13>route me 2", false);
        assert_eq!(
            pipeline.try_flush(),
            1,
            "the outbox holds one record already"
        );
    }
}
