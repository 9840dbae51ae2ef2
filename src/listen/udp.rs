//! A UDP listener: each datagram one message, through the same pipeline; it cannot push back,
//! so what the outbox has no room for is dropped and counted (`udp.dropped`).

use std::io::IoSliceMut;
use std::os::fd::AsRawFd as _;

use nix::sys::socket::{recvmmsg, MsgFlags, MultiHeaders, SockaddrStorage};

use super::*;

/// One message per datagram (RFC 5426). UDP cannot push back: when the publisher's queue is full
/// the datagram is dropped and counted in `udp.dropped`. Datagrams are read [`BATCH`] at a time
/// with one system call (`recvmmsg`).
pub(super) async fn udp(
    socket: Async<UdpSocket>,
    shared: Arc<Shared>,
    origin: Origin,
    quota: Arc<QuotaSlot>,
    max: usize,
    shutdown: Shutdown,
) {
    let metrics = shared.metrics.clone();
    let mut pipeline = Pipeline::new(shared, origin).with_quota(quota);
    // One byte more than the limit tells a datagram that was cut.
    let mut datagrams = Datagrams::new(max.max(1) + 1);
    let mut peer: Option<SocketAddr> = None;
    let mut since_yield = 0;
    let mut patient = true;
    loop {
        // Datagrams are batched like lines read from a stream; a batch waits at most
        // UDP_LINGER for more before it goes to the publisher.
        let pending = pipeline.has_pending();
        let received = shutdown
            .unless(
                async { Some(socket.read_with(|s| datagrams.receive(s)).await) }.or(async {
                    if pending {
                        smol::Timer::after(UDP_LINGER).await;
                    } else {
                        std::future::pending::<()>().await;
                    }
                    None
                }),
            )
            .await;
        let count = match received {
            None => {
                udp_flush(&mut pipeline, &metrics, &mut patient).await;
                return;
            }
            Some(None) => {
                udp_flush(&mut pipeline, &metrics, &mut patient).await;
                continue;
            }
            Some(Some(Ok(n))) => n,
            Some(Some(Err(e))) => {
                throttle::UDP_RECEIVE.warn(format_args!("udp receive failed: {e}"));
                continue;
            }
        };
        // Read by one call: one time for all.
        pipeline.stamp();
        for i in 0..count {
            let (bytes, from) = datagrams.get(i);
            let Some((data, truncated)) = hotdog_stages::frame::lines::datagram(bytes, max) else {
                continue;
            };
            // Most datagrams come from the sender before: its address is written once.
            if from != peer {
                peer = from;
                pipeline.origin_mut().peer_addr = from.map(|a| a.to_string());
                pipeline.sender_changed();
            }
            // A UDP listener's quota can only drop (`over: wait` is refused for it).
            if pipeline.admit(data.len()) == Verdict::Drop {
                continue;
            }
            pipeline.frame(data, truncated);
            if pipeline.batch_full() {
                udp_flush(&mut pipeline, &metrics, &mut patient).await;
            }
        }
        // A flood is always ready to read: give the other tasks their turn now and then.
        since_yield += count;
        if since_yield >= YIELD_EVERY {
            since_yield = 0;
            smol::future::yield_now().await;
        }
    }
}

/// Datagrams read with one system call at most.
const BATCH: usize = 32;
/// Datagrams handled between two cooperative yields.
const YIELD_EVERY: usize = 256;

/// Room for [`BATCH`] datagrams and what `recvmmsg` said of each.
struct Datagrams {
    /// `BATCH` slots of `slot` bytes (zeroed lazily by the kernel: a slot's pages are only
    /// touched as far as its datagrams reach).
    buf: Vec<u8>,
    slot: usize,
    /// The length and sender of each datagram of the last read.
    got: Vec<(usize, Option<SocketAddr>)>,
}

impl Datagrams {
    fn new(slot: usize) -> Datagrams {
        Datagrams {
            buf: vec![0u8; slot * BATCH],
            slot,
            got: Vec::with_capacity(BATCH),
        }
    }

