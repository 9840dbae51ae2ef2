//! PROXY protocol headers (HAProxy's spec, versions 1 and 2), which a load balancer puts before
//! the bytes of the client it passes on, so hotdog sees the client's address and not its own.
//!
//! Pure: bytes in, what they are out. The header itself is decoded by the `ppp` crate; this
//! module only finds where it ends (so not a byte of what follows is taken) and what it says.

use std::net::{IpAddr, SocketAddr};
use std::time::Duration;

/// Version 1 starts with this text.
const V1: &[u8] = b"PROXY ";
/// Version 2 starts with these 12 bytes.
const V2: &[u8] = b"\r\n\r\n\0\r\nQUIT\n";
/// A version 1 header is at most 107 bytes, CRLF included.
const V1_MAX: usize = 107;
/// A version 2 header: 16 bytes, then as many as its length field says.
const V2_FIXED: usize = 16;
/// The longest header of either version.
pub const MAX_HEADER: usize = V2_FIXED + u16::MAX as usize;

/// What the first bytes of a connection are.
#[derive(Debug, PartialEq, Eq)]
pub enum Parsed {
    /// The start of a header, or too few bytes to tell: read more.
    Incomplete,
    /// Not a PROXY header at all.
    NotProxy,
    /// A whole header of `len` bytes. `source` is the client's address; `None` when the header
    /// carries none (v1 `UNKNOWN`, a v2 `LOCAL` health check, a Unix socket), and the
    /// connection's own address stands.
    Header {
        len: usize,
        source: Option<SocketAddr>,
    },
    /// A header that is not valid, and why.
    Malformed(String),
}

/// How long a load balancer has to send its whole PROXY header (from the connection's accept),
/// and any other client to send enough bytes to tell that it is not sending one (from its first
/// byte).
pub const TIMEOUT: Duration = Duration::from_secs(10);

/// What passing a [`deadline`] means.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Expiry {
    /// Nothing was said for the listener's `idle_timeout`: the connection is idle.
    Idle,
    /// The header (or enough to tell there is none) did not come in time: refused.
    Header,
}

/// When a connection still waiting for its PROXY header is given up, counted from its accept;
/// `None` only while nothing was said by a client that is not a load balancer on a listener
/// without `idle_timeout` (a syslog sender may be quiet for long). `trusted`: the connection
/// comes from `proxy_protocol.from`; `first_byte`: when its first byte came, if it did.
pub fn deadline(
    trusted: bool,
    idle: Option<Duration>,
    first_byte: Option<Duration>,
) -> Option<(Duration, Expiry)> {
    match first_byte {
        Some(_) if trusted => Some((TIMEOUT, Expiry::Header)),
        Some(at) => Some((at + TIMEOUT, Expiry::Header)),
        None => {
            let idle = idle.map(|t| (t, Expiry::Idle));
            let header = trusted.then_some((TIMEOUT, Expiry::Header));
            crate::core::earliest(header, idle)
        }
    }
}

