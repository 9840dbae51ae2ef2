//! OTLP protobuf written straight from the borrowed message, with the JSON body read into it
//! as it is written.

use super::*;
use bytes::BufMut;
use std::borrow::Cow;

/// Protobuf written straight from the borrowed message: the same bytes prost would write
/// for [`request`] (a unit test decodes them with prost and compares), without building the
/// owned messages first or measuring nested messages more than once.
pub(crate) struct Pb<'b>(pub(crate) &'b mut Vec<u8>);
/// `v` as a protobuf varint, in the scratch buffer or in a payload's block.
pub(crate) fn push_varint(out: &mut impl BufMut, mut v: u64) {
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
    pub(crate) fn key(&mut self, tag: u8, wire: u8) {
        debug_assert!(tag < 16);
        self.0.push(tag << 3 | wire);
    }

    #[inline]
    pub(crate) fn text(&mut self, tag: u8, s: &str) {
        self.key(tag, 2);
        push_varint(self.0, s.len() as u64);
        self.0.extend_from_slice(s.as_bytes());
    }

    /// A `KeyValue`'s key: left out when it is empty, as prost leaves out every empty
    /// string that is not in a `oneof`.
    #[inline]
    pub(crate) fn name(&mut self, key: &str) {
        if !key.is_empty() {
            self.text(1, key);
        }
    }

    pub(crate) fn varint(&mut self, tag: u8, v: u64) {
        self.key(tag, 0);
        push_varint(self.0, v);
    }

    pub(crate) fn fixed64(&mut self, tag: u8, v: u64) {
        self.key(tag, 1);
        self.0.extend_from_slice(&v.to_le_bytes());
    }

    /// A nested message: its length is written before it once it is known (one byte is
    /// kept for it; a longer length moves the message up).
    #[inline]
    pub(crate) fn message(&mut self, tag: u8, body: impl FnOnce(&mut Pb)) {
        let at = self.begin(tag);
        body(self);
        self.end(at);
    }

    /// Starts a nested message; [`Pb::end`] with what this returns ends it.
    #[inline]
    pub(crate) fn begin(&mut self, tag: u8) -> usize {
        self.key(tag, 2);
        self.0.push(0);
        self.0.len() - 1
    }

    #[inline(always)]
    pub(crate) fn end(&mut self, at: usize) {
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
    pub(crate) fn end_long(&mut self, at: usize) {
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
    pub(crate) fn text_kv(&mut self, tag: u8, key: &str, value: &str) {
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
    pub(crate) fn varint_kv(&mut self, tag: u8, key: &str, field: u8, v: u64) {
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
    pub(crate) fn key_value(&mut self, tag: u8, key: &str, value: impl FnOnce(&mut Pb)) {
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
pub(crate) struct AnyJson<'p, 'b>(pub(crate) &'p mut Pb<'b>, pub(crate) &'p mut Vec<Member>);
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
pub(crate) struct Member {
    pub(crate) name: std::ops::Range<usize>,
    pub(crate) kv: std::ops::Range<usize>,
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
pub(crate) fn dedup_members(out: &mut Vec<u8>, first: usize, members: &mut [Member]) {
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
pub(crate) struct Name<'de>(Cow<'de, str>);
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
pub(crate) fn write_body(any: &mut Pb, body: &str) {
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
pub(crate) fn serde_body(
    any: &mut Pb,
    body: &str,
    members: &mut Vec<Member>,
) -> serde_json::Result<()> {
    let mut de = serde_json::Deserializer::from_str(body);
    serde::de::DeserializeSeed::deserialize(AnyJson(any, members), &mut de).and_then(|()| de.end())
}
/// [`request`] as protobuf.
pub fn encode(e: &Event<'_>) -> (Bytes, Block) {
    written_out(|scratch| encode_into(e, scratch))
}
/// The request is `resource_logs { resource {..} scope_logs { scope {..} log_records {..} } }`.
/// The resource, the scope and the log record are written one after the other in
/// `scratch`; the keys and lengths of the three messages around them, known then, go
/// between them as they are copied out, so nothing is moved to make room for a length.
pub(crate) fn encode_into(e: &Event<'_>, scratch: &mut Vec<u8>) -> (Bytes, Block) {
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
pub(crate) const SCOPE_NAME: &str = "hotdog";
pub(crate) const SCOPE_VERSION: &str = env!("CARGO_PKG_VERSION");
/// The `InstrumentationScope` message's length: both fields, with a one-byte key and length.
pub(crate) const SCOPE_LEN: usize = 2 + SCOPE_NAME.len() + 2 + SCOPE_VERSION.len();
/// `scope` (field 1 of `ScopeLogs`) as prost writes it, made once: it is the same in every
/// record.
pub(crate) const SCOPE: [u8; 2 + SCOPE_LEN] = {
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
pub(crate) fn varint_len(v: u64) -> usize {
    (64 - (v | 1).leading_zeros() as usize).div_ceil(7)
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
pub(crate) fn write_record(r: &mut Pb, e: &Event<'_>) {
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
pub(crate) fn write_sd(any: &mut Pb, sd: &str) {
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
