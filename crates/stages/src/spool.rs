//! The spool's on-disk format, pure: a segment is a header (magic and format version) and then
//! records, each framed by its length and a CRC32C of its body. [`scan`] reads a segment's bytes
//! back and never fails on what it finds: a record whose checksum does not match is skipped and
//! reported with its offset, the reader finds the next good record after it, and a last record
//! cut short (a torn write) is reported as such. Beside each segment, its acknowledgements: the
//! ranges of its records that Kafka has (or that became dead letters), each entry checksummed
//! too. The files and their durability are the binary's (`src/spool`); this is what goes into
//! them.

use bytes::Bytes;

use crate::core::{Name, Record};

/// What every segment starts with.
pub const MAGIC: [u8; 8] = *b"HDSPOOL\n";
/// The format version this build writes and reads; a segment of a later one is refused.
pub const VERSION: u32 = 1;
/// The header's length: magic, version, and 4 bytes kept for later (zero).
pub const HEADER_LEN: usize = 16;
/// A record frame's own bytes: its body's length and CRC32C.
pub const FRAME_LEN: usize = 8;
/// The largest body a frame may announce: a record's payload is at most `max_message_size`
/// (64 MiB at most) plus what the rules add; anything longer is damage, not a record.
pub const MAX_BODY: usize = 256 * 1024 * 1024;

/// CRC32C (Castagnoli), with the processor's instruction where it has one.
fn crc(bytes: &[u8]) -> u32 {
    crc32c::crc32c(bytes)
}

/// A segment's header.
pub fn header() -> [u8; HEADER_LEN] {
    let mut h = [0u8; HEADER_LEN];
    h[..8].copy_from_slice(&MAGIC);
    h[8..12].copy_from_slice(&VERSION.to_le_bytes());
    h
}

/// Why a segment's header is not one this build reads.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum BadHeader {
    /// Too short, or not a spool segment at all.
    NotASegment,
    /// Written by a later hotdog, in a format this one does not know.
    Newer(u32),
}

/// Checks a segment's header (its first [`HEADER_LEN`] bytes).
pub fn check_header(bytes: &[u8]) -> Result<(), BadHeader> {
    if bytes.len() < HEADER_LEN || bytes[..8] != MAGIC {
        return Err(BadHeader::NotASegment);
    }
    let version = u32::from_le_bytes([bytes[8], bytes[9], bytes[10], bytes[11]]);
    match version {
        VERSION => Ok(()),
        0 => Err(BadHeader::NotASegment),
        v => Err(BadHeader::Newer(v)),
    }
}

/// A record as the spool keeps it: what Kafka gets, and the identity it is sent with (the same
/// when it is sent again after a restart).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Spooled {
    pub id: u64,
    pub record: Record,
}

/// Appends `id` and `record`, framed, to `out`.
pub fn append(out: &mut Vec<u8>, id: u64, record: &Record) {
    let frame_at = out.len();
    out.extend_from_slice(&[0u8; FRAME_LEN]);
    let body_at = out.len();
    out.extend_from_slice(&id.to_le_bytes());
    out.extend_from_slice(&record.read_ms.to_le_bytes());
    put(out, record.topic.as_bytes());
    match &record.key {
        Some(key) => {
            out.push(1);
            put(out, key.as_bytes());
        }
        None => out.push(0),
    }
    let headers = u32::try_from(record.headers.len()).unwrap_or(u32::MAX);
    out.extend_from_slice(&headers.to_le_bytes());
    for (name, value) in record.headers.iter().take(headers as usize) {
        put(out, name.as_bytes());
        put(out, value.as_bytes());
    }
    put(out, &record.payload);
    let body = &out[body_at..];
    let len = u32::try_from(body.len()).unwrap_or(u32::MAX);
    let crc = crc(body);
    out[frame_at..frame_at + 4].copy_from_slice(&len.to_le_bytes());
    out[frame_at + 4..body_at].copy_from_slice(&crc.to_le_bytes());
}

/// A length-prefixed field.
fn put(out: &mut Vec<u8>, bytes: &[u8]) {
    let len = u32::try_from(bytes.len()).unwrap_or(u32::MAX);
    out.extend_from_slice(&len.to_le_bytes());
    out.extend_from_slice(&bytes[..len as usize]);
}

