//! What a forwarded record's payload is (`forward`'s `format`): the action output as it is
//! (`raw`), or a structured event around it for consumers that should not parse syslog again:
//! hotdog's JSON envelope (`json`, described by `schema/record-v1.json`), or an OpenTelemetry
//! `ExportLogsServiceRequest` (`otlp_json`, `otlp_proto`) as the Collector's Kafka receiver reads
//! it, with the attributes named as its syslog receiver names them. Also the message's time,
//! normalised to RFC 3339. Pure: no I/O.

use std::time::{SystemTime, UNIX_EPOCH};

use bytes::Bytes;

use crate::record::{packed, packed_with, Block};
use crate::rules::Origin;
use crate::syslog::{self, Message};

/// `forward`'s `format`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum RecordFormat {
    /// The action output (or the message body) as bytes.
    #[default]
    Raw,
    Json,
    OtlpJson,
    OtlpProto,
}

impl RecordFormat {
    pub const NAMES: [&'static str; 4] = ["raw", "json", "otlp_json", "otlp_proto"];

    pub fn from_name(name: &str) -> Option<RecordFormat> {
        Some(match name {
            "raw" => RecordFormat::Raw,
            "json" => RecordFormat::Json,
            "otlp_json" => RecordFormat::OtlpJson,
            "otlp_proto" => RecordFormat::OtlpProto,
            _ => return None,
        })
    }
}

/// The version of the JSON envelope (`schema_version`); `schema/record-v1.json` describes it.
pub const SCHEMA_VERSION: u32 = 1;

/// What a structured record is made of.
pub struct Event<'a> {
    pub msg: &'a Message<'a>,
    pub origin: &'a Origin,
    /// The action output, or the message body when there was none.
    pub body: &'a str,
    /// True when the body is the message body as it came and that was not valid UTF-8 (`body`
    /// then has U+FFFD in place of what was not).
    pub invalid_utf8: bool,
}

/// When the line was read (the origin's clock), or now.
fn read_at(origin: &Origin) -> SystemTime {
    origin.clock.unwrap_or_else(crate::record::now)
}

/// The message's timestamp as an instant in its own offset: an RFC 5424 / RFC 3339 timestamp as
/// written; an RFC 3164 one (`Mmm dd hh:mm:ss`, perhaps `.fff` and a year) in the listener's
/// time zone (UTC by default), in the year written or else the year that puts it nearest to
/// when hotdog read the line (a December 31 line read on January 1 is from the old year).
pub fn message_time(msg: &Message<'_>, origin: &Origin) -> Option<jiff::Zoned> {
    with_message_time(msg, origin, jiff::Zoned::clone)
}

/// `f` given [`message_time`], which it borrows from this thread's cache of RFC 3164 times.
fn with_message_time<R>(
    msg: &Message<'_>,
    origin: &Origin,
    f: impl FnOnce(&jiff::Zoned) -> R,
) -> Option<R> {
    let text = msg.timestamp?;
    match written_time(text) {
        Some(written) => written.as_ref().map(f),
        None => bsd_cached(text, origin, |t| t.zoned().map(f))?,
    }
}

/// `Some` when `text` is an RFC 3339 timestamp: the instant in the offset the sender wrote.
fn written_time(text: &str) -> Option<Option<jiff::Zoned>> {
    // An RFC 3164 time starts with its month's name: not worth a failed parse.
    if !text.starts_with(|c: char| c.is_ascii_digit()) {
        return None;
    }
    let t = text.parse::<jiff::Timestamp>().ok()?;
    Some(offset_of(text).map(|offset| t.to_zoned(jiff::tz::TimeZone::fixed(offset))))
}

/// The instant of an RFC 5424 timestamp (its shape checked by the parser) in nanoseconds since
/// the epoch. Its whole seconds are jiff's reading of the text without the fraction, kept for
/// the next line on this thread with the same seconds and offset (the lines of a burst share
/// them); the fraction's digits are added to them.
fn rfc5424_nanos(text: &str) -> Option<i128> {
    // `YYYY-MM-DDThh:mm:ss` is 19 bytes, then perhaps `.` and 1 to 6 digits, then the offset.
    let whole = text.get(..19)?;
    let rest = &text[19..];
    let (fraction, offset) = match rest.strip_prefix('.') {
        Some(after) => after.split_at(after.bytes().take_while(u8::is_ascii_digit).count()),
        None => ("", rest),
    };
    if fraction.len() > 9 {
        return None;
    }
    let seconds = RFC5424_SECONDS.with(|cell| {
        let mut cache = cell.borrow_mut();
        let (key, seconds) = &mut *cache;
        if key.get(..19) != Some(whole) || key.get(19..) != Some(offset) {
            key.clear();
            key.push_str(whole);
            key.push_str(offset);
            *seconds = key.parse::<jiff::Timestamp>().ok().map(|t| t.as_second());
        }
        *seconds
    })?;
    let nanos = fraction
        .bytes()
        .chain(std::iter::repeat(b'0'))
        .take(9)
        .fold(0, |n, d| n * 10 + i128::from(d - b'0'));
    Some(i128::from(seconds) * 1_000_000_000 + nanos)
}

/// The RFC 3164 time last worked out on this thread. The lines of a burst mostly share their
/// timestamp text, their listener's zone and the second they were read in, so their time.
struct BsdTime {
    text: String,
    zone: jiff::tz::TimeZone,
    read: jiff::Timestamp,
    /// The read times it is for: the second `read` is in.
    second: std::ops::Range<SystemTime>,
    zoned: Option<Option<jiff::Zoned>>,
    rfc3339: Option<Option<String>>,
}

impl BsdTime {
    fn zoned(&mut self) -> Option<&jiff::Zoned> {
        let (text, zone, read) = (&self.text, &self.zone, self.read);
        self.zoned
            .get_or_insert_with(|| bsd_time(text, zone, read))
            .as_ref()
    }

    fn rfc3339(&mut self) -> Option<&str> {
        if self.rfc3339.is_none() {
            self.rfc3339 = Some(self.zoned().map(rfc3339));
        }
        self.rfc3339.as_ref().and_then(Option::as_deref)
    }

    /// The time of `text` in `zone` read at `read`, worked out when asked for.
    fn new(text: &str, zone: &jiff::tz::TimeZone, read: SystemTime) -> Option<BsdTime> {
        let at = jiff::Timestamp::try_from(read).ok()?;
        let start = SystemTime::from(jiff::Timestamp::from_second(at.as_second()).ok()?);
        Some(BsdTime {
            text: text.to_string(),
            zone: zone.clone(),
            read: at,
            second: start..start.checked_add(std::time::Duration::from_secs(1))?,
            zoned: None,
            rfc3339: None,
        })
    }

    /// True when it is the time of `text` in `zone` read at `read`: the same text, zone (by
    /// IANA name) and second.
    fn is_for(&self, text: &str, zone: &jiff::tz::TimeZone, read: SystemTime) -> bool {
        self.second.contains(&read)
            && self.text == text
            && self.zone.iana_name() == zone.iana_name()
    }
}

thread_local! {
    /// The text (without its fraction) and whole seconds of the last RFC 5424 timestamp read
    /// on this thread.
    static RFC5424_SECONDS: std::cell::RefCell<(String, Option<i64>)> =
        const { std::cell::RefCell::new((String::new(), None)) };
    static BSD_TIME: std::cell::RefCell<Option<BsdTime>> = const { std::cell::RefCell::new(None) };
}

/// Runs `f` on the time of the RFC 3164 `text` read by `origin` (in its listener's zone, UTC
/// by default), from this thread's cache when that is for the same text, zone and second. A
/// zone without an IANA name is never cached. `None` when the read time is out of range.
fn bsd_cached<T>(text: &str, origin: &Origin, f: impl FnOnce(&mut BsdTime) -> T) -> Option<T> {
    let utc = jiff::tz::TimeZone::UTC;
    let zone = origin.zone.as_ref().unwrap_or(&utc);
    let read = read_at(origin);
    if zone.iana_name().is_none() {
        return BsdTime::new(text, zone, read).as_mut().map(f);
    }
    BSD_TIME.with(|cell| {
        let mut cache = cell.borrow_mut();
        if !cache.as_ref().is_some_and(|c| c.is_for(text, zone, read)) {
            *cache = BsdTime::new(text, zone, read);
        }
        cache.as_mut().map(f)
    })
}

/// The offset at the end of an RFC 3339 timestamp (`Z`, `+02:00`).
fn offset_of(text: &str) -> Option<jiff::tz::Offset> {
    if text.ends_with(['Z', 'z']) {
        return Some(jiff::tz::Offset::UTC);
    }
    let sign_at = text.rfind(['+', '-'])?;
    let (sign, rest) = text[sign_at..].split_at(1);
    let (h, m) = rest.split_once(':')?;
    let seconds = h.parse::<i32>().ok()? * 3600 + m.parse::<i32>().ok()? * 60;
    jiff::tz::Offset::from_seconds(if sign == "-" { -seconds } else { seconds }).ok()
}

const MONTHS: [&str; 12] = [
    "Jan", "Feb", "Mar", "Apr", "May", "Jun", "Jul", "Aug", "Sep", "Oct", "Nov", "Dec",
];

/// `Mmm dd hh:mm:ss[.fff][ yyyy]` in `zone`, the year from the text or nearest to `read`.
fn bsd_time(text: &str, zone: &jiff::tz::TimeZone, read: jiff::Timestamp) -> Option<jiff::Zoned> {
    let mut words = text.split_whitespace();
    let name = words.next()?;
    let month = MONTHS.iter().position(|m| *m == name)? + 1;
    let day: i8 = words.next()?.parse().ok()?;
    let time = words.next()?;
    let year: Option<i16> = words.next().and_then(|y| y.parse().ok());
    let (hms, fraction) = time.split_once('.').unwrap_or((time, ""));
    let mut parts = hms.split(':').map(|p| p.parse::<i8>().ok());
    let (h, m, s) = (parts.next()??, parts.next()??, parts.next()??);
    let nanos: i32 = if fraction.is_empty() {
        0
    } else {
        let digits = &fraction[..fraction.len().min(9)];
        digits.parse::<i32>().ok()? * 10i32.pow(9 - digits.len() as u32)
    };
    let at = |year: i16| {
        jiff::civil::DateTime::new(year, month as i8, day, h, m, s, nanos)
            .ok()
            .and_then(|dt| dt.to_zoned(zone.clone()).ok())
    };
    if let Some(y) = year {
        return at(y);
    }
    let this = read.to_zoned(zone.clone()).year();
    [this - 1, this, this + 1]
        .into_iter()
        .filter_map(at)
        .min_by_key(|z| (z.timestamp().as_second() - read.as_second()).unsigned_abs())
}

/// The message's time in RFC 3339 with its offset, for templates and the JSON envelope: an
/// RFC 5424 timestamp is one already (the parser checked it) and is taken as written.
pub fn normalised_time<'m>(
    msg: &Message<'m>,
    origin: &Origin,
) -> Option<std::borrow::Cow<'m, str>> {
    if msg.format == syslog::Format::Rfc5424 {
        return msg.timestamp.map(std::borrow::Cow::Borrowed);
    }
    with_normalised_time(msg, origin, |t| std::borrow::Cow::Owned(t.to_string()))
}

/// `f` given [`normalised_time`], which it borrows from this thread's cache of RFC 3164 times.
fn with_normalised_time<R>(
    msg: &Message<'_>,
    origin: &Origin,
    f: impl FnOnce(&str) -> R,
) -> Option<R> {
    let text = msg.timestamp?;
    if msg.format == syslog::Format::Rfc5424 {
        return Some(f(text));
    }
    match written_time(text) {
        Some(written) => written.map(|z| f(&rfc3339(&z))),
        None => bsd_cached(text, origin, |t| t.rfc3339().map(f))?,
    }
}

/// The message's time in RFC 3339 with its offset (`2024-05-01T12:00:00.123+02:00`).
pub fn rfc3339(z: &jiff::Zoned) -> String {
    let offset = z.offset();
    let base = z.datetime().strftime("%Y-%m-%dT%H:%M:%S%.f").to_string();
    if offset == jiff::tz::Offset::UTC {
        format!("{base}Z")
    } else {
        let secs = offset.seconds();
        let sign = if secs < 0 { '-' } else { '+' };
        let secs = secs.unsigned_abs();
        format!("{base}{sign}{:02}:{:02}", secs / 3600, secs % 3600 / 60)
    }
}