/// What `bytes`, the first of a connection, are.
pub fn parse(bytes: &[u8]) -> Parsed {
    if starts(bytes, V2) {
        if bytes.len() < V2_FIXED {
            return Parsed::Incomplete;
        }
        let len = V2_FIXED + usize::from(u16::from_be_bytes([bytes[14], bytes[15]]));
        if bytes.len() < len {
            return Parsed::Incomplete;
        }
        return match ppp::v2::Header::try_from(&bytes[..len]) {
            Ok(h) => match check_tlvs(&h) {
                Err(why) => Parsed::Malformed(format!("PROXY v2 header: {why}")),
                Ok(()) => Parsed::Header {
                    len,
                    source: match (h.command, h.addresses) {
                        (ppp::v2::Command::Local, _) => None,
                        (_, ppp::v2::Addresses::IPv4(a)) => {
                            Some(SocketAddr::new(IpAddr::V4(a.source_address), a.source_port))
                        }
                        (_, ppp::v2::Addresses::IPv6(a)) => {
                            Some(SocketAddr::new(IpAddr::V6(a.source_address), a.source_port))
                        }
                        (_, ppp::v2::Addresses::Unix(_) | ppp::v2::Addresses::Unspecified) => None,
                    },
                },
            },
            Err(e) => Parsed::Malformed(format!("PROXY v2 header: {e}")),
        };
    }
    if starts(bytes, V1) {
        if bytes.len() < V1.len() {
            return Parsed::Incomplete;
        }
        let window = &bytes[..bytes.len().min(V1_MAX)];
        let Some(end) = window.windows(2).position(|w| w == b"\r\n") else {
            return if bytes.len() >= V1_MAX {
                Parsed::Malformed(format!("PROXY v1 header: no CRLF in {V1_MAX} bytes"))
            } else {
                Parsed::Incomplete
            };
        };
        let len = end + 2;
        return match ppp::v1::Header::try_from(&bytes[..len]) {
            Ok(h) => Parsed::Header {
                len,
                source: match h.addresses {
                    ppp::v1::Addresses::Tcp4(a) => {
                        Some(SocketAddr::new(IpAddr::V4(a.source_address), a.source_port))
                    }
                    ppp::v1::Addresses::Tcp6(a) => {
                        Some(SocketAddr::new(IpAddr::V6(a.source_address), a.source_port))
                    }
                    ppp::v1::Addresses::Unknown => None,
                },
            },
            Err(e) => Parsed::Malformed(format!("PROXY v1 header: {e}")),
        };
    }
    Parsed::NotProxy
}

/// The TLV type of a CRC32C checksum of the whole header (HAProxy's spec, 2.2.5).
const PP2_TYPE_CRC32C: u8 = 0x03;

/// Every TLV of a v2 header lies within it, and a CRC32C one matches the header (computed
/// with its own four bytes zero).
fn check_tlvs(h: &ppp::v2::Header<'_>) -> Result<(), String> {
    let tlv_start = h.len() - h.tlv_bytes().len();
    let mut at = tlv_start;
    for tlv in h.tlvs() {
        let tlv = tlv.map_err(|e| format!("a TLV that does not fit in the header: {e}"))?;
        let value_at = at + 3;
        at = value_at + tlv.value.len();
        if tlv.kind != PP2_TYPE_CRC32C {
            continue;
        }
        let Ok(sent) = <[u8; 4]>::try_from(tlv.value.as_ref()) else {
            return Err(format!("a CRC32C TLV of {} bytes", tlv.value.len()));
        };
        let mut zeroed = h.as_bytes().to_vec();
        zeroed[value_at..value_at + 4].fill(0);
        let computed = CRC32C.checksum(&zeroed);
        if computed != u32::from_be_bytes(sent) {
            return Err("its CRC32C checksum does not match".into());
        }
    }
    Ok(())
}

const CRC32C: crc::Crc<u32> = crc::Crc::<u32>::new(&crc::CRC_32_ISCSI);

/// Whether `bytes` agree with `signature` as far as either goes.
fn starts(bytes: &[u8], signature: &[u8]) -> bool {
    let n = bytes.len().min(signature.len());
    bytes[..n] == signature[..n]
}

#[cfg(test)]
mod tests {
    use super::*;

    fn v2(command: u8, family: u8, addresses: &[u8], tail: &[u8]) -> Vec<u8> {
        let mut b = V2.to_vec();
        b.push(0x20 | command);
        b.push(family);
        b.extend((addresses.len() as u16).to_be_bytes());
        b.extend(addresses);
        b.extend(tail);
        b
    }

    #[test]
    fn a_v1_header_gives_the_client_and_its_length_and_takes_nothing_after_it() {
        let bytes = b"PROXY TCP4 192.0.2.7 10.0.0.1 51234 1514\r\n<13>hello\n";
        assert_eq!(
            parse(bytes),
            Parsed::Header {
                len: 42,
                source: Some("192.0.2.7:51234".parse().expect("addr")),
            }
        );
        let v6 = b"PROXY TCP6 2001:db8::5 2001:db8::1 4000 1514\r\n";
        assert_eq!(
            parse(v6),
            Parsed::Header {
                len: v6.len(),
                source: Some("[2001:db8::5]:4000".parse().expect("addr")),
            }
        );
        assert_eq!(
            parse(b"PROXY UNKNOWN\r\n"),
            Parsed::Header {
                len: 15,
                source: None
            }
        );
    }

