//! One task per connection: read bytes, cut frames, parse, apply the rules, and send the records
//! to the publisher in batches. When the outbox is full, `send` waits, and this task stops reading
//! its socket: the sender feels TCP backpressure, nothing is dropped.

use std::sync::Arc;
use std::time::Duration;

use futures_lite::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};

use crate::framing::{Framer, Step};
use crate::metrics::{LineCounts, Metrics};
use crate::publisher::Outbox;
use crate::record::Batch;
use crate::rules::{Origin, Rules};
use crate::shutdown::Shutdown;
use crate::syslog;

/// How much is read from the socket at once.
const READ_SIZE: usize = 64 * 1024;
/// Frames handled between two cooperative yields, so a flooding sender cannot starve others.
const YIELD_EVERY: u32 = 256;
/// During shutdown, a connection that has been quiet this long has sent everything it had.
const DRAIN_IDLE: Duration = Duration::from_millis(250);

/// What every connection shares.
pub struct Shared {
    pub rules: Arc<Rules>,
    pub metrics: Arc<Metrics>,
    /// The way to the publisher.
    pub outbox: Outbox,
}

/// The per-connection state of the pipeline (everything but the socket).
pub struct Pipeline {
    shared: Arc<Shared>,
    origin: Origin,
    scratch: crate::rules::Scratch,
    batch: Batch,
    batch_max: usize,
    counts: LineCounts,
    /// When the current read happened (ms since the epoch), stamped on its records.
    read_ms: i64,
}

impl Pipeline {
    pub fn new(shared: Arc<Shared>, origin: Origin) -> Self {
        Pipeline {
            scratch: shared.rules.scratch(),
            batch: Vec::new(),
            batch_max: shared.outbox.batch_max(),
            counts: LineCounts::default(),
            read_ms: 0,
            shared,
            origin,
        }
    }

    /// Parses one frame and applies the rules to it.
    pub fn frame(&mut self, data: &[u8], truncated: bool) {
        let lossy;
        let line = match std::str::from_utf8(data) {
            Ok(s) => s,
            Err(_) => {
                self.counts.invalid_utf8 += 1;
                lossy = String::from_utf8_lossy(data);
                &lossy
            }
        };
        self.counts.lines += 1;
        self.counts.truncated += u64::from(truncated);
        let msg = syslog::parse(line);
        if msg.format == syslog::Format::Unparsed {
            self.counts.unparsed += 1;
        }
        let before = self.batch.len();
        let outcome =
            self.shared
                .rules
                .apply(&msg, &self.origin, &mut self.scratch, &mut self.batch, None);
        for r in &mut self.batch[before..] {
            r.read_ms = self.read_ms;
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
        self.read_ms = crate::record::now_ms();
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

    fn take_batch(&mut self) -> Batch {
        std::mem::replace(&mut self.batch, Vec::with_capacity(self.batch_max))
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

/// Reads `stream` until the peer closes it (or, once shutdown has begun, until it has been
/// quiet for a moment), pushing every frame through the pipeline, then closes it (for TLS,
/// with a close_notify).
pub async fn run<S: AsyncRead + AsyncWrite + Unpin>(
    mut stream: S,
    pipeline: Pipeline,
    max: usize,
    shutdown: Shutdown,
) -> std::io::Result<()> {
    let result = read_all(&mut stream, pipeline, max, shutdown).await;
    let closed = stream.close().await;
    result.and(closed)
}

async fn read_all<S: AsyncRead + Unpin>(
    mut stream: S,
    mut pipeline: Pipeline,
    max: usize,
    shutdown: Shutdown,
) -> std::io::Result<()> {
    let mut framer = Framer::new(max);
    // Room for one whole frame of the largest size, its length prefix, and a read.
    let mut buf = vec![0u8; max + 16 + READ_SIZE];
    let (mut start, mut end) = (0usize, 0usize);
    let mut since_yield = 0u32;
    loop {
        if buf.len() - end < READ_SIZE {
            buf.copy_within(start..end, 0);
            end -= start;
            start = 0;
        }
        let n = match read(&mut stream, &mut buf[end..], &shutdown).await {
            Some(Ok(n)) => n,
            Some(Err(e)) => {
                pipeline.flush().await;
                return Err(e);
            }
            None => 0,
        };
        if n == 0 {
            break;
        }
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
                        return Ok(());
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
            return Ok(());
        }
    }
    if let Some(last) = framer.finish(&buf[start..end]) {
        pipeline.frame(last, false);
    }
    pipeline.flush().await;
    Ok(())
}

/// One read; `None` when shutdown has begun and the peer has been quiet for [`DRAIN_IDLE`].
async fn read<S: AsyncRead + Unpin>(
    stream: &mut S,
    buf: &mut [u8],
    shutdown: &Shutdown,
) -> Option<std::io::Result<usize>> {
    use futures_lite::FutureExt;
    if !shutdown.is_triggered() {
        let r = async { Some(stream.read(&mut *buf).await) }
            .or(async {
                shutdown.wait().await;
                None
            })
            .await;
        if r.is_some() {
            return r;
        }
    }
    // Shutdown has begun: keep reading until the peer goes quiet.
    async { Some(stream.read(buf).await) }
        .or(async {
            smol::Timer::after(DRAIN_IDLE).await;
            None
        })
        .await
}