/// `value` as JSON, in a buffer sized for the body and what goes around it (its own
/// allocation: in no block).
fn json_bytes<T: serde::Serialize>(value: &T, event: &Event<'_>) -> (Bytes, Block) {
    let mut out = Vec::with_capacity(event.body.len() + 512);
    let bytes = match serde_json::to_writer(&mut out, value) {
        Ok(()) => Bytes::from(out),
        Err(_) => Bytes::new(),
    };
    (bytes, Block::default())
}

/// The payload of a record in `format`, and the block it was packed in.
pub fn payload(format: RecordFormat, event: &Event<'_>) -> (Bytes, Block) {
    match format {
        RecordFormat::Raw => packed(event.body.as_bytes()),
        RecordFormat::Json => written(|out| envelope(event, out)),
        RecordFormat::OtlpJson => json_bytes(&otlp::request(event), event),
        RecordFormat::OtlpProto => otlp::encode(event),
    }
}

/// One SD-ELEMENT's params, each once with every value it was given.
type Params<'a> = Vec<(&'a str, Vec<std::borrow::Cow<'a, str>>)>;

/// Structured data grouped: every SD-ID once, its params once each with every value given.
fn grouped_sd(sd: &str) -> Vec<(&str, Params<'_>)> {
    let mut out: Vec<(&str, Params<'_>)> = Vec::new();
    for (id, params) in syslog::sd_elements(sd) {
        let at = match out.iter().position(|(i, _)| *i == id) {
            Some(at) => at,
            None => {
                out.push((id, Vec::new()));
                out.len() - 1
            }
        };
        let element = &mut out[at].1;
        for (name, value) in params {
            match element.iter_mut().find(|(n, _)| *n == name) {
                Some((_, values)) => values.push(value),
                None => element.push((name, vec![value])),
            }
        }
    }
    out
}

/// Structured data as serde writes it: the reference [`write_sd_json`] is tested against.
#[cfg(test)]
struct SdJson<'a>(&'a str);

#[cfg(test)]
impl serde::Serialize for SdJson<'_> {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        use serde::ser::SerializeMap;
        struct Params<'p, 'a>(&'p [(&'a str, Vec<std::borrow::Cow<'a, str>>)]);
        impl serde::Serialize for Params<'_, '_> {
            fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
                let mut map = s.serialize_map(Some(self.0.len()))?;
                for (name, values) in self.0 {
                    match &values[..] {
                        [one] => map.serialize_entry(name, one)?,
                        many => map.serialize_entry(name, many)?,
                    }
                }
                map.end()
            }
        }
        let grouped = grouped_sd(self.0);
        let mut map = s.serialize_map(Some(grouped.len()))?;
        for (id, params) in &grouped {
            map.serialize_entry(id, &Params(params))?;
        }
        map.end()
    }
}

/// A body that is a JSON object, as written (checked, not rebuilt), without the white space
/// around it. [`otlp::plain_json`] checks most bodies; serde_json the others.
fn json_object(body: &str) -> Option<&str> {
    if !body.trim_start().starts_with('{') {
        return None;
    }
    if otlp::plain_json(body) {
        return Some(body.trim_matches([' ', '\t', '\n', '\r']));
    }
    serde_json::from_str::<&serde_json::value::RawValue>(body)
        .ok()
        .map(serde_json::value::RawValue::get)
}

/// The message: a JSON object embedded as it is, or text.
#[cfg(test)]
#[derive(serde::Serialize)]
#[serde(untagged)]
enum Body<'a> {
    Object(&'a serde_json::value::RawValue),
    Text(&'a str),
}

/// When the line was read, RFC 3339 UTC with milliseconds.
#[cfg(test)]
struct Received(SystemTime);

#[cfg(test)]
impl serde::Serialize for Received {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.collect_str(&humantime::format_rfc3339_millis(self.0))
    }
}

/// TLS SANs, kept comma-separated by the listener, as a list.
#[cfg(test)]
struct Sans<'a>(&'a str);

#[cfg(test)]
impl serde::Serialize for Sans<'_> {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.collect_seq(self.0.split(','))
    }
}

thread_local! {
    /// The buffer this thread writes structured payloads in: a payload is then copied out at its
    /// size, [`packed`] with the payloads before it (it lives until its record's delivery
    /// report).
    static SCRATCH: std::cell::RefCell<Vec<u8>> = const { std::cell::RefCell::new(Vec::new()) };
    /// The last `received` written on this thread: the lines of a read share their time.
    static RECEIVED: std::cell::RefCell<(Option<SystemTime>, String)> =
        const { std::cell::RefCell::new((None, String::new())) };
}

/// What `write` writes, [`packed`].
fn written(write: impl FnOnce(&mut Vec<u8>)) -> (Bytes, Block) {
    written_out(|buf| {
        write(buf);
        packed(buf)
    })
}

/// What `write` makes of this thread's scratch buffer, which it is given empty.
fn written_out(write: impl FnOnce(&mut Vec<u8>) -> (Bytes, Block)) -> (Bytes, Block) {
    with_kept(&SCRATCH, 64 * 1024, write)
}

/// `f` given the `Vec` this thread keeps in `cell`, empty (a new one while that one is in use);
/// one that a large message grew past `keep` elements is not kept.
fn with_kept<T: 'static, R>(
    cell: &'static std::thread::LocalKey<std::cell::RefCell<Vec<T>>>,
    keep: usize,
    f: impl FnOnce(&mut Vec<T>) -> R,
) -> R {
    cell.with(|cell| match cell.try_borrow_mut() {
        Ok(mut kept) => {
            kept.clear();
            let out = f(&mut kept);
            if kept.capacity() > keep {
                *kept = Vec::new();
            }
            out
        }
        Err(_) => f(&mut Vec::new()),
    })
}

/// `t` as RFC 3339 UTC with milliseconds (`received`).
fn write_received(out: &mut Vec<u8>, t: SystemTime) {
    RECEIVED.with(|cell| {
        let mut last = cell.borrow_mut();
        if last.0 != Some(t) {
            last.1.clear();
            let _ = std::fmt::Write::write_fmt(
                &mut last.1,
                format_args!("{}", humantime::format_rfc3339_millis(t)),
            );
            last.0 = Some(t);
        }
        out.extend_from_slice(last.1.as_bytes());
    })
}

/// `,"name":`, the start of an envelope member that is not the first.
macro_rules! member {
    ($name:literal) => {
        concat!(",\"", $name, "\":")
    };
}

/// True when JSON escapes none of `bytes`: no `"`, `\\` or control character. Sixteen bytes at
/// a time (a loop the compiler turns into vector compares), then the last sixteen again; a
/// shorter string as one or two words of eight (see [`escapes`]).
fn plain(bytes: &[u8]) -> bool {
    let mut chunks = bytes.chunks_exact(16);
    if chunks.any(escapes16) {
        return false;
    }
    if chunks.remainder().is_empty() {
        return true;
    }
    let last = |n: usize| &bytes[bytes.len() - n..];
    match bytes.len() {
        16.. => !escapes16(last(16)),
        8.. => !escapes(word_of(&bytes[..8])) && !escapes(word_of(last(8))),
        // The bytes shifted into a word of letters: no call to copy a few bytes.
        _ => !escapes(
            bytes
                .iter()
                .fold(u64::from_le_bytes([b'a'; 8]), |w, &b| w << 8 | u64::from(b)),
        ),
    }
}

/// True when JSON escapes any of sixteen bytes.
#[inline(always)]
fn escapes16(chunk: &[u8]) -> bool {
    let Ok(chunk) = <&[u8; 16]>::try_from(chunk) else {
        return chunk.iter().any(|&c| c < 0x20 || c == b'"' || c == b'\\');
    };
    chunk.iter().fold(0u8, |e, &c| {
        e | u8::from(c < 0x20) | u8::from(c == b'"') | u8::from(c == b'\\')
    }) != 0
}

/// True when JSON escapes any of the eight bytes of `w`: a byte below 0x20 borrows in
/// `w - 0x20..`, and one equal to `"` or `\\` is zero after the XOR, which borrows in
/// `- 0x01..` (bytes of 0x80 and up never count, as `!w` clears their high bit).
#[inline(always)]
fn escapes(w: u64) -> bool {
    escaped_bits(w) != 0
}

/// What [`escapes`] looks at: the high bit of the first byte of `w` that JSON escapes is set,
/// none below it, and perhaps some above it (a borrow only runs up from a byte that counts),
/// so the lowest bit set says where that first byte is.
#[inline(always)]
fn escaped_bits(w: u64) -> u64 {
    const ONES: u64 = 0x0101_0101_0101_0101;
    const HIGH: u64 = 0x8080_8080_8080_8080;
    let control = w.wrapping_sub(ONES * 0x20) & !w;
    let quote = w ^ (ONES * u64::from(b'"'));
    let backslash = w ^ (ONES * u64::from(b'\\'));
    let zero = |v: u64| v.wrapping_sub(ONES) & !v;
    (control | zero(quote) | zero(backslash)) & HIGH
}

/// Eight bytes as a word, the first lowest.
#[inline(always)]
fn word_of(chunk: &[u8]) -> u64 {
    let mut word = [0u8; 8];
    word.copy_from_slice(chunk);
    u64::from_le_bytes(word)
}

/// `s`, which has nothing JSON escapes (an RFC 3339 time, a name hotdog chose), as a JSON
/// string.
#[inline]
fn write_plain(out: &mut Vec<u8>, s: &str) {
    debug_assert!(plain(s.as_bytes()), "{s:?}");
    out.reserve(s.len() + 2);
    out.push(b'"');
    out.extend_from_slice(s.as_bytes());
    out.push(b'"');
}

/// `s` as a JSON string, escaped as serde_json escapes it.
fn write_string(out: &mut Vec<u8>, s: &str) {
    if plain(s.as_bytes()) {
        out.reserve(s.len() + 2);
        out.push(b'"');
        out.extend_from_slice(s.as_bytes());
        out.push(b'"');
    } else {
        let _ = serde_json::to_writer(&mut *out, s);
    }
}

fn write_number(out: &mut Vec<u8>, n: u64) {
    out.extend_from_slice(itoa::Buffer::new().format(n).as_bytes());
}

/// Structured data as JSON: `{SD-ID: {param: value}}`; a param given more than once in an
/// element keeps every value, as a list.
fn write_sd_json(out: &mut Vec<u8>, sd: &str) {
    let at = out.len();
    out.push(b'{');
    let mut open = false;
    let mut first = true;
    let plain = syslog::sd_parts(sd, |part| match part {
        syslog::SdPart::Element(id) => {
            out.extend_from_slice(if open { b"}," } else { b"" });
            write_string(out, id);
            out.extend_from_slice(b":{");
            (open, first) = (true, true);
        }
        syslog::SdPart::Param(name, value) => {
            if !std::mem::replace(&mut first, false) {
                out.push(b',');
            }
            write_string(out, name);
            out.push(b':');
            write_string(out, &value);
        }
    });
    if plain {
        out.extend_from_slice(if open { b"}}" } else { b"}" });
        return;
    }
    // Something repeats: grouped first.
    out.truncate(at);
    out.push(b'{');
    for (i, (id, params)) in grouped_sd(sd).iter().enumerate() {
        if i > 0 {
            out.push(b',');
        }
        write_string(out, id);
        out.extend_from_slice(b":{");
        for (j, (name, values)) in params.iter().enumerate() {
            if j > 0 {
                out.push(b',');
            }
            write_string(out, name);
            out.push(b':');
            match &values[..] {
                [one] => write_string(out, one),
                many => {
                    out.push(b'[');
                    for (k, v) in many.iter().enumerate() {
                        if k > 0 {
                            out.push(b',');
                        }
                        write_string(out, v);
                    }
                    out.push(b']');
                }
            }
        }
        out.push(b'}');
    }
    out.push(b'}');
}

/// The members `severity` to `priority` of the envelope, written out once for every PRI
/// (`facility * 8 + severity`): a record copies its PRI's.
static PRIORITY_MEMBERS: std::sync::LazyLock<Vec<Vec<u8>>> = std::sync::LazyLock::new(|| {
    (0..24u8)
        .flat_map(|f| (0..8u8).map(move |s| (f, s)))
        .map(|(facility, severity)| {
            let mut out = Vec::new();
            let m = Message {
                facility: Some(facility),
                severity: Some(severity),
                ..Message::unparsed("")
            };
            write_priority(&mut out, &m);
            out
        })
        .collect()
});