/// What [`scan`] finds in a segment, in order: `T` is a whole record ([`Spooled`]) or only
/// what [`index`] reads of one ([`Meta`]).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Found<T = Spooled> {
    /// A good record, and the offset of its frame.
    Record(usize, T),
    /// Bytes from this offset up to the next good record (or the end) are damaged: a checksum
    /// that does not match, a length past any record, or a body that does not decode.
    Corrupt { offset: usize, len: usize },
    /// The last record, from this offset, is cut short: a write that never finished (or, in a
    /// piece of a segment, a record that goes on past the piece).
    Torn { offset: usize, len: usize },
}

/// What [`index`] reads of a record without decoding it all: enough to know a segment at start.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Meta {
    pub id: u64,
    pub read_ms: i64,
    /// The frame's length, its own bytes included.
    pub len: usize,
}

/// Reads every record of a segment's bytes after its header (see [`check_header`]).
pub fn scan(segment: &[u8]) -> Scan<'_, Spooled> {
    frames(segment, HEADER_LEN.min(segment.len()))
}

/// Every record of a segment's bytes from `at` (where a record starts), decoded.
pub fn frames(bytes: &[u8], at: usize) -> Scan<'_, Spooled> {
    Scan {
        bytes,
        at,
        decode: |body, _| decode(body),
    }
}

/// Like [`scan`], checking every record's checksum but reading only its [`Meta`]: what hotdog
/// needs of a spool at start, at a fraction of the cost of decoding it.
pub fn index(segment: &[u8]) -> Scan<'_, Meta> {
    Scan {
        bytes: segment,
        at: HEADER_LEN.min(segment.len()),
        decode: |body, len| {
            let id = u64::from_le_bytes(body.get(..8)?.try_into().ok()?);
            let read_ms = i64::from_le_bytes(body.get(8..16)?.try_into().ok()?);
            Some(Meta { id, read_ms, len })
        },
    }
}

/// The iterator [`scan`], [`frames`] and [`index`] return.
pub struct Scan<'a, T> {
    bytes: &'a [u8],
    at: usize,
    /// A checked body and its frame's length, read.
    decode: fn(&[u8], usize) -> Option<T>,
}

/// What one position of a segment holds.
enum At<T> {
    Good(T, usize),
    /// A frame that runs past the end of the bytes.
    Short,
    Bad,
}

impl<T> Scan<'_, T> {
    fn at(&self, offset: usize) -> At<T> {
        let rest = &self.bytes[offset..];
        if rest.len() < FRAME_LEN {
            return At::Short;
        }
        let len = u32::from_le_bytes([rest[0], rest[1], rest[2], rest[3]]) as usize;
        let crc = u32::from_le_bytes([rest[4], rest[5], rest[6], rest[7]]);
        if len > MAX_BODY {
            return At::Bad;
        }
        let Some(body) = rest.get(FRAME_LEN..FRAME_LEN + len) else {
            return At::Short;
        };
        if self::crc(body) != crc {
            return At::Bad;
        }
        match (self.decode)(body, FRAME_LEN + len) {
            Some(t) => At::Good(t, FRAME_LEN + len),
            None => At::Bad,
        }
    }

    /// Where the next record would start: past the last one read.
    pub fn offset(&self) -> usize {
        self.at
    }

    /// The first offset from `from` where a good record starts.
    fn resync(&self, from: usize) -> Option<usize> {
        (from..self.bytes.len().saturating_sub(FRAME_LEN - 1))
            .find(|&o| matches!(self.at(o), At::Good(..)))
    }
}

impl<T> Iterator for Scan<'_, T> {
    type Item = Found<T>;

    fn next(&mut self) -> Option<Found<T>> {
        let start = self.at;
        if start >= self.bytes.len() {
            return None;
        }
        match self.at(start) {
            At::Good(t, len) => {
                self.at += len;
                Some(Found::Record(start, t))
            }
            // A frame that runs past the end is a torn tail, unless a good record follows:
            // then its length was damaged.
            At::Short => {
                let next = self.resync(start + 1);
                self.at = next.unwrap_or(self.bytes.len());
                let len = self.at - start;
                Some(match next {
                    Some(_) => Found::Corrupt { offset: start, len },
                    None => Found::Torn { offset: start, len },
                })
            }
            At::Bad => {
                self.at = self.resync(start + 1).unwrap_or(self.bytes.len());
                Some(Found::Corrupt {
                    offset: start,
                    len: self.at - start,
                })
            }
        }
    }
}

