//! `hotdog -t LOGFILE`: every line of a file through the rules, without Kafka, printing what
//! matched and what would be sent.

use std::io::{BufRead, Write};

use serde_json::{json, Value};

use crate::record::Record;
use crate::rules::{Origin, Rules};
use crate::syslog::{self, Message};

/// Reads `input` line by line and writes a report of each to `out`: readable text, or with
/// `as_json` one JSON object per input line.
pub fn run(
    rules: &Rules,
    input: impl BufRead,
    mut out: impl Write,
    as_json: bool,
) -> std::io::Result<()> {
    let origin = Origin::default();
    for (i, line) in input.split(b'\n').enumerate() {
        let line = line?;
        let text = String::from_utf8_lossy(&line);
        let text = text.trim_end_matches(['\r', '\0']);
        let msg = syslog::parse(text);
        let mut records = Vec::new();
        let mut matched = Vec::new();
        let outcome = rules.apply(&msg, &origin, &mut records, Some(&mut matched));
        let number = i + 1;
        if as_json {
            let report = json!({
                "line": number,
                "input": text,
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
            writeln!(out, "{report}")?;
            continue;
        }
        writeln!(out, "line {number}: {text}")?;
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
                rec.payload
            )?;
            for (name, value) in &rec.headers {
                writeln!(out, "     header {name}: {value}")?;
            }
        }
        if !outcome.forwarded {
            writeln!(out, "  unrouted: no rule forwards this line")?;
        }
    }
    out.flush()
}

fn record_json(r: &Record) -> Value {
    let headers: serde_json::Map<String, Value> = r
        .headers
        .iter()
        .map(|(k, v)| (k.to_string(), Value::String(v.clone())))
        .collect();
    json!({ "topic": &*r.topic, "key": r.key, "payload": r.payload, "headers": headers })
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
