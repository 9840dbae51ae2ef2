//! Syslog parsing and what is made of a message: any line parses (RFC 5424, RFC 3164 or
//! unparsed) without panicking, every field it finds is a part of the line, the original bytes
//! of the body are a suffix of the input, structured data comes apart, and every record format
//! (JSON, OTLP) is made from it: JSON objects, and protobuf that is the reference's bytes.
#![no_main]

use hotdog_stages::core::RecordFormat;
use hotdog_stages::encode::{self as format, Event};
use hotdog_stages::core::Origin;
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let line = String::from_utf8_lossy(data);
    let msg = hotdog_stages::parse::syslog::parse_frame(data, &line);
    let _ = (msg.severity_name(), msg.facility_name());
    assert!(msg.msg.len() <= line.len());
    assert!(data.ends_with(msg.msg_bytes.unwrap_or(msg.msg.as_bytes())));
    if let Some(sd) = msg.structured_data {
        let _ = hotdog_stages::parse::syslog::sd_elements(sd);
    }
    let origin = Origin {
        zone: jiff::tz::TimeZone::get("Europe/Paris").ok(),
        // A fixed read time: what is made twice below must be made the same.
        clock: Some(std::time::UNIX_EPOCH + std::time::Duration::from_secs(1_700_000_000)),
        ..Origin::default()
    };
    let _ = hotdog_stages::parse::time::message_time(&msg, &origin);
    let event = Event {
        msg: &msg,
        origin: &origin,
        body: msg.msg,
        invalid_utf8: msg.msg_bytes.is_some(),
    };
    // The JSON formats are JSON objects (by the grammar: an embedded body may hold a number
    // past f64, as JSON allows); the protobuf written by hand is what prost reads back as the
    // reference request.
    for f in [RecordFormat::Json, RecordFormat::OtlpJson] {
        let (payload, _) = format::payload(f, &event);
        let raw: &serde_json::value::RawValue = serde_json::from_slice(&payload).expect("JSON");
        assert!(raw.get().starts_with('{'));
    }
    let (proto, _) = format::payload(RecordFormat::OtlpProto, &event);
    let decoded: format::otlp::ExportLogsServiceRequest =
        prost::Message::decode(&proto[..]).expect("protobuf");
    let reference = format::otlp::request(&event);
    assert!(decoded == reference);
    // Byte for byte: the body's JSON, read by hotdog's plain reader or by serde_json, is
    // written as prost writes the reference.
    assert!(proto[..] == prost::Message::encode_to_vec(&reference)[..]);
});
