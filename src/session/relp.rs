//! A RELP session: frames in, each `syslog` command through the pipeline, answered in order
//! once Kafka has its records (or they became dead letters). Its commands and answers are the
//! pure [`hotdog_stages::frame::relp`]; this is the I/O around them.

use super::*;
use hotdog_stages::frame::relp;

/// The most RELP messages a session may have unanswered: past it the session reads no more
/// until answers go out, and its sender waits (librelp's client window is 128 by default).
pub(super) const RELP_WINDOW: usize = 16 * 1024;

/// How long a RELP client has to take an answer hotdog writes before its session is closed.
pub(super) const RELP_WRITE_TIMEOUT: Duration = Duration::from_secs(30);

/// What a RELP session's `serverclose` says at shutdown.
pub(super) const SHUTTING_DOWN: &str = "hotdog is shutting down";

/// A RELP command waiting for its turn to be answered: answers go out in the order the
/// commands came.
pub(super) enum Turn {
    /// A `syslog` message, answered `200 OK` once it is safe.
    Message(Arc<Awaited>),
    /// A response made already (to `open`).
    Answer(Vec<u8>),
    /// `close`: answered, then the session ends.
    Close,
}

/// What [`RelpSession::answer`] came to.
pub(super) enum Answered {
    /// Everything ready is answered; the rest waits.
    Waiting,
    /// `close` is answered: the session is over.
    Closed,
    /// A record of this message was neither delivered nor dead-lettered: it must not be
    /// acknowledged, nor anything after it.
    Lost(u32),
}

/// What woke a RELP session.
pub(super) enum Woke {
    Read(std::io::Result<usize>),
    /// A message became safe (or lost).
    Heard,
    Shutdown,
    Deadline,
    Idle,
    /// Time to give back a large read buffer (nothing was read).
    Shrink,
    /// The alarm rang for a time that moved on: nothing is due yet.
    Again,
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
        when_spooled: limits.answer_when_spooled,
        alarm: Alarm::default(),
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

pub(super) struct RelpSession {
    pub(super) pipeline: Pipeline,
    pub(super) metrics: Arc<Metrics>,
    pub(super) protocol: relp::Session,
    /// Commands not answered yet, oldest first, with their transaction numbers.
    pub(super) turns: std::collections::VecDeque<(u32, Turn)>,
    /// Notified when a message of this session becomes safe or lost.
    pub(super) done: Arc<event_listener::Event>,
    /// Answers to write.
    pub(super) out: Vec<u8>,
    /// How many `200 OK` answers `out` holds.
    pub(super) acks: u64,
    /// `ack: spool`: messages are answered once their records are in the spool.
    pub(super) when_spooled: bool,
    /// What the waits for bytes are timed with.
    pub(super) alarm: Alarm,
}

impl RelpSession {
    pub(super) async fn serve<S: AsyncRead + AsyncWrite + Unpin>(
        &mut self,
        stream: &mut S,
        limits: Limits,
        shutdown: &Shutdown,
    ) -> std::io::Result<End> {
        let max = limits.max_message_size;
        // Room for one whole frame of the largest size, its header, and a read.
        let mut buf = ReadBuffer::new(max + 64 + READ_SIZE);
        // False once the peer sent `close`, or shutdown began: nothing more is read.
        let mut reading = true;
        let mut yielder = Yielder::default();
        loop {
            if let Some(end) = self.answer_and_write(stream, reading, shutdown).await? {
                return Ok(end);
            }
            buf.prepare();
            let can_read = reading && self.turns.len() < RELP_WINDOW;
            // omrelp writes frame by frame: what came while the last read was handled joins
            // the same batch, and the batch goes to the publisher only once the socket has
            // nothing more. Fewer, larger batches, and nothing waits longer.
            let more = if can_read && self.pipeline.has_pending() && !shutdown.is_triggered() {
                futures_lite::future::poll_once(stream.read(buf.room())).await
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
                    match self
                        .wait(stream, &mut buf, can_read, &limits, shutdown)
                        .await
                    {
                        Some(woke) => woke,
                        None => continue,
                    }
                }
            };
            match woke {
                Woke::Heard | Woke::Again => {}
                Woke::Shutdown => reading = false,
                Woke::Deadline => {
                    return self.close_with(stream, SHUTTING_DOWN, End::Shutdown).await
                }
                Woke::Idle => return self.close_with(stream, "idle_timeout", End::Idle).await,
                Woke::Shrink => buf.shrink(),
                // The peer is gone: nothing it sent and is not answered can be answered now.
                Woke::Read(Ok(0)) => return Ok(End::Closed),
                Woke::Read(Err(e)) => return Err(e),
                Woke::Read(Ok(n)) => {
                    buf.read(n);
                    self.pipeline.stamp();
                    let cut = self.commands(&mut buf, max, &mut reading, &mut yielder, shutdown);
                    if let Err(why) = cut.await {
                        return self.refuse(stream, why).await;
                    }
                }
            }
        }
    }

