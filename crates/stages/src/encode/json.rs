//! hotdog's JSON envelope (`format: json`, described by `schema/record-v1.json`), written by
//! hand a field at a time, with the scratch buffers every structured encoder writes in.

use super::*;

/// `value` as JSON, in a buffer sized for the body and what goes around it (its own
/// allocation: in no block).
pub(crate) fn json_bytes<T: serde::Serialize>(value: &T, event: &Event<'_>) -> (Bytes, Block) {
    let mut out = Vec::with_capacity(event.body.len() + 512);
    let bytes = match serde_json::to_writer(&mut out, value) {
        Ok(()) => Bytes::from(out),
        Err(_) => Bytes::new(),
    };
    (bytes, Block::default())
}

/// One SD-ELEMENT's params, each once with every value it was given.
pub(crate) type Params<'a> = Vec<(&'a str, Vec<std::borrow::Cow<'a, str>>)>;

/// Structured data grouped: every SD-ID once, its params once each with every value given.
pub(crate) fn grouped_sd(sd: &str) -> Vec<(&str, Params<'_>)> {
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
pub(crate) struct SdJson<'a>(&'a str);

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
pub(crate) fn json_object(body: &str) -> Option<&str> {
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
pub(crate) enum Body<'a> {
    Object(&'a serde_json::value::RawValue),
    Text(&'a str),
}

/// When the line was read, RFC 3339 UTC with milliseconds.
#[cfg(test)]
pub(crate) struct Received(SystemTime);

#[cfg(test)]
impl serde::Serialize for Received {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.collect_str(&humantime::format_rfc3339_millis(self.0))
    }
}

/// TLS SANs, kept comma-separated by the listener, as a list.
#[cfg(test)]
pub(crate) struct Sans<'a>(&'a str);

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
pub(crate) fn written(write: impl FnOnce(&mut Vec<u8>)) -> (Bytes, Block) {
    written_out(|buf| {
        write(buf);
        packed(buf)
    })
}

/// What `write` makes of this thread's scratch buffer, which it is given empty.
pub(crate) fn written_out(write: impl FnOnce(&mut Vec<u8>) -> (Bytes, Block)) -> (Bytes, Block) {
    with_kept(&SCRATCH, 64 * 1024, write)
}

/// `f` given the `Vec` this thread keeps in `cell`, empty (a new one while that one is in use);
/// one that a large message grew past `keep` elements is not kept.
pub(crate) fn with_kept<T: 'static, R>(
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
pub(crate) fn write_received(out: &mut Vec<u8>, t: SystemTime) {
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
pub(crate) fn plain(bytes: &[u8]) -> bool {
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
pub(crate) fn escapes16(chunk: &[u8]) -> bool {
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
pub(crate) fn escapes(w: u64) -> bool {
    escaped_bits(w) != 0
}

/// What [`escapes`] looks at: the high bit of the first byte of `w` that JSON escapes is set,
/// none below it, and perhaps some above it (a borrow only runs up from a byte that counts),
/// so the lowest bit set says where that first byte is.
#[inline(always)]
pub(crate) fn escaped_bits(w: u64) -> u64 {
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
pub(crate) fn word_of(chunk: &[u8]) -> u64 {
    let mut word = [0u8; 8];
    word.copy_from_slice(chunk);
    u64::from_le_bytes(word)
}

/// `s`, which has nothing JSON escapes (an RFC 3339 time, a name hotdog chose), as a JSON
/// string.
#[inline]
pub(crate) fn write_plain(out: &mut Vec<u8>, s: &str) {
    debug_assert!(plain(s.as_bytes()), "{s:?}");
    out.reserve(s.len() + 2);
    out.push(b'"');
    out.extend_from_slice(s.as_bytes());
    out.push(b'"');
}

/// `s` as a JSON string, escaped as serde_json escapes it.
pub(crate) fn write_string(out: &mut Vec<u8>, s: &str) {
    if plain(s.as_bytes()) {
        out.reserve(s.len() + 2);
        out.push(b'"');
        out.extend_from_slice(s.as_bytes());
        out.push(b'"');
    } else {
        let _ = serde_json::to_writer(&mut *out, s);
    }
}

pub(crate) fn write_number(out: &mut Vec<u8>, n: u64) {
    out.extend_from_slice(itoa::Buffer::new().format(n).as_bytes());
}

/// Structured data as JSON: `{SD-ID: {param: value}}`; a param given more than once in an
/// element keeps every value, as a list.
pub(crate) fn write_sd_json(out: &mut Vec<u8>, sd: &str) {
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
pub(crate) static PRIORITY_MEMBERS: std::sync::LazyLock<Vec<Vec<u8>>> =
    std::sync::LazyLock::new(|| {
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
pub(crate) fn write_priority(out: &mut Vec<u8>, m: &Message<'_>) {
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
pub(crate) fn text_member(out: &mut Vec<u8>, member: &str, value: Option<&str>) {
    if let Some(v) = value {
        out.extend_from_slice(member.as_bytes());
        write_string(out, v);
    }
}

/// `member` (`,"name":`) and `value` as a JSON number, when there is a value.
pub(crate) fn number_member(out: &mut Vec<u8>, member: &str, value: Option<u64>) {
    if let Some(n) = value {
        out.extend_from_slice(member.as_bytes());
        write_number(out, n);
    }
}

/// hotdog's JSON envelope, version 1 (`schema/record-v1.json`), written straight into the
/// payload: the names as they are (none needs escaping), values escaped only when they have
/// something to escape (what serde_json escapes: `"`, `\\` and control characters), and what is
/// absent left out. [`Envelope`], serialised by serde, is the reference it is tested against.
pub(crate) fn envelope(e: &Event<'_>, out: &mut Vec<u8>) {
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
pub(crate) struct Envelope<'a> {
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
    pub(crate) fn of(e: &'a Event<'a>) -> Envelope<'a> {
        let m = e.msg;
        Envelope {
            schema_version: SCHEMA_VERSION,
            received: Received(read_at(e.origin)),
            timestamp: crate::parse::time::normalised_time(m, e.origin),
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
