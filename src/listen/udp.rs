//! A UDP listener: each datagram one message, through the same pipeline; it cannot push back,
//! so what the outbox has no room for is dropped and counted (`udp.dropped`).

use super::*;

/// One message per datagram (RFC 5426). UDP cannot push back: when the publisher's queue is full
/// the datagram is dropped and counted in `udp.dropped`.
pub(super) async fn udp(
    socket: UdpSocket,
    shared: Arc<Shared>,
    origin: Origin,
    max: usize,
    shutdown: Shutdown,
) {
    let metrics = shared.metrics.clone();
    let mut pipeline = Pipeline::new(shared, origin);
    // One byte more than the limit tells a datagram that was cut.
    let mut buf = vec![0u8; max.max(1) + 1];
    loop {
        // Datagrams are batched like lines read from a stream; a batch waits at most
        // UDP_LINGER for more before it goes to the publisher.
        let pending = pipeline.has_pending();
        let received = shutdown
            .unless(async { Some(socket.recv_from(&mut buf).await) }.or(async {
                if pending {
                    smol::Timer::after(UDP_LINGER).await;
                } else {
                    std::future::pending::<()>().await;
                }
                None
            }))
            .await;
        let (n, peer) = match received {
            None => {
                udp_flush(&mut pipeline, &metrics);
                return;
            }
            Some(None) => {
                udp_flush(&mut pipeline, &metrics);
                continue;
            }
            Some(Some(Ok(r))) => r,
            Some(Some(Err(e))) => {
                throttle::UDP_RECEIVE.warn(format_args!("udp receive failed: {e}"));
                continue;
            }
        };
        let Some((data, truncated)) = hotdog_stages::frame::lines::datagram(&buf[..n], max) else {
            continue;
        };
        pipeline.origin_mut().peer_addr = Some(peer.to_string());
        pipeline.stamp();
        pipeline.frame(data, truncated);
        if pipeline.batch_full() {
            udp_flush(&mut pipeline, &metrics);
        }
    }
}

/// How long a UDP batch waits for more datagrams.
pub(super) const UDP_LINGER: Duration = Duration::from_millis(5);

pub(super) fn udp_flush(pipeline: &mut Pipeline, metrics: &crate::base::metrics::Metrics) {
    let dropped = pipeline.try_flush();
    if dropped > 0 {
        metrics.udp_dropped.fetch_add(dropped as u64, Relaxed);
        throttle::UDP_DROPPED.warn(format_args!(
            "queue to Kafka full: dropped {dropped} UDP messages"
        ));
    }
}