    /// Reads the datagrams waiting, up to [`BATCH`], without waiting for any: how many.
    fn receive(&mut self, socket: &UdpSocket) -> std::io::Result<usize> {
        let mut slices: Vec<[IoSliceMut; 1]> = self
            .buf
            .chunks_mut(self.slot)
            .map(|s| [IoSliceMut::new(s)])
            .collect();
        // Made for each call: they hold raw pointers, which a task that moves between threads
        // may not keep across an await.
        let mut headers = MultiHeaders::<SockaddrStorage>::preallocate(BATCH, None);
        let read = recvmmsg(
            socket.as_raw_fd(),
            &mut headers,
            slices.iter_mut(),
            MsgFlags::MSG_DONTWAIT,
            None,
        )
        .map_err(std::io::Error::from)?;
        self.got.clear();
        for m in read {
            self.got
                .push((m.bytes, m.address.and_then(|a| std_address(&a))));
        }
        Ok(self.got.len())
    }

    /// The bytes and sender of datagram `i` of the last read.
    fn get(&self, i: usize) -> (&[u8], Option<SocketAddr>) {
        let (len, from) = self.got[i];
        let at = i * self.slot;
        (&self.buf[at..at + len.min(self.slot)], from)
    }
}

fn std_address(a: &SockaddrStorage) -> Option<SocketAddr> {
    if let Some(v4) = a.as_sockaddr_in() {
        return Some(SocketAddr::V4((*v4).into()));
    }
    a.as_sockaddr_in6().map(|v6| SocketAddr::V6((*v6).into()))
}

/// How long a UDP batch waits for more datagrams.
pub(super) const UDP_LINGER: Duration = Duration::from_millis(5);

/// How long a UDP batch may wait for room in the outbox (meanwhile datagrams wait in the
/// kernel's receive buffer, which holds a quarter of a second of far more than a listener
/// reads): a spool or publisher that is behind for a moment costs no datagram.
const UDP_PATIENCE: Duration = Duration::from_millis(250);

/// Hands the batch to the outbox; what finds no room within [`UDP_PATIENCE`] is dropped and
/// counted. Once a batch was dropped, the next ones do not wait until one finds room again:
/// an outbox that stays full (the broker away, no spool) does not slow reading down, and
/// the kernel does not drop what hotdog would count.
pub(super) async fn udp_flush(
    pipeline: &mut Pipeline,
    metrics: &crate::base::metrics::Metrics,
    patient: &mut bool,
) {
    let patience = if *patient {
        UDP_PATIENCE
    } else {
        Duration::ZERO
    };
    let dropped = pipeline.flush_within(patience).await;
    *patient = dropped == 0;
    if dropped > 0 {
        metrics.udp_dropped.fetch_add(dropped as u64, Relaxed);
        throttle::UDP_DROPPED.warn(format_args!(
            "queue to Kafka full: dropped {dropped} UDP messages"
        ));
    }
}

/// The UDP sockets bound so far, by the inode `/proc/net/udp` names them by.
static SOCKETS: Mutex<Vec<u64>> = Mutex::new(Vec::new());

/// The receive buffer a UDP listener asks for without `receive_buffer`: room for a burst while
/// the executor is busy elsewhere.
const RECEIVE_BUFFER: usize = 8 << 20;

/// Asks the kernel for a receive buffer for `socket` (`asked`, or [`RECEIVE_BUFFER`]), says so
/// when it gives less than the operator asked for (`net.core.rmem_max` caps what a process may
/// ask for), and notes the socket so that what the kernel drops for it is counted.
pub(super) fn tune(socket: &Async<UdpSocket>, asked: Option<usize>, name: &str) {
    let bytes = asked.unwrap_or(RECEIVE_BUFFER);
    let sock = socket2::SockRef::from(socket);
    if let Err(e) = sock.set_recv_buffer_size(bytes) {
        log::warn!("{name}: cannot set its receive buffer to {bytes} bytes: {e}");
    }
    // Linux reports twice what it gives (the other half is its own bookkeeping).
    let given = sock.recv_buffer_size().map_or(0, |b| b / 2);
    if given < bytes && asked.is_some() {
        log::warn!(
            "{name}: the kernel gave a receive buffer of {given} bytes for the {bytes} asked \
             (receive_buffer): net.core.rmem_max caps it; `sysctl -w net.core.rmem_max={bytes}` \
             raises the cap. Datagrams that arrive while it is full are dropped by the kernel \
             and counted in udp.kernel_dropped"
        );
    }
    if let Some(inode) = inode(socket) {
        SOCKETS
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .push(inode);
    }
}