/// The envelope's members `severity`, `severity_code`, `facility`, `facility_code` and
/// `priority`, each when the message has it.
fn write_priority(out: &mut Vec<u8>, m: &Message<'_>) {
    text_member(out, member!("severity"), m.severity_name());
    number_member(out, member!("severity_code"), m.severity.map(u64::from));
    text_member(out, member!("facility"), m.facility_name());
    number_member(out, member!("facility_code"), m.facility.map(u64::from));
    let priority = m.facility.zip(m.severity);
    number_member(
        out,
        member!("priority"),
        priority.map(|(f, s)| u64::from(f) * 8 + u64::from(s)),
    );
}

/// `member` (`,"name":`) and `value` as a JSON string, when there is a value.
fn text_member(out: &mut Vec<u8>, member: &str, value: Option<&str>) {
    if let Some(v) = value {
        out.extend_from_slice(member.as_bytes());
        write_string(out, v);
    }
}

/// `member` (`,"name":`) and `value` as a JSON number, when there is a value.
fn number_member(out: &mut Vec<u8>, member: &str, value: Option<u64>) {
    if let Some(n) = value {
        out.extend_from_slice(member.as_bytes());
        write_number(out, n);
    }
}

/// hotdog's JSON envelope, version 1 (`schema/record-v1.json`), written straight into the
/// payload: the names as they are (none needs escaping), values escaped only when they have
/// something to escape (what serde_json escapes: `"`, `\\` and control characters), and what is
/// absent left out. [`Envelope`], serialised by serde, is the reference it is tested against.
fn envelope(e: &Event<'_>, out: &mut Vec<u8>) {
    let m = e.msg;
    out.reserve(e.body.len() + 512);
    out.extend_from_slice(b"{\"schema_version\":");
    write_number(out, u64::from(SCHEMA_VERSION));
    out.extend_from_slice(member!("received").as_bytes());
    out.push(b'"');
    write_received(out, read_at(e.origin));
    out.push(b'"');
    with_normalised_time(m, e.origin, |time| {
        out.extend_from_slice(member!("timestamp").as_bytes());
        write_plain(out, time);
    });
    text_member(out, member!("timestamp_text"), m.timestamp);
    text_member(out, member!("hostname"), m.hostname);
    text_member(out, member!("appname"), m.appname);
    text_member(out, member!("procid"), m.procid);
    text_member(out, member!("msgid"), m.msgid);
    let pri = m.facility.zip(m.severity);
    match pri.and_then(|(f, s)| PRIORITY_MEMBERS.get(usize::from(f) * 8 + usize::from(s))) {
        Some(members) => out.extend_from_slice(members),
        None => write_priority(out, m),
    }
    number_member(out, member!("version"), m.version.map(u64::from));
    out.extend_from_slice(member!("syslog_format").as_bytes());
    write_plain(out, m.format.as_str());
    if let Some(sd) = m.structured_data {
        out.extend_from_slice(member!("structured_data").as_bytes());
        write_sd_json(out, sd);
    }
    out.extend_from_slice(member!("message").as_bytes());
    match json_object(e.body) {
        Some(object) => out.extend_from_slice(object.as_bytes()),
        None => write_string(out, e.body),
    }
    if e.invalid_utf8 {
        out.extend_from_slice(member!("message_invalid_utf8").as_bytes());
        out.extend_from_slice(b"true");
    }
    text_member(out, member!("peer_addr"), e.origin.peer_addr.as_deref());
    text_member(
        out,
        member!("tls_client_cn"),
        e.origin.tls_client_cn.as_deref(),
    );
    if let Some(sans) = e.origin.tls_client_san.as_deref() {
        out.extend_from_slice(member!("tls_client_san").as_bytes());
        out.push(b'[');
        for (i, san) in sans.split(',').enumerate() {
            if i > 0 {
                out.push(b',');
            }
            write_string(out, san);
        }
        out.push(b']');
    }
    out.push(b'}');
}

/// hotdog's JSON envelope, version 1, as serde writes it: the reference [`envelope`] is tested
/// against.
#[cfg(test)]
#[derive(serde::Serialize)]
struct Envelope<'a> {
    schema_version: u32,
    received: Received,
    #[serde(skip_serializing_if = "Option::is_none")]
    timestamp: Option<std::borrow::Cow<'a, str>>,
    #[serde(skip_serializing_if = "Option::is_none")]
    timestamp_text: Option<&'a str>,
    #[serde(skip_serializing_if = "Option::is_none")]
    hostname: Option<&'a str>,
    #[serde(skip_serializing_if = "Option::is_none")]
    appname: Option<&'a str>,
    #[serde(skip_serializing_if = "Option::is_none")]
    procid: Option<&'a str>,
    #[serde(skip_serializing_if = "Option::is_none")]
    msgid: Option<&'a str>,
    #[serde(skip_serializing_if = "Option::is_none")]
    severity: Option<&'static str>,
    #[serde(skip_serializing_if = "Option::is_none")]
    severity_code: Option<u8>,
    #[serde(skip_serializing_if = "Option::is_none")]
    facility: Option<&'static str>,
    #[serde(skip_serializing_if = "Option::is_none")]
    facility_code: Option<u8>,
    #[serde(skip_serializing_if = "Option::is_none")]
    priority: Option<u16>,
    #[serde(skip_serializing_if = "Option::is_none")]
    version: Option<u16>,
    syslog_format: &'static str,
    #[serde(skip_serializing_if = "Option::is_none")]
    structured_data: Option<SdJson<'a>>,
    message: Body<'a>,
    #[serde(skip_serializing_if = "std::ops::Not::not")]
    message_invalid_utf8: bool,
    #[serde(skip_serializing_if = "Option::is_none")]
    peer_addr: Option<&'a str>,
    #[serde(skip_serializing_if = "Option::is_none")]
    tls_client_cn: Option<&'a str>,
    #[serde(skip_serializing_if = "Option::is_none")]
    tls_client_san: Option<Sans<'a>>,
}

#[cfg(test)]
impl<'a> Envelope<'a> {
    fn of(e: &'a Event<'a>) -> Envelope<'a> {
        let m = e.msg;
        Envelope {
            schema_version: SCHEMA_VERSION,
            received: Received(read_at(e.origin)),
            timestamp: normalised_time(m, e.origin),
            timestamp_text: m.timestamp,
            hostname: m.hostname,
            appname: m.appname,
            procid: m.procid,
            msgid: m.msgid,
            severity: m.severity_name(),
            severity_code: m.severity,
            facility: m.facility_name(),
            facility_code: m.facility,
            priority: m
                .facility
                .zip(m.severity)
                .map(|(f, s)| u16::from(f) * 8 + u16::from(s)),
            version: m.version,
            syslog_format: m.format.as_str(),
            structured_data: m.structured_data.map(SdJson),
            // serde_json alone decides here: this is what the writer is tested against.
            message: match e.body.trim_start().starts_with('{') {
                true => serde_json::from_str(e.body).map_or(Body::Text(e.body), Body::Object),
                false => Body::Text(e.body),
            },
            message_invalid_utf8: e.invalid_utf8,
            peer_addr: e.origin.peer_addr.as_deref(),
            tls_client_cn: e.origin.tls_client_cn.as_deref(),
            tls_client_san: e.origin.tls_client_san.as_deref().map(Sans),
        }
    }
}

/// The OpenTelemetry logs data model: the protobuf messages of
/// `opentelemetry/proto/collector/logs/v1` (and what they use) that hotdog fills, with the
/// official field numbers, and their OTLP/JSON form.
pub mod otlp {
    use super::*;
    use bytes::BufMut;
    use std::borrow::Cow;

    /// OTLP/JSON writes 64-bit integers as strings.
    fn as_text<T: std::fmt::Display, S: serde::Serializer>(v: &T, s: S) -> Result<S::Ok, S::Error> {
        s.collect_str(v)
    }

    #[derive(Clone, PartialEq, prost::Message, serde::Serialize)]
    #[serde(rename_all = "camelCase")]
    pub struct ExportLogsServiceRequest {
        #[prost(message, repeated, tag = "1")]
        pub resource_logs: Vec<ResourceLogs>,
    }

    #[derive(Clone, PartialEq, prost::Message, serde::Serialize)]
    #[serde(rename_all = "camelCase")]
    pub struct ResourceLogs {
        #[prost(message, optional, tag = "1")]
        pub resource: Option<Resource>,
        #[prost(message, repeated, tag = "2")]
        pub scope_logs: Vec<ScopeLogs>,
    }

    #[derive(Clone, PartialEq, prost::Message, serde::Serialize)]
    #[serde(rename_all = "camelCase")]
    pub struct Resource {
        #[prost(message, repeated, tag = "1")]
        pub attributes: Vec<KeyValue>,
    }

    #[derive(Clone, PartialEq, prost::Message, serde::Serialize)]
    #[serde(rename_all = "camelCase")]
    pub struct ScopeLogs {
        #[prost(message, optional, tag = "1")]
        pub scope: Option<InstrumentationScope>,
        #[prost(message, repeated, tag = "2")]
        pub log_records: Vec<LogRecord>,
    }

    #[derive(Clone, PartialEq, prost::Message, serde::Serialize)]
    #[serde(rename_all = "camelCase")]
    pub struct InstrumentationScope {
        #[prost(string, tag = "1")]
        pub name: String,
        #[prost(string, tag = "2")]
        pub version: String,
    }

    #[derive(Clone, PartialEq, prost::Message, serde::Serialize)]
    #[serde(rename_all = "camelCase")]
    pub struct LogRecord {
        #[prost(fixed64, tag = "1")]
        #[serde(serialize_with = "as_text")]
        pub time_unix_nano: u64,
        #[prost(fixed64, tag = "11")]
        #[serde(serialize_with = "as_text")]
        pub observed_time_unix_nano: u64,
        #[prost(int32, tag = "2")]
        pub severity_number: i32,
        #[prost(string, tag = "3")]
        pub severity_text: String,
        #[prost(message, optional, tag = "5")]
        pub body: Option<AnyValue>,
        #[prost(message, repeated, tag = "6")]
        pub attributes: Vec<KeyValue>,
    }

    #[derive(Clone, PartialEq, prost::Message, serde::Serialize)]
    #[serde(rename_all = "camelCase")]
    pub struct KeyValue {
        #[prost(string, tag = "1")]
        pub key: String,
        #[prost(message, optional, tag = "2")]
        pub value: Option<AnyValue>,
    }

    #[derive(Clone, PartialEq, prost::Message, serde::Serialize)]
    #[serde(rename_all = "camelCase")]
    pub struct AnyValue {
        #[prost(oneof = "Value", tags = "1, 2, 3, 5, 6")]
        #[serde(flatten)]
        pub value: Option<Value>,
    }

    #[derive(Clone, PartialEq, prost::Oneof, serde::Serialize)]
    #[serde(rename_all = "camelCase")]
    pub enum Value {
        #[prost(string, tag = "1")]
        StringValue(String),
        #[prost(bool, tag = "2")]
        BoolValue(bool),
        #[prost(int64, tag = "3")]
        #[serde(serialize_with = "as_text")]
        IntValue(i64),
        #[prost(message, tag = "5")]
        ArrayValue(ArrayValue),
        #[prost(message, tag = "6")]
        KvlistValue(KeyValueList),
    }

    #[derive(Clone, PartialEq, prost::Message, serde::Serialize)]
    #[serde(rename_all = "camelCase")]
    pub struct ArrayValue {
        #[prost(message, repeated, tag = "1")]
        pub values: Vec<AnyValue>,
    }

    #[derive(Clone, PartialEq, prost::Message, serde::Serialize)]
    #[serde(rename_all = "camelCase")]
    pub struct KeyValueList {
        #[prost(message, repeated, tag = "1")]
        pub values: Vec<KeyValue>,
    }

    fn any(v: Value) -> Option<AnyValue> {
        Some(AnyValue { value: Some(v) })
    }

    fn kv(key: &str, v: Value) -> KeyValue {
        KeyValue {
            key: key.to_string(),
            value: any(v),
        }
    }

