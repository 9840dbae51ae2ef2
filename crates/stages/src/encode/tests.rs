//! The encoders' tests: the JSON envelope and OTLP (JSON and protobuf) written by hand against
//! what serde and prost write, and the Collector's syslog mapping.

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
        let decoded: otlp::ExportLogsServiceRequest = prost::Message::decode(&ours[..]).unwrap();
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