/// The inode of `socket`, from its `/proc/self/fd` link (`socket:[INODE]`).
fn inode(socket: &Async<UdpSocket>) -> Option<u64> {
    let link = std::fs::read_link(format!("/proc/self/fd/{}", socket.as_raw_fd())).ok()?;
    link.to_str()?
        .strip_prefix("socket:[")?
        .strip_suffix(']')?
        .parse()
        .ok()
}

/// Datagrams the kernel dropped for hotdog's UDP sockets that are still open (their receive
/// buffers were full): the `drops` column of `/proc/net/udp` and `/proc/net/udp6`. A socket
/// found in neither is closed (a listener a reload stopped) and is forgotten, so that its inode,
/// once the kernel gives it to another socket, is not counted.
pub fn kernel_dropped() -> u64 {
    let mut sockets = SOCKETS.lock().unwrap_or_else(|p| p.into_inner());
    if sockets.is_empty() {
        return 0;
    }
    let tables: Vec<String> = ["/proc/net/udp", "/proc/net/udp6"]
        .iter()
        .filter_map(|table| std::fs::read_to_string(table).ok())
        .collect();
    let found: Vec<(u64, u64)> = tables.iter().flat_map(|t| drops(t, &sockets)).collect();
    if !tables.is_empty() {
        sockets.retain(|inode| found.iter().any(|(i, _)| i == inode));
    }
    found.iter().map(|(_, d)| d).sum()
}

/// The sockets of `inodes` found in a `/proc/net/udp` table, each with its drops: `sl local rem
/// st tx:rx tr:when retrnsmt uid timeout inode ref pointer drops`.
fn drops(table: &str, inodes: &[u64]) -> Vec<(u64, u64)> {
    table
        .lines()
        .skip(1)
        .filter_map(|line| {
            let cols: Vec<&str> = line.split_whitespace().collect();
            let inode: u64 = cols.get(9)?.parse().ok()?;
            inodes
                .contains(&inode)
                .then(|| Some((inode, cols.get(12)?.parse::<u64>().ok()?)))?
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn datagrams_are_read_a_batch_at_a_time_with_their_senders_and_cut_to_the_slot() {
        let socket = UdpSocket::bind("127.0.0.1:0").expect("bind");
        let to = socket.local_addr().expect("address");
        let (a, b) = (
            UdpSocket::bind("127.0.0.1:0").expect("bind"),
            UdpSocket::bind("127.0.0.1:0").expect("bind"),
        );
        for i in 0..40 {
            let sender = if i % 2 == 0 { &a } else { &b };
            let text = if i == 5 {
                "x".repeat(100)
            } else {
                format!("<13>datagram {i}")
            };
            sender.send_to(text.as_bytes(), to).expect("send");
        }
        let mut d = Datagrams::new(17);
        // Loopback delivers at once: 40 are waiting, read 32 and then 8.
        assert_eq!(d.receive(&socket).expect("read"), BATCH);
        assert_eq!(d.get(0), (&b"<13>datagram 0"[..], a.local_addr().ok()));
        assert_eq!(d.get(1), (&b"<13>datagram 1"[..], b.local_addr().ok()));
        // Longer than its slot: cut to it, which tells the framer it was cut.
        assert_eq!(d.get(5).0, "x".repeat(17).as_bytes());
        assert_eq!(d.receive(&socket).expect("read"), 8);
        assert_eq!(d.get(7).0, b"<13>datagram 39");
        // Nothing left: the socket would block, which the caller waits on.
        let e = d.receive(&socket).expect_err("nothing to read");
        assert_eq!(e.kind(), std::io::ErrorKind::WouldBlock);
    }

    #[test]
    fn drops_are_read_for_the_sockets_asked_of() {
        let table = "   sl  local_address rem_address   st tx_queue rx_queue tr tm->when retrnsmt   uid  timeout inode ref pointer drops
  717: 0100007F:BB6D 00000000:0000 07 00000000:00000000 00:00000000 00000000     0        0 123456 2 0000000000000000 42
  718: 0100007F:BB6E 00000000:0000 07 00000000:00000000 00:00000000 00000000     0        0 654321 2 0000000000000000 7
";
        assert_eq!(super::drops(table, &[123456]), [(123456, 42)]);
        assert_eq!(
            super::drops(table, &[123456, 654321]),
            [(123456, 42), (654321, 7)]
        );
        assert_eq!(super::drops(table, &[1]), []);
    }
}