    /// Syslog severity 0..=7 as the Collector's syslog parser maps it onto
    /// `SeverityNumber` (FATAL, ERROR3, ERROR2, ERROR, WARN, INFO2, INFO, DEBUG).
    const SEVERITY_NUMBER: [i32; 8] = [21, 19, 18, 17, 13, 10, 9, 5];

    fn nanos(t: SystemTime) -> u64 {
        t.duration_since(UNIX_EPOCH)
            .map(|d| u64::try_from(d.as_nanos()).unwrap_or(u64::MAX))
            .unwrap_or(0)
    }

    /// A JSON value read as an `AnyValue`'s value: objects as key-value lists, their members
    /// in the order they came, a repeated name in its first place with its last value.
    struct FromJson(Value);

    impl<'de> serde::Deserialize<'de> for FromJson {
        fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
            d.deserialize_any(FromJsonVisitor)
        }
    }

    struct FromJsonVisitor;

    impl<'de> serde::de::Visitor<'de> for FromJsonVisitor {
        type Value = FromJson;
        fn expecting(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
            f.write_str("a JSON value")
        }
        fn visit_bool<E>(self, b: bool) -> Result<FromJson, E> {
            Ok(FromJson(Value::BoolValue(b)))
        }
        fn visit_i64<E>(self, i: i64) -> Result<FromJson, E> {
            Ok(FromJson(Value::IntValue(i)))
        }
        fn visit_u64<E>(self, u: u64) -> Result<FromJson, E> {
            Ok(FromJson(match i64::try_from(u) {
                Ok(i) => Value::IntValue(i),
                Err(_) => Value::StringValue(serde_json::Number::from(u).to_string()),
            }))
        }
        fn visit_f64<E>(self, f: f64) -> Result<FromJson, E> {
            let n = serde_json::Number::from_f64(f).map(|n| n.to_string());
            Ok(FromJson(Value::StringValue(n.unwrap_or_default())))
        }
        fn visit_str<E>(self, s: &str) -> Result<FromJson, E> {
            Ok(FromJson(Value::StringValue(s.to_string())))
        }
        fn visit_unit<E>(self) -> Result<FromJson, E> {
            Ok(FromJson(Value::StringValue(String::new())))
        }
        fn visit_seq<A: serde::de::SeqAccess<'de>>(self, mut seq: A) -> Result<FromJson, A::Error> {
            let mut values = Vec::new();
            while let Some(FromJson(v)) = seq.next_element()? {
                values.extend(any(v));
            }
            Ok(FromJson(Value::ArrayValue(ArrayValue { values })))
        }
        fn visit_map<A: serde::de::MapAccess<'de>>(self, mut map: A) -> Result<FromJson, A::Error> {
            let mut values: Vec<KeyValue> = Vec::new();
            let mut places = std::collections::HashMap::new();
            while let Some((key, FromJson(v))) = map.next_entry::<String, FromJson>()? {
                match places.get(&key) {
                    Some(&at) => values[at] = kv(&key, v),
                    None => {
                        places.insert(key.clone(), values.len());
                        values.push(kv(&key, v));
                    }
                }
            }
            Ok(FromJson(Value::KvlistValue(KeyValueList { values })))
        }
    }

    /// Protobuf written straight from the borrowed message: the same bytes prost would write
    /// for [`request`] (a unit test decodes them with prost and compares), without building the
    /// owned messages first or measuring nested messages more than once.
    struct Pb<'b>(&'b mut Vec<u8>);

    /// `v` as a protobuf varint, in the scratch buffer or in a payload's block.
    pub(super) fn push_varint(out: &mut impl BufMut, mut v: u64) {
        // Seven bits a byte, the lowest first; the high bit says that more follow.
        while v >= 0x80 {
            out.put_u8(v as u8 | 0x80);
            v >>= 7;
        }
        out.put_u8(v as u8);
    }

    impl Pb<'_> {
        /// A field's key: every field hotdog writes has a tag below 16, so it is one byte.
        #[inline]
        fn key(&mut self, tag: u8, wire: u8) {
            debug_assert!(tag < 16);
            self.0.push(tag << 3 | wire);
        }

        #[inline]
        fn text(&mut self, tag: u8, s: &str) {
            self.key(tag, 2);
            push_varint(self.0, s.len() as u64);
            self.0.extend_from_slice(s.as_bytes());
        }

        /// A `KeyValue`'s key: left out when it is empty, as prost leaves out every empty
        /// string that is not in a `oneof`.
        #[inline]
        fn name(&mut self, key: &str) {
            if !key.is_empty() {
                self.text(1, key);
            }
        }

        fn varint(&mut self, tag: u8, v: u64) {
            self.key(tag, 0);
            push_varint(self.0, v);
        }

        fn fixed64(&mut self, tag: u8, v: u64) {
            self.key(tag, 1);
            self.0.extend_from_slice(&v.to_le_bytes());
        }

        /// A nested message: its length is written before it once it is known (one byte is
        /// kept for it; a longer length moves the message up).
        #[inline]
        fn message(&mut self, tag: u8, body: impl FnOnce(&mut Pb)) {
            let at = self.begin(tag);
            body(self);
            self.end(at);
        }

        /// Starts a nested message; [`Pb::end`] with what this returns ends it.
        #[inline]
        fn begin(&mut self, tag: u8) -> usize {
            self.key(tag, 2);
            self.0.push(0);
            self.0.len() - 1
        }

        #[inline(always)]
        fn end(&mut self, at: usize) {
            let len = self.0.len() - at - 1;
            match self.0.get_mut(at) {
                Some(byte) if len < 0x80 => *byte = len as u8,
                _ => self.end_long(at),
            }
        }

        /// [`Pb::end`] for a message of 128 bytes or more: its length takes more than the
        /// byte kept for it.
        #[cold]
        #[inline(never)]
        fn end_long(&mut self, at: usize) {
            let end = self.0.len();
            let len = (end - at - 1) as u64;
            let n = varint_len(len);
            self.0.resize(end + n - 1, 0);
            self.0.copy_within(at + 1..end, at + n);
            push_varint(&mut &mut self.0[at..at + n], len);
        }

        /// Field `tag`: a `KeyValue` whose value is the `AnyValue` of a string. When the whole
        /// of it is shorter than 128 bytes, every length in it is one byte, known before it is
        /// written.
        #[inline(always)]
        fn text_kv(&mut self, tag: u8, key: &str, value: &str) {
            debug_assert!(tag < 16);
            let kv = 2 + key.len() + 4 + value.len();
            match u8::try_from(kv) {
                Ok(kv) if kv < 0x80 => {
                    let v = value.len() as u8;
                    let head = [tag << 3 | 2, kv, 1 << 3 | 2, key.len() as u8];
                    let out = &mut *self.0;
                    out.reserve(usize::from(kv) + 2);
                    out.extend_from_slice(&head);
                    out.extend_from_slice(key.as_bytes());
                    out.extend_from_slice(&[2 << 3 | 2, v + 2, 1 << 3 | 2, v]);
                    out.extend_from_slice(value.as_bytes());
                }
                _ => self.key_value(tag, key, |any| any.text(1, value)),
            }
        }

        /// Field `tag`: a `KeyValue` whose value is an `AnyValue` with the varint `v` in its
        /// field `field` (an integer or a boolean). For a short key every length in it is one
        /// byte, known before it is written.
        #[inline(always)]
        fn varint_kv(&mut self, tag: u8, key: &str, field: u8, v: u64) {
            debug_assert!(tag < 16 && field < 16);
            let any = 1 + varint_len(v);
            let kv = 2 + key.len() + 2 + any;
            match u8::try_from(kv) {
                Ok(kv) if kv < 0x80 => {
                    let out = &mut *self.0;
                    out.reserve(usize::from(kv) + 2);
                    out.extend_from_slice(&[tag << 3 | 2, kv, 1 << 3 | 2, key.len() as u8]);
                    out.extend_from_slice(key.as_bytes());
                    out.extend_from_slice(&[2 << 3 | 2, any as u8, field << 3]);
                    push_varint(out, v);
                }
                _ => self.key_value(tag, key, |a| a.varint(field, v)),
            }
        }

        /// Field `tag`: a `KeyValue` whose value is an `AnyValue` written by `value`.
        fn key_value(&mut self, tag: u8, key: &str, value: impl FnOnce(&mut Pb)) {
            self.message(tag, |kv| {
                kv.text(1, key);
                kv.message(2, value);
            });
        }
    }

    /// A JSON value written as the fields of the `AnyValue` it is in: objects as key-value
    /// lists with their members in the order they came (see [`dedup_members`]), arrays as
    /// array values. Nothing is
    /// built in between; the members of the objects open are noted on the `Vec`. [`from_json`]
    /// is the reference it is tested against.
    struct AnyJson<'p, 'b>(&'p mut Pb<'b>, &'p mut Vec<Member>);

    impl<'de> serde::de::DeserializeSeed<'de> for AnyJson<'_, '_> {
        type Value = ();
        fn deserialize<D: serde::Deserializer<'de>>(self, d: D) -> Result<(), D::Error> {
            d.deserialize_any(self)
        }
    }

    impl<'de> serde::de::Visitor<'de> for AnyJson<'_, '_> {
        type Value = ();
        fn expecting(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
            f.write_str("a JSON value")
        }
        fn visit_bool<E>(self, b: bool) -> Result<(), E> {
            self.0.varint(2, u64::from(b));
            Ok(())
        }
        fn visit_i64<E>(self, i: i64) -> Result<(), E> {
            self.0.varint(3, i as u64);
            Ok(())
        }
        fn visit_u64<E>(self, u: u64) -> Result<(), E> {
            // One past i64 is written as the text serde_json writes for it.
            match i64::try_from(u) {
                Ok(i) => self.0.varint(3, i as u64),
                Err(_) => self.0.text(1, &u.to_string()),
            }
            Ok(())
        }
        fn visit_f64<E>(self, f: f64) -> Result<(), E> {
            let n = serde_json::Number::from_f64(f);
            self.0
                .text(1, &n.map(|n| n.to_string()).unwrap_or_default());
            Ok(())
        }
        fn visit_str<E>(self, s: &str) -> Result<(), E> {
            self.0.text(1, s);
            Ok(())
        }
        fn visit_unit<E>(self) -> Result<(), E> {
            self.0.text(1, "");
            Ok(())
        }
        fn visit_seq<A: serde::de::SeqAccess<'de>>(self, mut seq: A) -> Result<(), A::Error> {
            let AnyJson(pb, members) = self;
            let list = pb.begin(5);
            loop {
                let item = pb.begin(1);
                if seq.next_element_seed(AnyJson(pb, members))?.is_none() {
                    pb.0.truncate(item - 1);
                    break;
                }
                pb.end(item);
            }
            pb.end(list);
            Ok(())
        }
        fn visit_map<A: serde::de::MapAccess<'de>>(self, mut map: A) -> Result<(), A::Error> {
            let AnyJson(pb, members) = self;
            pb.object(members, |pb, members| {
                while let Some(Name(name)) = map.next_key()? {
                    pb.member(members, &name, |pb, members| {
                        map.next_value_seed(AnyJson(pb, members))
                    })?;
                }
                Ok(())
            })
        }
    }

    /// Where an object member's name and its `KeyValue` are in the protobuf written.
    struct Member {
        name: std::ops::Range<usize>,
        kv: std::ops::Range<usize>,
    }

    thread_local! {
        /// The members of the objects open while a body is written, kept from line to line.
        static MEMBERS: std::cell::RefCell<Vec<Member>> =
            const { std::cell::RefCell::new(Vec::new()) };
    }

    /// Keeps an object's members (from `first` to the end of `out`) in the order they came, a
    /// name given more than once in the place it first had, with its last value (as
    /// JavaScript's and Python's JSON readers keep them). Nothing moves unless a name repeats;
    /// then the members are copied after themselves that way and moved down over where they
    /// were.
    fn dedup_members(out: &mut Vec<u8>, first: usize, members: &mut [Member]) {
        if members.len() < 2 {
            return;
        }
        let name = |m: &Member| out.get(m.name.clone()).unwrap_or_default();
        let by_name = |members: &mut [Member]| {
            members.sort_by(|a, b| name(a).cmp(name(b)).then(a.kv.start.cmp(&b.kv.start)));
        };
        // A few members are compared pairwise (most names differ in length); more are put in
        // name order to find a repeat.
        let few = members.len() <= 16;
        let repeats = if few {
            members.iter().enumerate().any(|(i, a)| {
                members[i + 1..]
                    .iter()
                    .any(|b| a.name.len() == b.name.len() && name(a) == name(b))
            })
        } else {
            by_name(members);
            members.windows(2).any(|w| name(&w[0]) == name(&w[1]))
        };
        if !repeats {
            return;
        }
        if few {
            by_name(members);
        }
        // Each name once: where it first came, and its last member.
        let mut kept: Vec<(usize, std::ops::Range<usize>)> = members
            .chunk_by(|a, b| name(a) == name(b))
            .filter_map(|same| Some((same.first()?.kv.start, same.last()?.kv.clone())))
            .collect();
        kept.sort_unstable_by_key(|(at, _)| *at);
        let end = out.len();
        for (_, kv) in kept {
            out.extend_from_within(kv);
        }
        out.drain(first..end);
    }

    /// An object member's name: borrowed from the body when it has no escapes.
    struct Name<'de>(Cow<'de, str>);

    impl<'de> serde::Deserialize<'de> for Name<'de> {
        fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
            struct V;
            impl<'de> serde::de::Visitor<'de> for V {
                type Value = Name<'de>;
                fn expecting(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
                    f.write_str("a name")
                }
                fn visit_borrowed_str<E>(self, s: &'de str) -> Result<Name<'de>, E> {
                    Ok(Name(Cow::Borrowed(s)))
                }
                fn visit_str<E>(self, s: &str) -> Result<Name<'de>, E> {
                    Ok(Name(Cow::Owned(s.to_string())))
                }
            }
            d.deserialize_str(V)
        }
    }

    /// The body as the fields of an `AnyValue`: a JSON object (what [`json_object`] accepts)
    /// as a key-value list, anything else as text. [`Plain`] reads the bodies most senders
    /// write; serde_json reads the others.
    fn write_body(any: &mut Pb, body: &str) {
        let at = any.0.len();
        if body.trim_start().starts_with('{') {
            let read = with_kept(&MEMBERS, 1024, |members| {
                if Plain::write(any, body, members).is_some() {
                    return Ok(());
                }
                any.0.truncate(at);
                members.clear();
                serde_body(any, body, members)
            });
            if read.is_ok() {
                return;
            }
            // Not JSON after all: what was written of it goes.
            any.0.truncate(at);
        }
        any.text(1, body);
    }

    /// `body` read by serde_json and written by [`AnyJson`].
    fn serde_body(any: &mut Pb, body: &str, members: &mut Vec<Member>) -> serde_json::Result<()> {
        let mut de = serde_json::Deserializer::from_str(body);
        serde::de::DeserializeSeed::deserialize(AnyJson(any, members), &mut de)
            .and_then(|()| de.end())
    }

    /// A reader of the JSON that most bodies are, faster than serde_json's visitor: objects,
    /// arrays, strings without escapes, integers of up to 18 digits, `true`, `false` and
    /// `null`, nested up to [`Plain::DEPTH`] deep. It writes what [`AnyJson`] writes for them
    /// and gives up (`None`) at anything else, which serde_json then reads: an escape, a
    /// fraction or an exponent, a longer integer or `-0` (serde_json's float), a deeper value,
    /// or what is not JSON at all. A differential test and the `syslog` fuzz target check
    /// that the two write the same whenever this one does not give up. Into [`Check`] it
    /// only reads: what the `json` format asks of a body before it embeds it.
    struct Plain<'a> {
        text: &'a str,
        at: usize,
    }

    impl<'a> Plain<'a> {
        const DEPTH: u8 = 32;

        /// `body` written into `pb`, or `None` (with some of it written) when it is not
        /// JSON this reads.
        fn write<S: Sink>(out: &mut S, body: &'a str, members: &mut Vec<Member>) -> Option<()> {
            let mut json = Plain { text: body, at: 0 };
            json.value(out, members, Self::DEPTH)?;
            json.skip_space();
            (json.at == body.len()).then_some(())
        }

        fn skip_space(&mut self) {
            let bytes = self.text.as_bytes();
            while let Some(b' ' | b'\t' | b'\n' | b'\r') = bytes.get(self.at) {
                self.at += 1;
            }
        }

        /// The next byte that is not JSON's white space, not taken.
        #[inline(always)]
        fn peek(&mut self) -> Option<u8> {
            match self.text.as_bytes().get(self.at) {
                Some(&b) if b > b' ' => Some(b),
                _ => {
                    self.skip_space();
                    self.text.as_bytes().get(self.at).copied()
                }
            }
        }

        /// Takes `byte` when it comes next.
        #[inline(always)]
        fn take(&mut self, byte: u8) -> Option<()> {
            (self.peek()? == byte).then(|| self.at += 1)
        }

        /// A string (its opening quote next) with nothing escaped in it.
        #[inline(always)]
        fn string(&mut self) -> Option<&'a str> {
            let bytes = self.text.as_bytes();
            let start = self.at + 1;
            let mut end = start;
            // Eight bytes at a time while none is a quote, a backslash or a control
            // character; then straight to the first that is, or one at a time at the end.
            while let Some(word) = bytes.get(end..end + 8) {
                let escaped = escaped_bits(word_of(word));
                if escaped != 0 {
                    end += escaped.trailing_zeros() as usize / 8;
                    break;
                }
                end += 8;
            }
            loop {
                match *bytes.get(end)? {
                    b'"' => break,
                    b'\\' | ..0x20 => return None,
                    _ => end += 1,
                }
            }
            self.at = end + 1;
            self.text.get(start..end)
        }

        /// An object member's name and the colon after it.
        #[inline(always)]
        fn name(&mut self) -> Option<&'a str> {
            if self.peek()? != b'"' {
                return None;
            }
            let name = self.string()?;
            self.take(b':')?;
            Some(name)
        }

        /// An integer as serde_json reads one into an `i64`.
        #[inline(always)]
        fn integer(&mut self) -> Option<i64> {
            let bytes = self.text.as_bytes();
            let negative = bytes.get(self.at) == Some(&b'-');
            let start = self.at + usize::from(negative);
            let n = bytes
                .get(start..)?
                .iter()
                .take_while(|b| b.is_ascii_digit())
                .count();
            self.at = start + n;
            let leading_zero = n > 1 && bytes[start] == b'0';
            let fraction = matches!(bytes.get(self.at), Some(b'.' | b'e' | b'E'));
            if n == 0 || n > 18 || leading_zero || fraction {
                return None;
            }
            // Eighteen digits are below 10^18: no overflow.
            let v = bytes[start..self.at]
                .iter()
                .fold(0i64, |v, &d| v * 10 + i64::from(d - b'0'));
            match (negative, v) {
                (true, 0) => None,
                (true, v) => Some(-v),
                (false, v) => Some(v),
            }
        }

        /// Takes `word` (`true`, `false`, `null`) when it comes next.
        fn word(&mut self, word: &str) -> Option<()> {
            let end = self.at + word.len();
            (self.text.get(self.at..end)? == word).then(|| self.at = end)
        }

        fn value<S: Sink>(
            &mut self,
            pb: &mut S,
            members: &mut Vec<Member>,
            depth: u8,
        ) -> Option<()> {
            match self.peek()? {
                b'"' => pb.text(1, self.string()?),
                b't' => {
                    self.word("true")?;
                    pb.varint(2, 1);
                }
                b'f' => {
                    self.word("false")?;
                    pb.varint(2, 0);
                }
                b'n' => {
                    self.word("null")?;
                    pb.text(1, "");
                }
                b'-' | b'0'..=b'9' => pb.varint(3, self.integer()? as u64),
                b'[' => {
                    let depth = depth.checked_sub(1)?;
                    self.at += 1;
                    let list = pb.begin(5);
                    if self.take(b']').is_none() {
                        loop {
                            let item = pb.begin(1);
                            self.value(pb, members, depth)?;
                            pb.end(item);
                            if self.take(b',').is_none() {
                                self.take(b']')?;
                                break;
                            }
                        }
                    }
                    pb.end(list);
                }
                b'{' => {
                    let depth = depth.checked_sub(1)?;
                    self.at += 1;
                    // `Sink::object` and `Sink::member` pass on an error; here `()`: gave up.
                    let written = pb.object(members, |pb, members| {
                        if self.take(b'}').is_some() {
                            return Ok(());
                        }
                        loop {
                            let name = self.name().ok_or(())?;
                            pb.member(members, name, |pb, members| {
                                self.value(pb, members, depth).ok_or(())
                            })?;
                            if self.take(b',').is_none() {
                                return self.take(b'}').ok_or(());
                            }
                        }
                    });
                    written.ok()?;
                }
                _ => return None,
            }
            Some(())
        }
    }

    /// What [`Plain`] reads a JSON value into: the fields of an `AnyValue` ([`Pb`]), or
    /// nothing ([`Check`]).
    trait Sink: Sized {
        fn text(&mut self, tag: u8, s: &str);
        fn varint(&mut self, tag: u8, v: u64);
        fn begin(&mut self, tag: u8) -> usize;
        fn end(&mut self, at: usize);
        fn object<E>(
            &mut self,
            members: &mut Vec<Member>,
            body: impl FnOnce(&mut Self, &mut Vec<Member>) -> Result<(), E>,
        ) -> Result<(), E>;
        fn member<E>(
            &mut self,
            members: &mut Vec<Member>,
            name: &str,
            value: impl FnOnce(&mut Self, &mut Vec<Member>) -> Result<(), E>,
        ) -> Result<(), E>;
    }

    impl Sink for Pb<'_> {
        #[inline(always)]
        fn text(&mut self, tag: u8, s: &str) {
            Pb::text(self, tag, s);
        }
        #[inline(always)]
        fn varint(&mut self, tag: u8, v: u64) {
            Pb::varint(self, tag, v);
        }
        #[inline(always)]
        fn begin(&mut self, tag: u8) -> usize {
            Pb::begin(self, tag)
        }
        #[inline(always)]
        fn end(&mut self, at: usize) {
            Pb::end(self, at);
        }
        /// A JSON object as the fields of an `AnyValue`: a key-value list, whose members `body`
        /// writes with [`Sink::member`]; then a name given more than once is kept once (see
        /// [`dedup_members`]).
        #[inline(always)]
        fn object<E>(
            &mut self,
            members: &mut Vec<Member>,
            body: impl FnOnce(&mut Self, &mut Vec<Member>) -> Result<(), E>,
        ) -> Result<(), E> {
            let list = self.begin(6);
            let first = self.0.len();
            let base = members.len();
            body(self, members)?;
            dedup_members(self.0, first, &mut members[base..]);
            members.truncate(base);
            self.end(list);
            Ok(())
        }

        /// An object's member: `name`, and the fields of the `AnyValue` that `value` writes;
        /// noted on `members`.
        #[inline(always)]
        fn member<E>(
            &mut self,
            members: &mut Vec<Member>,
            name: &str,
            value: impl FnOnce(&mut Self, &mut Vec<Member>) -> Result<(), E>,
        ) -> Result<(), E> {
            let start = self.0.len();
            let kv = self.begin(1);
            self.name(name);
            let name_end = self.0.len();
            let at = self.begin(2);
            value(self, members)?;
            self.end(at);
            let before = self.0.len();
            self.end(kv);
            // A long member moved up to make room for its length.
            let moved = self.0.len() - before;
            members.push(Member {
                name: name_end + moved - name.len()..name_end + moved,
                kv: start..self.0.len(),
            });
            Ok(())
        }
    }

    /// Reads without writing: to check that a body is JSON.
    struct Check;

    impl Sink for Check {
        fn text(&mut self, _: u8, _: &str) {}
        fn varint(&mut self, _: u8, _: u64) {}
        fn begin(&mut self, _: u8) -> usize {
            0
        }
        fn end(&mut self, _: usize) {}
        fn object<E>(
            &mut self,
            members: &mut Vec<Member>,
            body: impl FnOnce(&mut Self, &mut Vec<Member>) -> Result<(), E>,
        ) -> Result<(), E> {
            body(self, members)
        }
        fn member<E>(
            &mut self,
            members: &mut Vec<Member>,
            _: &str,
            value: impl FnOnce(&mut Self, &mut Vec<Member>) -> Result<(), E>,
        ) -> Result<(), E> {
            value(self, members)
        }
    }

    /// True when `body` is JSON that [`Plain`] reads (most bodies that are): false leaves the
    /// question to serde_json.
    pub(super) fn plain_json(body: &str) -> bool {
        Plain::write(&mut Check, body, &mut Vec::new()).is_some()
    }

    /// A body as [`Plain`] writes it (`None`: it gave up) and as serde_json does (`None`: not
    /// JSON), for the test that compares them.
    #[cfg(test)]
    pub(super) fn body_both_ways(body: &str) -> (Option<Vec<u8>>, Option<Vec<u8>>) {
        let mut plain = Vec::new();
        let read = Plain::write(&mut Pb(&mut plain), body, &mut Vec::new());
        let mut serde = Vec::new();
        let parsed = serde_body(&mut Pb(&mut serde), body, &mut Vec::new());
        (read.map(|()| plain), parsed.ok().map(|()| serde))
    }

    /// [`request`] as protobuf.
    pub fn encode(e: &Event<'_>) -> (Bytes, Block) {
        written_out(|scratch| encode_into(e, scratch))
    }

    /// The request is `resource_logs { resource {..} scope_logs { scope {..} log_records {..} } }`.
    /// The resource, the scope and the log record are written one after the other in
    /// `scratch`; the keys and lengths of the three messages around them, known then, go
    /// between them as they are copied out, so nothing is moved to make room for a length.
    fn encode_into(e: &Event<'_>, scratch: &mut Vec<u8>) -> (Bytes, Block) {
        let m = e.msg;
        scratch.reserve(e.body.len() + 512);
        let mut pb = Pb(scratch);
        pb.message(1, |resource| {
            if let Some(h) = m.hostname {
                resource.text_kv(1, "host.name", h);
            }
        });
        let resource_end = pb.0.len();
        pb.0.extend_from_slice(&SCOPE);
        let scope_end = pb.0.len();
        write_record(&mut pb, e);
        let (scratch, end) = (&pb.0[..], pb.0.len());
        let with_key = |len: usize| 1 + varint_len(len as u64) + len;
        let record = end - scope_end;
        let scope_logs = scope_end - resource_end + with_key(record);
        let resource_logs = resource_end + with_key(scope_logs);
        packed_with(with_key(resource_logs), |out| {
            for (tag, len, part) in [
                (1, resource_logs, &scratch[..resource_end]),
                (2, scope_logs, &scratch[resource_end..scope_end]),
                (2, record, &scratch[scope_end..]),
            ] {
                out.put_u8(tag << 3 | 2);
                push_varint(out, len as u64);
                out.extend_from_slice(part);
            }
        })
    }

    /// The scope's name and version.
    const SCOPE_NAME: &str = "hotdog";
    const SCOPE_VERSION: &str = env!("CARGO_PKG_VERSION");
    /// The `InstrumentationScope` message's length: both fields, with a one-byte key and length.
    const SCOPE_LEN: usize = 2 + SCOPE_NAME.len() + 2 + SCOPE_VERSION.len();

    /// `scope` (field 1 of `ScopeLogs`) as prost writes it, made once: it is the same in every
    /// record.
    const SCOPE: [u8; 2 + SCOPE_LEN] = {
        assert!(SCOPE_LEN < 0x80, "every length is one byte");
        let mut out = [0; 2 + SCOPE_LEN];
        (out[0], out[1]) = (1 << 3 | 2, SCOPE_LEN as u8);
        let mut at = 2;
        let mut field = 0;
        while field < 2 {
            let text = [SCOPE_NAME, SCOPE_VERSION][field].as_bytes();
            field += 1;
            (out[at], out[at + 1]) = ((field as u8) << 3 | 2, text.len() as u8);
            at += 2;
            let mut i = 0;
            while i < text.len() {
                out[at] = text[i];
                (at, i) = (at + 1, i + 1);
            }
        }
        out
    };

    /// How many bytes `v` takes as a varint.
    pub(super) fn varint_len(v: u64) -> usize {
        (64 - (v | 1).leading_zeros() as usize).div_ceil(7)
    }

    /// A log record's attribute value, borrowed from the message.
    enum Attr<'a> {
        Text(&'a str),
        Int(u64),
        True,
        /// Structured data (written as a key-value list of key-value lists).
        Sd(&'a str),
    }

    /// Where [`otlp_attributes`] puts each attribute.
    trait Attributes<'a> {
        fn attribute(&mut self, key: &'static str, value: Attr<'a>);
    }

    /// Written as protobuf: inlined where each attribute is given, so that its key and its
    /// kind are known there.
    impl<'a> Attributes<'a> for Pb<'_> {
        #[inline(always)]
        fn attribute(&mut self, key: &'static str, value: Attr<'a>) {
            match value {
                Attr::Text(t) => self.text_kv(6, key, t),
                Attr::Int(i) => self.varint_kv(6, key, 3, i),
                Attr::True => self.varint_kv(6, key, 2, 1),
                Attr::Sd(sd) => self.key_value(6, key, |any| write_sd(any, sd)),
            }
        }
    }

    /// As the messages of [`request`].
    impl<'a> Attributes<'a> for Vec<KeyValue> {
        fn attribute(&mut self, key: &'static str, value: Attr<'a>) {
            let value = match value {
                Attr::Text(t) => Value::StringValue(t.to_string()),
                Attr::Int(i) => Value::IntValue(i as i64),
                Attr::True => Value::BoolValue(true),
                Attr::Sd(sd) => sd_value(sd),
            };
            self.push(kv(key, value));
        }
    }

    /// A log record's attributes, in order: the names the Collector's syslog receiver gives
    /// them, then hotdog's own.
    #[inline(always)]
    fn otlp_attributes<'a>(e: &'a Event<'a>, out: &mut impl Attributes<'a>) {
        let m = e.msg;
        for (key, value) in [
            ("hostname", m.hostname),
            ("appname", m.appname),
            ("proc_id", m.procid),
            ("msg_id", m.msgid),
            ("hotdog.peer_addr", e.origin.peer_addr.as_deref()),
            ("hotdog.tls_client_cn", e.origin.tls_client_cn.as_deref()),
        ] {
            if let Some(v) = value {
                out.attribute(key, Attr::Text(v));
            }
        }
        if let Some((f, s)) = m.facility.zip(m.severity) {
            out.attribute("priority", Attr::Int(u64::from(f) * 8 + u64::from(s)));
            out.attribute("facility", Attr::Int(u64::from(f)));
        }
        if let Some(v) = m.version {
            out.attribute("version", Attr::Int(u64::from(v)));
        }
        if let Some(sd) = m.structured_data {
            out.attribute("structured_data", Attr::Sd(sd));
        }
        if e.invalid_utf8 {
            out.attribute("hotdog.invalid_utf8", Attr::True);
        }
    }

    /// The message's time in nanoseconds since the epoch; 0 when it has none.
    fn time_nanos(e: &Event<'_>) -> u64 {
        // An RFC 5424 time is RFC 3339 (the parser checked it): its instant needs no zone.
        match (e.msg.format, e.msg.timestamp) {
            (syslog::Format::Rfc5424, Some(text)) => rfc5424_nanos(text)
                .and_then(|n| u64::try_from(n).ok())
                .unwrap_or(0),
            _ => reference_time_nanos(e),
        }
    }

    /// [`time_nanos`] by way of [`message_time`], as the request that `otlp_json` writes and
    /// the protobuf is tested against has it.
    fn reference_time_nanos(e: &Event<'_>) -> u64 {
        with_message_time(e.msg, e.origin, |z| z.timestamp().as_nanosecond())
            .and_then(|n| u64::try_from(n).ok())
            .unwrap_or(0)
    }

    fn severity_number(m: &Message<'_>) -> i32 {
        m.severity.map_or(0, |s| SEVERITY_NUMBER[usize::from(s)])
    }

    fn write_record(r: &mut Pb, e: &Event<'_>) {
        let m = e.msg;
        // Fields in tag order, as prost writes them; zero values are left out.
        let time = time_nanos(e);
        if time != 0 {
            r.fixed64(1, time);
        }
        let severity = severity_number(m);
        if severity != 0 {
            r.varint(2, severity as u64);
        }
        if let Some(text) = m.severity_name() {
            r.text(3, text);
        }
        r.message(5, |any| write_body(any, e.body));
        // Field 6: the attributes.
        otlp_attributes(e, r);
        r.fixed64(11, nanos(read_at(e.origin)));
    }

    /// Structured data as an `AnyValue`: a key-value list of key-value lists; a param given
    /// more than once has the array of its values. Not inlined: the attributes around it are
    /// written inline, each with its key known.
    #[inline(never)]
    fn write_sd(any: &mut Pb, sd: &str) {
        let list = any.begin(6);
        // The open element: its KeyValue, AnyValue and KeyValueList.
        let mut open: Option<[usize; 3]> = None;
        let close = |any: &mut Pb, open: Option<[usize; 3]>| {
            if let Some([kv, value, list]) = open {
                any.end(list);
                any.end(value);
                any.end(kv);
            }
        };
        let plain = syslog::sd_parts(sd, |part| match part {
            syslog::SdPart::Element(id) => {
                close(any, open);
                let kv = any.begin(1);
                any.text(1, id);
                let value = any.begin(2);
                open = Some([kv, value, any.begin(6)]);
            }
            syslog::SdPart::Param(name, value) => any.text_kv(1, name, &value),
        });
        if plain {
            close(any, open);
            any.end(list);
            return;
        }
        // Something repeats: grouped first.
        any.0.truncate(list - 1);
        any.message(6, |elements| {
            for (id, params) in grouped_sd(sd) {
                elements.key_value(1, id, |any| {
                    any.message(6, |list| {
                        for (name, values) in &params {
                            list.key_value(1, name, |any| match &values[..] {
                                [one] => any.text(1, one),
                                many => any.message(5, |a| {
                                    for v in many {
                                        a.message(1, |any| any.text(1, v));
                                    }
                                }),
                            });
                        }
                    });
                });
            }
        });
    }

    /// Structured data as the `Value` [`write_sd`] writes.
    fn sd_value(sd: &str) -> Value {
        let elements = grouped_sd(sd)
            .into_iter()
            .map(|(id, params)| {
                let params = params
                    .into_iter()
                    .map(|(name, mut values)| {
                        let value = if values.len() == 1 {
                            Value::StringValue(values.remove(0).into_owned())
                        } else {
                            Value::ArrayValue(ArrayValue {
                                values: values
                                    .into_iter()
                                    .filter_map(|v| any(Value::StringValue(v.into_owned())))
                                    .collect(),
                            })
                        };
                        kv(name, value)
                    })
                    .collect();
                kv(id, Value::KvlistValue(KeyValueList { values: params }))
            })
            .collect();
        Value::KvlistValue(KeyValueList { values: elements })
    }

    /// One log record, in one scope (`hotdog`), in one resource (`host.name`: the hostname).
    pub fn request(e: &Event<'_>) -> ExportLogsServiceRequest {
        let m = e.msg;
        let mut attributes = Vec::new();
        otlp_attributes(e, &mut attributes);
        let object = json_object(e.body).and_then(|raw| serde_json::from_str(raw).ok());
        let body = match object {
            Some(FromJson(object)) => object,
            None => Value::StringValue(e.body.to_string()),
        };
        let record = LogRecord {
            time_unix_nano: reference_time_nanos(e),
            observed_time_unix_nano: nanos(read_at(e.origin)),
            severity_number: severity_number(m),
            severity_text: m.severity_name().unwrap_or_default().to_string(),
            body: any(body),
            attributes,
        };
        let resource = Resource {
            attributes: m
                .hostname
                .map(|h| vec![kv("host.name", Value::StringValue(h.to_string()))])
                .unwrap_or_default(),
        };
        ExportLogsServiceRequest {
            resource_logs: vec![ResourceLogs {
                resource: Some(resource),
                scope_logs: vec![ScopeLogs {
                    scope: Some(InstrumentationScope {
                        name: SCOPE_NAME.into(),
                        version: SCOPE_VERSION.into(),
                    }),
                    log_records: vec![record],
                }],
            }],
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::{json, Value};

    fn at(read: &str, zone: Option<&str>) -> Origin {
        Origin {
            clock: Some(SystemTime::from(read.parse::<jiff::Timestamp>().unwrap())),
            zone: zone.map(|z| jiff::tz::TimeZone::get(z).unwrap()),
            ..Origin::default()
        }
    }

    /// The event of `msg`'s own body, valid UTF-8, read by `origin`.
    fn event_of<'a>(msg: &'a Message<'a>, origin: &'a Origin) -> Event<'a> {
        Event {
            msg,
            origin,
            body: msg.msg,
            invalid_utf8: false,
        }
    }

    fn time_of(line: &str, origin: &Origin) -> Option<String> {
        message_time(&syslog::parse(line), origin).map(|z| rfc3339(&z))
    }

    #[test]
    fn a_cached_rfc3164_time_is_only_reused_for_the_same_text_zone_and_second() {
        let line = "<13>Dec 31 23:59:59 h a: x";
        let paris = at("2025-01-01T00:00:30Z", Some("Europe/Paris"));
        let utc = at("2025-01-01T00:00:30Z", None);
        let later = at("2025-09-01T00:00:30Z", None);
        for _ in 0..2 {
            assert_eq!(
                time_of(line, &paris).as_deref(),
                Some("2024-12-31T23:59:59+01:00")
            );
            assert_eq!(time_of(line, &utc).as_deref(), Some("2024-12-31T23:59:59Z"));
            // Eight months on, the nearest December 31 is the one to come.
            assert_eq!(
                time_of(line, &later).as_deref(),
                Some("2025-12-31T23:59:59Z")
            );
            assert_eq!(
                time_of("<13>Dec 31 23:59:58 h a: x", &utc).as_deref(),
                Some("2024-12-31T23:59:58Z")
            );
            // message_time (OTLP) and normalised_time share the cache.
            let msg = syslog::parse(line);
            assert_eq!(
                message_time(&msg, &paris).map(|z| rfc3339(&z)).as_deref(),
                Some("2024-12-31T23:59:59+01:00")
            );
        }
    }

    #[test]
    fn rfc3164_years_are_the_nearest_to_when_the_line_was_read() {
        let new_year = at("2025-01-01T00:00:30Z", None);
        assert_eq!(
            time_of("<13>Dec 31 23:59:59 h a: late", &new_year).as_deref(),
            Some("2024-12-31T23:59:59Z")
        );
        assert_eq!(
            time_of("<13>Jan  1 00:00:10 h a: on time", &new_year).as_deref(),
            Some("2025-01-01T00:00:10Z")
        );
        // A clock a little ahead of hotdog's, on New Year's Eve.
        let eve = at("2024-12-31T23:59:50Z", None);
        assert_eq!(
            time_of("<13>Jan  1 00:00:05 h a: early", &eve).as_deref(),
            Some("2025-01-01T00:00:05Z")
        );
        // A year written after the time wins; fractions are kept.
        assert_eq!(
            time_of("<13>Mar  1 01:02:03.456 2019 sw1 LINK: down", &new_year).as_deref(),
            Some("2019-03-01T01:02:03.456Z")
        );
        // February 29 only exists in a leap year: the nearest one that has it.
        let leap = at("2024-03-01T00:00:00Z", None);
        assert_eq!(
            time_of("<13>Feb 29 12:00:00 h a: x", &leap).as_deref(),
            Some("2024-02-29T12:00:00Z")
        );
    }

    #[test]
    fn rfc3164_times_are_read_in_the_listeners_zone() {
        let paris = at("2024-07-01T12:00:00Z", Some("Europe/Paris"));
        assert_eq!(
            time_of("<13>Jul  1 14:00:00 h a: summer", &paris).as_deref(),
            Some("2024-07-01T14:00:00+02:00")
        );
        let ny = at("2024-01-15T12:00:00Z", Some("America/New_York"));
        assert_eq!(
            time_of("<13>Jan 15 07:00:00 h a: winter", &ny).as_deref(),
            Some("2024-01-15T07:00:00-05:00")
        );
    }

    #[test]
    fn rfc5424_and_rfc3339_times_keep_their_offset() {
        let o = at("2024-07-01T12:00:00Z", Some("Europe/Paris"));
        assert_eq!(
            time_of("<13>1 2003-08-24T05:14:15.000003-07:00 h a - - -", &o).as_deref(),
            Some("2003-08-24T05:14:15.000003-07:00")
        );
        assert_eq!(
            time_of("<13>2024-05-01T12:00:00.123+02:00 web1 nginx: x", &o).as_deref(),
            Some("2024-05-01T12:00:00.123+02:00")
        );
        assert_eq!(time_of("<13>1 - h a - - -", &o), None);
    }

    #[test]
    fn the_lowest_escaped_bit_is_the_first_byte_json_escapes() {
        let escaped = |c: u8| c < 0x20 || c == b'"' || c == b'\\';
        // Each byte value at each place, before bytes that JSON escapes and bytes that it
        // does not (high ones among them), and after bytes that it does not.
        for at in 0..8 {
            for c in 0..=255u8 {
                for before in [b'a', 0xff, 0x80, 0x20] {
                    for after in [0x00, b'"', b'\\', 0x1f, 0xff, b'a', 0x21, 0x5d] {
                        let mut word = [after; 8];
                        word[..at].fill(before);
                        word[at] = c;
                        let first = word.iter().position(|&b| escaped(b));
                        let bits = escaped_bits(u64::from_le_bytes(word));
                        let found = (bits != 0).then(|| bits.trailing_zeros() as usize / 8);
                        assert_eq!(found, first, "{word:x?}");
                    }
                }
            }
        }
    }

    #[test]
    fn plain_finds_every_byte_json_escapes_wherever_it_is() {
        let naive = |b: &[u8]| b.iter().all(|&c| c >= 0x20 && c != b'"' && c != b'\\');
        for len in 0..40 {
            for at in 0..len {
                for c in 0..=255u8 {
                    let mut bytes = vec![b'x'; len];
                    bytes[at] = c;
                    assert_eq!(plain(&bytes), naive(&bytes), "{c:#x} at {at} of {len}");
                    bytes.iter_mut().skip(at + 1).for_each(|b| *b = 0xff - c);
                    assert_eq!(
                        plain(&bytes),
                        naive(&bytes),
                        "{c:#x} at {at} of {len}, then {:#x}",
                        0xff - c
                    );
                    // `write_string` writes what serde_json writes.
                    if let Ok(text) = std::str::from_utf8(&bytes[..=at]) {
                        let mut out = b"before".to_vec();
                        write_string(&mut out, text);
                        let serde = serde_json::to_string(text).unwrap();
                        assert_eq!(out, [&b"before"[..], serde.as_bytes()].concat());
                    }
                }
            }
        }
    }

    #[test]
    fn the_json_envelope_has_every_field_and_leaves_out_what_is_absent() {
        let line = r#"<165>1 2003-10-11T22:14:15.003Z web1 evntslog - ID47 [ex@32473 iut="3" a="1" a="2"][origin ip="10.0.0.1"] {"k": [1, 2]}"#;
        let msg = syslog::parse(line);
        let mut origin = at("2003-10-11T22:14:16Z", None);
        origin.peer_addr = Some("10.0.0.9:514".into());
        origin.tls_client_san = Some("a.example.com,b.example.com".into());
        let event = event_of(&msg, &origin);
        let v: Value = serde_json::from_slice(&payload(RecordFormat::Json, &event).0).unwrap();
        assert_eq!(
            v,
            json!({
                "schema_version": 1,
                "received": "2003-10-11T22:14:16.000Z",
                "timestamp": "2003-10-11T22:14:15.003Z",
                "timestamp_text": "2003-10-11T22:14:15.003Z",
                "hostname": "web1",
                "appname": "evntslog",
                "msgid": "ID47",
                "severity": "notice",
                "severity_code": 5,
                "facility": "local4",
                "facility_code": 20,
                "priority": 165,
                "version": 1,
                "syslog_format": "rfc5424",
                "structured_data": {
                    "ex@32473": {"iut": "3", "a": ["1", "2"]},
                    "origin": {"ip": "10.0.0.1"}
                },
                "message": {"k": [1, 2]},
                "peer_addr": "10.0.0.9:514",
                "tls_client_san": ["a.example.com", "b.example.com"]
            })
        );
    }

    #[test]
    fn received_is_the_time_each_line_was_read() {
        // The text is kept for the lines of a read: a line read at another time has its own.
        let msg = syslog::parse("<13>1 - h a - - - m");
        for (read, want) in [
            ("2003-10-11T22:14:16.250Z", "2003-10-11T22:14:16.250Z"),
            ("2003-10-11T22:14:16.250Z", "2003-10-11T22:14:16.250Z"),
            ("2003-10-11T22:14:16.251Z", "2003-10-11T22:14:16.251Z"),
            ("2024-05-01T00:00:00Z", "2024-05-01T00:00:00.000Z"),
        ] {
            let origin = at(read, None);
            let event = event_of(&msg, &origin);
            let v: Value = serde_json::from_slice(&payload(RecordFormat::Json, &event).0).unwrap();
            assert_eq!(v["received"], json!(want), "{read}");
        }
    }

    #[test]
    fn the_envelope_written_by_hand_is_what_serde_writes() {
        let lines: [&[u8]; 10] = [
            br#"<165>1 2003-10-11T22:14:15.003Z web1 evntslog 42 ID47 [ex@32473 iut="3" a="1" a="2"][origin ip="10.0.0.1"] An application event"#,
            // Structured data written as it comes (nothing repeats), with escapes; and an
            // SD-ID that comes twice (grouped).
            br#"<165>1 2003-10-11T22:14:15.003Z web1 evntslog 42 ID47 [ex@32473 iut="3" src="Appl\"i\\ca\]tion"][origin ip="10.0.0.1" software="x"][meta] event"#,
            br#"<165>1 2003-10-11T22:14:15.003Z web1 evntslog 42 ID47 [a x="1"][b y="2"][a z="3"] event"#,
            br#"<165>1 2003-10-11T22:14:15.003Z web1 evntslog 42 ID47 [a p1="1" p2="2" p3="3" p4="4" p5="5" p6="6" p7="7" p8="8" p9="9" p10="10" p11="11" p12="12" p13="13" p14="14" p15="15" p16="16" p17="17"] event"#,
            b"<34>Oct 11 22:14:15 mymachine su[123]: 'su root' \"failed\" \\ tab\there",
            br#"<14>1 2024-05-01T12:00:00+02:00 api1 orders - - - {"id": 7, "ok": true}"#,
            b"<13>Oct 11 22:14:15 h app: caf\xe9 \x01",
            b"no priority at all",
            b"<13>1 - - - - - -",
            "<13>Oct 11 22:14:15 h \u{e9}t\u{e9}: \u{1F600} \u{7f}".as_bytes(),
        ];
        // Every PRI, whose members are written out once (`PRIORITY_MEMBERS`).
        let every_pri: Vec<Vec<u8>> = (0..=191)
            .map(|pri| format!("<{pri}>1 - h a - - - m").into_bytes())
            .collect();
        for line in lines.into_iter().chain(every_pri.iter().map(Vec::as_slice)) {
            let lossy = String::from_utf8_lossy(line);
            let msg = syslog::parse(&lossy);
            let mut origin = at("2003-10-11T22:14:16.5Z", Some("Europe/Paris"));
            origin.peer_addr = Some("10.0.0.9:514".into());
            origin.tls_client_cn = Some("client \"one\"".into());
            origin.tls_client_san = Some("a.example.com,b.example.com".into());
            let event = Event {
                msg: &msg,
                origin: &origin,
                body: msg.msg,
                invalid_utf8: matches!(lossy, std::borrow::Cow::Owned(_)),
            };
            let by_hand = payload(RecordFormat::Json, &event).0;
            let (by_serde, _) = json_bytes(&Envelope::of(&event), &event);
            assert_eq!(
                String::from_utf8_lossy(&by_hand),
                String::from_utf8_lossy(&by_serde)
            );
        }
    }

    fn record_of(v: &Value) -> &Value {
        &v["resourceLogs"][0]["scopeLogs"][0]["logRecords"][0]
    }

    #[test]
    fn an_rfc5424_time_in_nanoseconds_is_what_jiff_reads() {
        // In an order that hits and misses the cache of whole seconds.
        let times = [
            "2003-10-11T22:14:15.003Z",
            "2003-10-11T22:14:15.000004Z",
            "2003-10-11T22:14:15Z",
            "2003-10-11T22:14:15.5+02:00",
            "2003-10-11T22:14:15.123456-07:30",
            "2003-10-11T22:14:16.1Z",
            "2016-12-31T23:59:60.25Z",
            "1969-12-31T23:59:59.5Z",
            "0000-01-01T00:00:00Z",
            "9999-12-31T23:59:59.999999-00:00",
            "2003-02-30T00:00:00Z",
            "2003-10-11T24:00:00Z",
            "2003-10-11T22:14:15.003+25:00",
        ];
        for text in times.iter().chain(&times) {
            let jiff = text
                .parse::<jiff::Timestamp>()
                .ok()
                .map(|t| t.as_nanosecond());
            assert_eq!(rfc5424_nanos(text), jiff, "{text}");
        }
    }

    #[test]
    fn a_varint_takes_the_bytes_it_is_counted_to() {
        for v in [
            0,
            1,
            127,
            128,
            16_383,
            16_384,
            (1 << 21) - 1,
            1 << 21,
            u64::MAX,
        ] {
            let mut out = Vec::new();
            otlp::push_varint(&mut out, v);
            assert_eq!(otlp::varint_len(v), out.len(), "{v}");
        }
    }

    #[test]
    fn otlp_protobuf_written_by_hand_is_what_prost_writes() {
        let lines: [&[u8]; 12] = [
            br#"<165>1 2003-10-11T22:14:15.003Z web1 evntslog 42 ID47 [ex@32473 iut="3" a="1" a="2"][origin ip="10.0.0.1"] An application event"#,
            // Structured data written as it comes (long enough for two-byte lengths), and
            // grouped (an SD-ID twice).
            br#"<165>1 2003-10-11T22:14:15.003Z web1 evntslog 42 ID47 [ex@32473 iut="3" src="Appl\"i\\ca\]tion"][origin ip="10.0.0.1" software="0123456789012345678901234567890123456789012345678901234567890123456789012345678901234567890123456789012345678901234567890123456789"][meta] event"#,
            br#"<165>1 2003-10-11T22:14:15.003Z web1 evntslog 42 ID47 [a x="1"][b y="2"][a z="3"] event"#,
            br#"<165>1 2003-10-11T22:14:15.003Z web1 evntslog 42 ID47 [meta] event"#,
            br#"<14>1 2024-05-01T12:00:00Z db1 api 77 - - {"seq":7,"meta":{"topic":"audit","n":[1,2.5,"x",null,true]},"ok":false}"#,
            // Repeated names (the last kept), names out of order, escapes, numbers past i64,
            // floats, deep and long values (lengths of more than one byte).
            br#"<14>1 2024-05-01T12:00:00Z db1 api 77 - - {"z":1,"a":"first","a":"last","m":{"y":[],"x":{}},"q\"\u00e9":"tab\tend","big":18446744073709551615,"neg":-9223372036854775808,"f":1e300,"g":-0.0,"h":1.0}"#,
            br#"<14>1 2024-05-01T12:00:00Z db1 api 77 - - { "long": "0123456789012345678901234567890123456789012345678901234567890123456789012345678901234567890123456789012345678901234567890123456789", "deep": [[[[{"k":[null]}]]]] }"#,
            // Names alike in their first eight bytes, one of them repeated after a long value.
            br#"<14>1 2024-05-01T12:00:00Z db1 api 77 - - {"longname_b":"0123456789012345678901234567890123456789012345678901234567890123456789012345678901234567890123456789012345678901234567890123456789","longname_a":1,"longname":2,"longname_b":3}"#,
            b"<14>1 2024-05-01T12:00:00Z db1 api 77 - - {\"broken\": ",
            b"<34>Oct 11 22:14:15 mymachine su[123]: failed",
            b"<13>Oct 11 22:14:15 h app: caf\xe9",
            b"not syslog at all",
        ];
        // Hostnames whose attribute is 127 bytes (the last whose lengths are all one byte),
        // 128 and longer.
        let long_hosts: Vec<Vec<u8>> = [113, 114, 200]
            .map(|n| format!("<14>1 2024-05-01T12:00:00Z {} api 77 - - m", "h".repeat(n)))
            .map(String::into_bytes)
            .to_vec();
        let lines = lines
            .into_iter()
            .chain(long_hosts.iter().map(Vec::as_slice));
        let mut origin = at("2024-05-01T12:00:01Z", Some("Europe/Paris"));
        origin.peer_addr = Some("10.0.0.9:514".into());
        origin.tls_client_cn = Some("tenant-a".into());
        for raw in lines {
            let text = String::from_utf8_lossy(raw);
            let msg = syslog::parse(&text);
            let event = Event {
                msg: &msg,
                origin: &origin,
                body: msg.msg,
                invalid_utf8: text.as_bytes() != raw,
            };
            let ours = payload(RecordFormat::OtlpProto, &event).0;
            let decoded: otlp::ExportLogsServiceRequest =
                prost::Message::decode(&ours[..]).unwrap();
            assert_eq!(decoded, otlp::request(&event), "{text}");
            assert_eq!(
                ours,
                prost::Message::encode_to_vec(&otlp::request(&event)),
                "{text}"
            );
        }
    }

    #[test]
    fn the_plain_json_reader_writes_what_serde_json_writes_or_leaves_the_body_to_it() {
        let nested = |depth: usize| {
            format!(
                "{{\"a\":{}1{}}}",
                "[".repeat(depth - 1),
                "]".repeat(depth - 1)
            )
        };
        let long = "x".repeat(200);
        let read = [
            r#"{"seq":7,"meta":{"topic":"audit"},"user":"u1","ok":true}"#.to_string(),
            "{}".into(),
            r#"{"a":[],"b":{}}"#.into(),
            r#"{"":1,"e":{"":null},"":"again"}"#.into(),
            r#"{"a":[1,-2,0,true,false,null,"x",{},[]]}"#.into(),
            " \t\n{ \"a\" : [ 1 , 2 ] , \"b\" :{ } , \"c\":\"\" }\r\n".into(),
            r#"{"max":999999999999999999,"min":-999999999999999999}"#.into(),
            r#"{"z":1,"a":"first","m":{"y":2,"x":3,"y":4},"a":"last"}"#.into(),
            "{\"café\":\"naïve ☃ \u{7f}\",\"k\":\"01234567\",\"l\":\"0123456789abcdef\"}".into(),
            format!(r#"{{"{long}":"{long}","n":[{{"{long}":1}}]}}"#),
            nested(32),
        ];
        let left = [
            r#"{"a":"x\"y"}"#.to_string(),
            r#"{"a\n":1}"#.into(),
            r#"{"a":"\u00e9"}"#.into(),
            r#"{"a":1.5}"#.into(),
            r#"{"a":1e3}"#.into(),
            r#"{"a":-0}"#.into(),
            r#"{"a":1234567890123456789}"#.into(),
            r#"{"a":-9223372036854775808}"#.into(),
            r#"{"a":18446744073709551616}"#.into(),
            r#"{"a":01}"#.into(),
            r#"{"a":-}"#.into(),
            nested(33),
            nested(128),
            r#"{"a":1,}"#.into(),
            r#"{"a":1} x"#.into(),
            r#"{"a":1}{}"#.into(),
            r#"{"a":"x"#.into(),
            "{\"a\":\"x\ty\"}".into(),
            r#"{"a":tru}"#.into(),
            r#"{"a":NaN}"#.into(),
            r#"{"a" 1}"#.into(),
            r#"{a:1}"#.into(),
            "{\"a\":1}\u{c}".into(),
            "\u{a0}{\"a\":1}".into(),
        ];
        for body in &read {
            let (plain, serde) = otlp::body_both_ways(body);
            assert!(plain.is_some(), "the plain reader gave up on {body}");
            assert_eq!(plain, serde, "{body}");
        }
        for body in &left {
            let (plain, _) = otlp::body_both_ways(body);
            assert_eq!(plain, None, "the plain reader read {body}");
        }
        // Through the whole record, every one of them is written as prost writes the reference.
        let origin = at("2024-05-01T12:00:01Z", None);
        for body in read.iter().chain(&left) {
            let line = format!("<14>1 2024-05-01T12:00:00Z db1 api 77 - - {body}");
            let msg = syslog::parse(&line);
            let event = event_of(&msg, &origin);
            let ours = payload(RecordFormat::OtlpProto, &event).0;
            let reference = prost::Message::encode_to_vec(&otlp::request(&event));
            assert_eq!(ours, reference, "{body}");
            // The `json` envelope embeds the same bodies (checked by the plain reader or by
            // serde_json) as the envelope serde_json writes, which asks serde_json alone.
            let by_hand = payload(RecordFormat::Json, &event).0;
            let (by_serde, _) = json_bytes(&Envelope::of(&event), &event);
            assert_eq!(by_hand, by_serde, "{body}");
        }
    }

    #[test]
    fn a_json_bodys_members_keep_their_order_and_a_repeated_name_its_first_place() {
        let int = |i: i64| json!({"intValue": i.to_string()});
        let text = |t: &str| json!({"stringValue": t});
        // A few members (compared pairwise), and many (put in name order to find a repeat).
        let many: String = (0..20)
            .rev()
            .map(|i| format!(r#""k{i:02}":{i},"#))
            .collect();
        let cases = [
            (
                r#"{"z":1,"a":"first","m":{"y":2,"x":3,"y":4},"a":"last"}"#.to_string(),
                vec![
                    ("z".to_string(), int(1)),
                    ("a".to_string(), text("last")),
                    (
                        "m".to_string(),
                        json!({"kvlistValue": {"values": [
                            {"key": "y", "value": int(4)},
                            {"key": "x", "value": int(3)},
                        ]}}),
                    ),
                ],
            ),
            (
                format!(r#"{{{many}"k07":"again","b":true}}"#),
                (0..20)
                    .rev()
                    .map(|i| {
                        let value = if i == 7 { text("again") } else { int(i) };
                        (format!("k{i:02}"), value)
                    })
                    .chain([("b".to_string(), json!({"boolValue": true}))])
                    .collect(),
            ),
        ];
        let origin = at("2024-05-01T12:00:01Z", None);
        for (body, members) in cases {
            let line = format!("<14>1 2024-05-01T12:00:00Z db1 api 77 - - {body}");
            let msg = syslog::parse(&line);
            let event = event_of(&msg, &origin);
            let want: Vec<Value> = members
                .iter()
                .map(|(key, value)| json!({"key": key, "value": value}))
                .collect();
            let decoded: otlp::ExportLogsServiceRequest =
                prost::Message::decode(&payload(RecordFormat::OtlpProto, &event).0[..]).unwrap();
            let proto = serde_json::to_value(&decoded).unwrap();
            let otlp_json: Value =
                serde_json::from_slice(&payload(RecordFormat::OtlpJson, &event).0).unwrap();
            for v in [proto, otlp_json] {
                assert_eq!(
                    record_of(&v)["body"]["kvlistValue"]["values"],
                    Value::Array(want.clone()),
                    "{body}"
                );
            }
        }
    }

    #[test]
    fn otlp_records_follow_the_collectors_syslog_mapping() {
        let msg = syslog::parse("<11>1 2024-05-01T12:00:00Z web1 app 42 - - failed");
        let origin = at("2024-05-01T12:00:01Z", None);
        let event = event_of(&msg, &origin);
        let bytes = payload(RecordFormat::OtlpProto, &event).0;
        let r: otlp::ExportLogsServiceRequest = prost::Message::decode(&bytes[..]).unwrap();
        let lr = &r.resource_logs[0].scope_logs[0].log_records[0];
        assert_eq!(lr.time_unix_nano, 1_714_564_800_000_000_000);
        assert_eq!(lr.observed_time_unix_nano, 1_714_564_801_000_000_000);
        assert_eq!((lr.severity_number, lr.severity_text.as_str()), (17, "err"));
        let v: Value = serde_json::from_slice(&payload(RecordFormat::OtlpJson, &event).0).unwrap();
        assert_eq!(record_of(&v)["observedTimeUnixNano"], "1714564801000000000");
        let record = &v["resourceLogs"][0]["scopeLogs"][0]["logRecords"][0];
        assert_eq!(record["timeUnixNano"], "1714564800000000000");
        assert_eq!(record["body"], json!({"stringValue": "failed"}));
        assert_eq!(
            v["resourceLogs"][0]["resource"]["attributes"][0],
            json!({"key": "host.name", "value": {"stringValue": "web1"}})
        );
        let keys: Vec<&str> = record["attributes"]
            .as_array()
            .unwrap()
            .iter()
            .map(|a| a["key"].as_str().unwrap())
            .collect();
        assert_eq!(
            keys,
            ["hostname", "appname", "proc_id", "priority", "facility", "version"]
        );
    }
}