    #[test]
    fn a_v2_header_gives_the_client_and_a_local_one_none() {
        let mut addresses = vec![192, 0, 2, 9, 10, 0, 0, 1];
        addresses.extend(4000u16.to_be_bytes());
        addresses.extend(1514u16.to_be_bytes());
        let bytes = v2(1, 0x11, &addresses, b"<13>after");
        assert_eq!(
            parse(&bytes),
            Parsed::Header {
                len: 28,
                source: Some("192.0.2.9:4000".parse().expect("addr")),
            }
        );
        let local = v2(0, 0x00, &[], b"");
        assert_eq!(
            parse(&local),
            Parsed::Header {
                len: 16,
                source: None
            }
        );
    }

    #[test]
    fn partial_headers_ask_for_more_and_other_bytes_are_not_proxy() {
        assert_eq!(parse(b""), Parsed::Incomplete);
        assert_eq!(parse(b"PRO"), Parsed::Incomplete);
        assert_eq!(parse(b"PROXY TCP4 192.0.2.7"), Parsed::Incomplete);
        assert_eq!(parse(&V2[..5]), Parsed::Incomplete);
        let mut addresses = vec![192, 0, 2, 9, 10, 0, 0, 1];
        addresses.extend([0, 1, 0, 2]);
        let whole = v2(1, 0x11, &addresses, b"");
        assert_eq!(parse(&whole[..20]), Parsed::Incomplete);
        assert_eq!(
            parse(b"<13>Oct 11 22:14:15 host app: hi\n"),
            Parsed::NotProxy
        );
        assert_eq!(parse(b"\x16\x03\x01\x02\x00"), Parsed::NotProxy);
        assert_eq!(parse(b"P"), Parsed::Incomplete);
        assert_eq!(parse(b"PX"), Parsed::NotProxy);
    }

    #[test]
    fn a_crc32c_tlv_must_match_the_header() {
        let mut addresses = vec![192, 0, 2, 9, 10, 0, 0, 1, 0, 1, 0, 2];
        addresses.extend([PP2_TYPE_CRC32C, 0, 4, 0, 0, 0, 0]);
        let mut header = v2(1, 0x11, &addresses, b"");
        let sum = CRC32C.checksum(&header).to_be_bytes();
        let at = header.len() - 4;
        header[at..].copy_from_slice(&sum);
        assert!(matches!(parse(&header), Parsed::Header { len: 35, .. }));
        // The check value of the CRC-32C (iSCSI) catalogue, so this is that checksum.
        assert_eq!(CRC32C.checksum(b"123456789"), 0xE306_9283);
        header[at] ^= 1;
        assert!(matches!(
            parse(&header),
            Parsed::Malformed(why) if why.contains("CRC32C")
        ));
    }

    #[test]
    fn malformed_headers_say_so() {
        assert!(matches!(
            parse(b"PROXY TCP4 not-an-address 10.0.0.1 1 2\r\n"),
            Parsed::Malformed(_)
        ));
        let long = [b"PROXY TCP4 ".as_slice(), &[b'1'; 200]].concat();
        assert!(matches!(parse(&long), Parsed::Malformed(_)));
        // Version 3 does not exist.
        let mut bad = v2(1, 0x11, &[0; 12], b"");
        bad[12] = 0x31;
        assert!(matches!(parse(&bad), Parsed::Malformed(_)));
        // A TLV longer than what is left of the header.
        let mut addresses = vec![192, 0, 2, 9, 10, 0, 0, 1, 0, 1, 0, 2];
        addresses.extend([0x04, 0x00, 0x10, b'x']);
        assert!(matches!(
            parse(&v2(1, 0x11, &addresses, b"")),
            Parsed::Malformed(why) if why.contains("TLV")
        ));
        // An IPv4 family with too few address bytes.
        assert!(matches!(
            parse(&v2(1, 0x11, &[1, 2], b"")),
            Parsed::Malformed(_)
        ));
    }
}
