//! The stream loop of a TCP or TLS connection (RELP has its own, in [`super::relp`]): one read
//! buffer that grows for a burst or a long frame and is given back after a quiet second, cut
//! into frames, each through the pipeline; shutdown and idle timeouts end it.

use super::*;

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

pub(super) async fn read_all<S: AsyncRead + Unpin>(
    mut stream: S,
    mut pipeline: Pipeline,
    limits: Limits,
    shutdown: Shutdown,
) -> std::io::Result<End> {
    let max = limits.max_message_size;
    let mut framer = Framer::with(max, limits.framing);
    // Room for one whole frame of the largest size, its length prefix, and a read.
    let mut buf = ReadBuffer::new(max + 16 + READ_SIZE);
    let mut yielder = Yielder::default();
    let mut alarm = Alarm::default();
    let end = loop {
        buf.prepare();
        let idle = buf.idle_at(limits.idle_timeout).map(|at| (at, Read::Idle));
        let shrink = buf.shrink_at().map(|at| (at, Read::Shrink));
        let wake = hotdog_stages::core::earliest(idle, shrink);
        match read(&mut stream, buf.room(), &shutdown, &mut alarm, wake).await {
            Ok(Read::Bytes(n)) => {
                buf.read(n);
                pipeline.stamp();
                if !frames(
                    &mut pipeline,
                    &mut framer,
                    &mut buf,
                    &mut yielder,
                    &shutdown,
                )
                .await
                {
                    return Ok(End::Shutdown);
                }
            }
            Ok(Read::Shrink) => buf.shrink(),
            Ok(Read::Again) => {}
            Ok(Read::Idle) => break End::Idle,
            Ok(Read::Quiet) => break End::Shutdown,
            Ok(Read::Closed) => break End::Closed,
            Err(e) => {
                pipeline.flush().await;
                return Err(e);
            }
        }
    };
    finish(&mut pipeline, &mut framer, buf.data()).await;
    Ok(end)
}

/// Every whole frame in `buf` through the pipeline, then what is batched to the publisher.
/// False when the publisher takes nothing more.
async fn frames(
    pipeline: &mut Pipeline,
    framer: &mut Framer,
    buf: &mut ReadBuffer,
    yielder: &mut Yielder,
    shutdown: &Shutdown,
) -> bool {
    loop {
        match framer.next_frame(buf.data()) {
            Step::Frame {
                data,
                truncated,
                consumed,
            } => {
                let verdict = pipeline.admit(data.len());
                if verdict != Verdict::Drop {
                    pipeline.frame(data, truncated);
                }
                buf.consume(consumed);
                if let Verdict::PassThenWait(wait) = verdict {
                    if !pipeline.wait_for_quota(wait, shutdown).await {
                        return false;
                    }
                } else if pipeline.batch_full() && !pipeline.flush().await {
                    return false;
                }
                yielder.tick().await;
            }
            Step::Skip { consumed } => buf.consume(consumed),
            Step::NeedMore => break,
        }
    }
    pipeline.flush().await
}

/// The last frame (one without a terminator), and what is batched, to the publisher.
pub(super) async fn finish(pipeline: &mut Pipeline, framer: &mut Framer, rest: &[u8]) {
    if let Some(last) = framer.finish(rest) {
        pipeline.frame(last, false);
    }
    pipeline.flush().await;
}

/// What one [`read`] came to.
#[derive(Debug)]
pub(super) enum Read {
    Bytes(usize),
    /// The peer closed the connection.
    Closed,
    /// Shutdown has begun and the peer has been quiet for [`DRAIN_IDLE`].
    Quiet,
    /// `idle_timeout` passed without a byte.
    Idle,
    /// Time to give back a large buffer (nothing was read).
    Shrink,
    /// The alarm rang for a time that moved on: nothing is due yet.
    Again,
}

/// One read, or what came first: shutdown (then reads go on until the peer is quiet), or the
/// alarm, set for `wake` (a time and what it means).
pub(super) async fn read<S: AsyncRead + Unpin>(
    stream: &mut S,
    buf: &mut [u8],
    shutdown: &Shutdown,
    alarm: &mut Alarm,
    wake: Option<(Instant, Read)>,
) -> std::io::Result<Read> {
    use futures_lite::FutureExt;
    let bytes = |n: usize| if n == 0 { Read::Closed } else { Read::Bytes(n) };
    if !shutdown.is_triggered() {
        let r = shutdown
            .unless(
                async { stream.read(&mut *buf).await.map(bytes) }
                    .or(async { Ok(alarm.until(wake).await.unwrap_or(Read::Again)) }),
            )
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