/// One acknowledgement entry's length: the first id, how many ids follow it, a CRC32C.
pub const ACK_LEN: usize = 16;

/// The entry that says records `first..first + count` are done.
pub fn ack_entry(first: u64, count: u32) -> [u8; ACK_LEN] {
    let mut e = [0u8; ACK_LEN];
    e[..8].copy_from_slice(&first.to_le_bytes());
    e[8..12].copy_from_slice(&count.to_le_bytes());
    let c = crc(&e[..12]);
    e[12..].copy_from_slice(&c.to_le_bytes());
    e
}

/// The ranges an acknowledgement file holds, and how many of its entries were damaged (a
/// checksum that does not match, or a last entry cut short): those are skipped, so their
/// records are sent again rather than lost.
pub fn acks(bytes: &[u8]) -> (Vec<(u64, u32)>, usize) {
    let mut ranges = Vec::with_capacity(bytes.len() / ACK_LEN);
    let mut damaged = usize::from(bytes.len() % ACK_LEN != 0);
    for e in bytes.chunks_exact(ACK_LEN) {
        let c = u32::from_le_bytes([e[12], e[13], e[14], e[15]]);
        if crc(&e[..12]) != c {
            damaged += 1;
            continue;
        }
        let first = u64::from_le_bytes([e[0], e[1], e[2], e[3], e[4], e[5], e[6], e[7]]);
        ranges.push((first, u32::from_le_bytes([e[8], e[9], e[10], e[11]])));
    }
    (ranges, damaged)
}

/// A record's body, or `None` when it does not decode (its checksum matched: a bug, or damage
/// the checksum did not catch).
fn decode(body: &[u8]) -> Option<Spooled> {
    let mut r = Reader(body);
    let id = u64::from_le_bytes(r.take(8)?.try_into().ok()?);
    let read_ms = i64::from_le_bytes(r.take(8)?.try_into().ok()?);
    let topic = r.text()?;
    let key = match r.take(1)?[0] {
        0 => None,
        1 => Some(r.text()?),
        _ => return None,
    };
    let count = u32::from_le_bytes(r.take(4)?.try_into().ok()?) as usize;
    // Each header takes at least 8 bytes: a count past what is left is damage.
    if count > r.0.len() / 8 {
        return None;
    }
    let mut headers = Vec::with_capacity(count);
    for _ in 0..count {
        let name: Name = r.text()?.into();
        headers.push((name, r.text()?));
    }
    let payload = Bytes::copy_from_slice(r.field()?);
    if !r.0.is_empty() {
        return None;
    }
    Some(Spooled {
        id,
        record: Record {
            topic: topic.into(),
            key,
            payload,
            block: Default::default(),
            headers,
            read_ms,
            ack: Default::default(),
        },
    })
}

struct Reader<'a>(&'a [u8]);

