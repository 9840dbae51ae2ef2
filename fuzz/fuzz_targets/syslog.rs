//! Syslog parsing: any line parses (RFC 5424, RFC 3164 or unparsed) without panicking, and every
//! field it finds is a part of the line.
#![no_main]

use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let line = String::from_utf8_lossy(data);
    let msg = hotdog::syslog::parse(&line);
    let _ = (msg.severity_name(), msg.facility_name());
    assert!(msg.msg.len() <= line.len());
});
