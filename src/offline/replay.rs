//! `hotdog -t LOGFILE`: every frame of a file through the rules, without Kafka, printing what
//! matched and what would be sent. The file is cut into frames by the same framing code as a
//! connection of the first listener: its `framing`, `max_message_size` truncation, trimming.

use std::io::{Read, Write};

use serde_json::{json, Value};

use hotdog_stages::core::Origin;
use hotdog_stages::core::Record;
use hotdog_stages::encode;
use hotdog_stages::frame::lines::{Framer, Framing, Step};
use hotdog_stages::parse::syslog::{self, Message};
use hotdog_stages::route::Rules;

/// How input is read without a connection (`hotdog test`, `-t`): as by the configuration's
/// first listener.
pub struct Reading {
    /// Frames of at most this many bytes.
    pub max_message_size: usize,
    /// RFC 3164 timestamps in this zone (UTC when `None`).
    pub zone: Option<jiff::tz::TimeZone>,
    /// How the input is cut into frames.
    pub framing: Framing,
}

impl Reading {
    pub fn of(global: &hotdog_stages::config::Global) -> Reading {
        let first = global.listen.first();
        Reading {
            max_message_size: first.map_or(64 * 1024, |l| l.max_message_size),
            framing: first.map_or(Framing::Auto, |l| l.framing),
            zone: first
                .and_then(|l| l.timezone.as_ref())
                .map(|t| t.zone.clone()),
        }
    }
}

/// Reads `input` frame by frame (frames of at most `max` bytes) and writes a report of each to
/// `out`: readable text, or with `as_json` one JSON object per frame.
pub fn run(
    rules: &Rules,
    input: impl Read,
    reading: &Reading,
    mut out: impl Write,
    as_json: bool,
) -> std::io::Result<()> {
    let mut number = 0;
    each_frame(input, reading, |data, truncated| {
        number += 1;
        report(rules, data, truncated, number, &mut out, as_json)
    })?;
    out.flush()
}

/// Cuts `input` into frames as a connection of the first listener does (its `framing` and
/// `max_message_size`, trimming, the last frame without a terminator), and calls `f` with each
/// and whether it was truncated.
pub fn each_frame(
    mut input: impl Read,
    reading: &Reading,
    mut f: impl FnMut(&[u8], bool) -> std::io::Result<()>,
) -> std::io::Result<()> {
    let mut framer = Framer::with(reading.max_message_size, reading.framing);
    let mut buf: Vec<u8> = Vec::new();
    let mut start = 0;
    let mut chunk = vec![0u8; 64 * 1024];
    let mut eof = false;
    while !eof {
        let n = input.read(&mut chunk)?;
        eof = n == 0;
        buf.drain(..start);
        start = 0;
        buf.extend_from_slice(&chunk[..n]);
        loop {
            match framer.next_frame(&buf[start..]) {
                Step::Frame {
                    data,
                    truncated,
                    consumed,
                } => {
                    f(data, truncated)?;
                    start += consumed;
                }
                Step::Skip { consumed } => start += consumed,
                Step::NeedMore => break,
            }
        }
    }
    if let Some(last) = framer.finish(&buf[start..]) {
        f(last, false)?;
    }
    Ok(())
}

/// The report of one frame.
fn report(
    rules: &Rules,
    line: &[u8],
    truncated: bool,
    number: usize,
    out: &mut impl Write,
    as_json: bool,
) -> std::io::Result<()> {
    let origin = Origin::default();
    let text = String::from_utf8_lossy(line);
    let msg = syslog::parse_frame(line, &text);
    let mut matched = Vec::new();
    let (routed, outcome) = rules.apply(&msg, &origin, Some(&mut matched));
    let records: Vec<_> = routed
        .map(|r| encode::record(r, &msg, &origin, Default::default()))
        .into_iter()
        .collect();
    if as_json {
        let report = json!({
            "line": number,
            "input": text,
            "truncated": truncated,
            "syslog": message_json(&msg),
            "matched": matched.iter().map(|&r| json!({
                "rule": r,
                "origin": rules.rules()[r].origin,
            })).collect::<Vec<_>>(),
            "records": records.iter().map(record_json).collect::<Vec<_>>(),
            "unrouted": !outcome.forwarded,
            "errors": {
                "merge_of_invalid_json": outcome.merge_errors,
                "topic_parse_failed": outcome.invalid_topics,
                "template_render": outcome.render_errors,
            },
        });
        return writeln!(out, "{report}");
    }
    writeln!(out, "line {number}: {text}")?;
    if truncated {
        writeln!(out, "  truncated to max_message_size")?;
    }
    writeln!(out, "  parsed as {}", msg.format.as_str())?;
    for &r in &matched {
        writeln!(out, "  matched rule {r} ({})", rules.rules()[r].origin)?;
    }
    for rec in &records {
        writeln!(
            out,
            "  -> topic {} key {} payload {}",
            rec.topic,
            rec.key.as_deref().unwrap_or("(none)"),
            rec.payload_text()
        )?;
        for (name, value) in &rec.headers {
            writeln!(out, "     header {name}: {value}")?;
        }
    }
    if !outcome.forwarded {
        writeln!(out, "  unrouted: no rule forwards this line")?;
    }
    Ok(())
}

fn record_json(r: &Record) -> Value {
    let headers: serde_json::Map<String, Value> = r
        .headers
        .iter()
        .map(|(k, v)| (k.to_string(), Value::String(v.clone())))
        .collect();
    json!({ "topic": &*r.topic, "key": r.key, "payload": r.payload_text(), "headers": headers })
}

fn message_json(m: &Message<'_>) -> Value {
    json!({
        "format": m.format.as_str(),
        "facility": m.facility_name(),
        "severity": m.severity_name(),
        "timestamp": m.timestamp,
        "hostname": m.hostname,
        "appname": m.appname,
        "procid": m.procid,
        "msgid": m.msgid,
        "structured_data": m.structured_data,
        "msg": m.msg,
    })
}