impl<'a> Reader<'a> {
    fn take(&mut self, n: usize) -> Option<&'a [u8]> {
        if self.0.len() < n {
            return None;
        }
        let (head, rest) = self.0.split_at(n);
        self.0 = rest;
        Some(head)
    }

    fn field(&mut self) -> Option<&'a [u8]> {
        let len = u32::from_le_bytes(self.take(4)?.try_into().ok()?) as usize;
        self.take(len)
    }

    fn text(&mut self) -> Option<String> {
        String::from_utf8(self.field()?.to_vec()).ok()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn record(i: usize) -> Record {
        Record {
            topic: format!("topic-{i}").into(),
            key: (i % 2 == 0).then(|| format!("key {i}")),
            payload: Bytes::from(format!("<13>payload number {i} ").repeat(i % 5 + 1)),
            block: Default::default(),
            headers: (0..i % 3)
                .map(|h| (format!("h{h}").into(), format!("value {h}")))
                .collect(),
            read_ms: 1_700_000_000_000 + i as i64,
            ack: Default::default(),
        }
    }

    fn segment(n: usize) -> (Vec<u8>, Vec<usize>) {
        let mut out = header().to_vec();
        let mut starts = Vec::new();
        for i in 0..n {
            starts.push(out.len());
            append(&mut out, i as u64 * 7, &record(i));
        }
        (out, starts)
    }

    fn records(found: &[Found]) -> Vec<u64> {
        found
            .iter()
            .filter_map(|f| match f {
                Found::Record(_, s) => Some(s.id),
                _ => None,
            })
            .collect()
    }

    #[test]
    fn records_read_back_as_they_were_written() {
        let (seg, starts) = segment(20);
        assert_eq!(check_header(&seg), Ok(()));
        let found: Vec<Found> = scan(&seg).collect();
        assert_eq!(found.len(), 20);
        for (i, f) in found.iter().enumerate() {
            assert_eq!(
                *f,
                Found::Record(
                    starts[i],
                    Spooled {
                        id: i as u64 * 7,
                        record: record(i)
                    }
                )
            );
        }
    }

    #[test]
    fn a_segment_cut_anywhere_gives_every_whole_record_and_a_torn_tail() {
        let (seg, starts) = segment(6);
        for cut in HEADER_LEN..seg.len() {
            let found: Vec<Found> = scan(&seg[..cut]).collect();
            let whole = starts.iter().skip(1).filter(|&&s| s <= cut).count();
            let ids: Vec<u64> = (0..whole as u64).map(|i| i * 7).collect();
            assert_eq!(records(&found), ids, "cut at {cut}");
            let last = *starts.get(whole).unwrap_or(&seg.len());
            if cut > last {
                assert_eq!(
                    found.last(),
                    Some(&Found::Torn {
                        offset: last,
                        len: cut - last
                    }),
                    "cut at {cut}"
                );
            } else {
                assert_eq!(found.len(), whole, "cut at {cut}: {found:?}");
            }
        }
    }

    #[test]
    fn a_flipped_byte_loses_its_record_only_and_says_where() {
        let (seg, starts) = segment(5);
        // Every byte of the third record, flipped in turn.
        for at in starts[2]..starts[3] {
            let mut damaged = seg.clone();
            damaged[at] ^= 0x20;
            let found: Vec<Found> = scan(&damaged).collect();
            assert_eq!(records(&found), [0, 7, 21, 28], "byte {at} flipped");
            assert!(
                found.contains(&Found::Corrupt {
                    offset: starts[2],
                    len: starts[3] - starts[2]
                }),
                "byte {at} flipped: {found:?}"
            );
        }
    }

    #[test]
    fn a_segment_of_a_later_format_or_none_at_all_is_refused() {
        let mut h = header();
        h[8] = 2;
        assert_eq!(check_header(&h), Err(BadHeader::Newer(2)));
        assert_eq!(check_header(b"HDSPOOL"), Err(BadHeader::NotASegment));
        assert_eq!(
            check_header(b"not a spool segment"),
            Err(BadHeader::NotASegment)
        );
        assert_eq!(scan(&header()).count(), 0);
    }

    #[test]
    fn the_index_reads_what_the_scan_reads() {
        let (seg, starts) = segment(9);
        let index: Vec<Found<Meta>> = index(&seg).collect();
        let ids: Vec<(usize, u64, i64)> = index
            .iter()
            .filter_map(|f| match f {
                Found::Record(at, m) => Some((*at, m.id, m.read_ms)),
                _ => None,
            })
            .collect();
        let expected: Vec<(usize, u64, i64)> = (0..9)
            .map(|i| (starts[i], i as u64 * 7, record(i).read_ms))
            .collect();
        assert_eq!(ids, expected);
        // A piece that starts at a record and stops inside one: the records before, then torn.
        let piece = &seg[starts[3]..starts[6] + 5];
        let found: Vec<Found> = frames(piece, 0).collect();
        assert_eq!(records(&found), [21, 28, 35]);
        assert_eq!(
            found.last(),
            Some(&Found::Torn {
                offset: starts[6] - starts[3],
                len: 5
            })
        );
    }

    #[test]
    fn acknowledgements_read_back_and_a_damaged_entry_is_skipped() {
        let mut file = Vec::new();
        for (first, n) in [(5u64, 3u32), (100, 1), (7, 2)] {
            file.extend_from_slice(&ack_entry(first, n));
        }
        assert_eq!(acks(&file), (vec![(5, 3), (100, 1), (7, 2)], 0));
        let mut flipped = file.clone();
        flipped[ACK_LEN + 3] ^= 1;
        assert_eq!(acks(&flipped), (vec![(5, 3), (7, 2)], 1));
        file.truncate(file.len() - 4);
        assert_eq!(acks(&file), (vec![(5, 3), (100, 1)], 1));
    }
}