    /// Answers what can be answered and writes it; the end of the session when that ends it
    /// (`close` answered, a message lost, or nothing left to read or answer).
    async fn answer_and_write<S: AsyncWrite + Unpin>(
        &mut self,
        stream: &mut S,
        reading: bool,
        shutdown: &Shutdown,
    ) -> std::io::Result<Option<End>> {
        let answered = self.answer();
        if let Answered::Lost(txnr) = answered {
            let why = format!(
                "a record of message {txnr} was neither delivered nor dead-lettered; \
                 closing the session so that its sender sends it again"
            );
            log::error!("RELP: {why}");
            return self.close_with(stream, &why, End::Shutdown).await.map(Some);
        }
        self.write(stream).await?;
        if let Answered::Closed = answered {
            return Ok(Some(End::Closed));
        }
        if !reading && self.turns.is_empty() {
            if shutdown.is_triggered() {
                let closed = self.close_with(stream, SHUTTING_DOWN, End::Shutdown).await;
                return closed.map(Some);
            }
            return Ok(Some(End::Shutdown));
        }
        Ok(None)
    }

    /// Waits for bytes, a message settled, shutdown or a timer; `None` when a message settled
    /// before the wait began (answer it first).
    async fn wait<S: AsyncRead + Unpin>(
        &mut self,
        stream: &mut S,
        buf: &mut ReadBuffer,
        can_read: bool,
        limits: &Limits,
        shutdown: &Shutdown,
    ) -> Option<Woke> {
        // Listen, then look again: a message settled since `answer` is either seen here or
        // heard.
        let heard = self.done.listen();
        if self.front_settled() {
            return None;
        }
        let idle = buf
            .idle_at(limits.idle_timeout)
            .filter(|_| self.turns.is_empty())
            .map(|at| (at, Woke::Idle));
        // A buffer grown for a long message or a fast sender is given back once the session
        // has been quiet, as a stream connection's is.
        let shrink = buf.shrink_at().map(|at| (at, Woke::Shrink));
        let wake = hotdog_stages::core::earliest(idle, shrink);
        let alarm = &mut self.alarm;
        Some(wait_relp(stream, buf.room(), can_read, heard, shutdown, alarm, wake).await)
    }

    /// Every whole RELP frame in `buf`, each command taken in turn: `syslog` messages through
    /// the pipeline, `open` answered, `close` ending the reading. Why, when a frame or command
    /// breaks the protocol.
    async fn commands(
        &mut self,
        buf: &mut ReadBuffer,
        max: usize,
        reading: &mut bool,
        yielder: &mut Yielder,
        shutdown: &Shutdown,
    ) -> Result<(), String> {
        loop {
            let mut verdict = Verdict::Pass;
            let (frame, consumed) = match relp::cut(buf.data(), max) {
                relp::Cut::Frame { frame, consumed } => (frame, consumed),
                relp::Cut::NeedMore => return Ok(()),
                relp::Cut::Malformed(why) => return Err(why),
            };
            let txnr = frame.txnr;
            match self.protocol.command(&frame)? {
                relp::Step::Open(answer) => {
                    let mut response = Vec::new();
                    relp::respond(&mut response, txnr, &answer);
                    self.turns.push_back((txnr, Turn::Answer(response)));
                }
                relp::Step::Syslog(data) => {
                    verdict = self.pipeline.admit(data.len());
                    let awaited = Awaited::answered(self.done.clone(), self.when_spooled);
                    // One dropped over the quota makes no record: it is answered at once.
                    if verdict != Verdict::Drop {
                        self.pipeline.awaited_frame(data, &awaited);
                    }
                    awaited.release();
                    self.turns.push_back((txnr, Turn::Message(awaited)));
                    self.metrics.relp_messages.fetch_add(1, Relaxed);
                }
                relp::Step::Close => {
                    self.turns.push_back((txnr, Turn::Close));
                    *reading = false;
                }
                relp::Step::Hint => {}
            }
            buf.consume(consumed);
            if let Verdict::PassThenWait(wait) = verdict {
                if !self.pipeline.wait_for_quota(wait, shutdown).await {
                    *reading = false;
                }
            } else if self.pipeline.batch_full() && !self.pipeline.flush().await {
                *reading = false;
            }
            if !*reading {
                return Ok(());
            }
            yielder.tick().await;
        }
    }

    /// True when the oldest turn can be answered now: [`RelpSession::answer`] left a message
    /// that was not safe yet at the front, and it has become safe (or lost) since.
    pub(super) fn front_settled(&self) -> bool {
        match self.turns.front() {
            Some((_, Turn::Message(a))) => a.standing() != Standing::Waiting,
            Some(_) => true,
            None => false,
        }
    }

    /// Answers, in order, every command from the oldest up to the first message not safe yet,
    /// which it watches: listen to the session's `done` after, then look again with
    /// [`RelpSession::front_settled`].
    pub(super) fn answer(&mut self) -> Answered {
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
    pub(super) async fn write<S: AsyncWrite + Unpin>(
        &mut self,
        stream: &mut S,
    ) -> std::io::Result<()> {
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
    pub(super) async fn close_with<S: AsyncWrite + Unpin>(
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
    pub(super) async fn refuse<S: AsyncWrite + Unpin>(
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
/// it began, its deadline), or the alarm, set for `wake` (the idle time, or a grown buffer's).
pub(super) async fn wait_relp<S: AsyncRead + Unpin>(
    stream: &mut S,
    buf: &mut [u8],
    can_read: bool,
    heard: event_listener::EventListener,
    shutdown: &Shutdown,
    alarm: &mut Alarm,
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
    let timer = async { alarm.until(wake).await.unwrap_or(Woke::Again) };
    read.or(async {
        heard.await;
        Woke::Heard
    })
    .or(stop)
    .or(timer)
    .await
}
