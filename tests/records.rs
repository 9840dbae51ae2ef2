//! Structured records read back from Kafka and checked with the official tools: `format: json`
//! against the shipped JSON Schema (Python's `jsonschema`), `format: otlp_proto` decoded with the
//! OpenTelemetry protobuf definitions (`opentelemetry-proto`), and `raw` keeping bytes that are
//! not UTF-8.

use std::io::{Read, Write};
use std::net::TcpStream;
use std::process::Command;

use serde_json::{json, Value};

use crate::util::{consume_all, fresh_topic, Consumed, Hotdog};

/// The lines every format test sends: RFC 5424 with structured data and escapes, RFC 3164
/// without and with a year, a JSON body, a body that is not UTF-8, a line that is not syslog.
fn lines() -> Vec<Vec<u8>> {
    vec![
        br#"<165>1 2003-10-11T22:14:15.003Z web1 evntslog 42 ID47 [ex@32473 iut="3" q="say \"hi\" \\ \]"][origin ip="10.0.0.1" ip="10.0.0.2"] An application event"#.to_vec(),
        b"<34>Oct 11 22:14:15 mymachine su[123]: 'su root' failed".to_vec(),
        b"<187>Mar  1 01:02:03.456 2019 sw1 LINK: down".to_vec(),
        br#"<14>1 2024-05-01T12:00:00+02:00 api1 orders - - - {"id": 7, "ok": true}"#.to_vec(),
        b"<13>Oct 11 22:14:15 h app: caf\xe9".to_vec(),
        b"no priority at all".to_vec(),
    ]
}

/// hotdog with one listener in `Europe/Paris` and every line forwarded in `format`; the
/// records, in the order sent.
fn records_in(format: &str) -> Vec<Consumed> {
    let (b, topic) = fresh_topic(&format!("records-{}", format.replace('_', "-")));
    let yaml = format!(
        "global:\n  listen:\n    port: 0\n    timezone: Europe/Paris\n  kafka:\n    conf:\n      bootstrap.servers: '{b}'\n      linger.ms: '5'\n  status:\n    port: 0\nrules:\n  - regex: '.*'\n    actions:\n      - type: forward\n        topic: '{topic}'\n        format: {format}\n"
    );
    let hotdog = Hotdog::start_config(&yaml);
    let mut s = TcpStream::connect(hotdog.addr()).expect("connect");
    let lines = lines();
    for l in &lines {
        if l.starts_with(b"<") {
            // Octet-counted: any bytes can be in a frame.
            s.write_all(format!("{} ", l.len()).as_bytes())
                .expect("send");
            s.write_all(l).expect("send");
        } else {
            // A count is taken for one only before a syslog message (`<PRI>`): this one is a line.
            s.write_all(l).expect("send");
            s.write_all(b"\n").expect("send");
        }
    }
    s.shutdown(std::net::Shutdown::Write).expect("close");
    let _ = s.read_to_end(&mut Vec::new());
    let got = consume_all(b, &topic, lines.len());
    assert_eq!(got.len(), lines.len(), "records in Kafka");
    got
}

/// Runs tests/check_records.py with `args` and a file holding `lines`: its output.
fn check(args: &[&str], lines: &[String]) -> String {
    let dir = tempfile::tempdir().expect("temp dir");
    let file = dir.path().join("records");
    std::fs::write(&file, lines.join("\n") + "\n").expect("write records");
    let script = format!("{}/tests/check_records.py", env!("CARGO_MANIFEST_DIR"));
    let out = Command::new("python3")
        .arg(script)
        .args(args)
        .arg(&file)
        .output()
        .expect("python3 (dev/deps.sh installs jsonschema and opentelemetry-proto)");
    let stdout = String::from_utf8_lossy(&out.stdout).into_owned();
    assert!(
        out.status.success(),
        "check_records.py {args:?} failed:\n{stdout}{}",
        String::from_utf8_lossy(&out.stderr)
    );
    stdout
}

/// The year hotdog puts an RFC 3164 `Oct 11` in: the one nearest to now.
fn nearest_year_of_oct_11() -> i64 {
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .expect("clock")
        .as_secs() as i64;
    // Close enough for the year nearest: days since the epoch, in years of 365.2425 days.
    let year = 1970 + (now as f64 / (365.2425 * 86400.0)) as i64;
    let day_of_year = (now as f64 / 86400.0 - (year - 1970) as f64 * 365.2425) as i64;
    // Oct 11 is day 283 or so: more than half a year before or after it goes to the next or
    // last year.
    match day_of_year - 283 {
        d if d > 182 => year + 1,
        d if d < -182 => year - 1,
        _ => year,
    }
}

/// RFC 3164 lines across New Year, with hotdog's read clock moved by its test hook
/// (`HOTDOG_TEST_CLOCK`; Debian's `faketime` moves librdkafka's clock too, whose timed waits
/// then hang): a December 31 line read on January 1 belongs to the old year, a January 1 line
/// read on December 31 (a sender a little ahead) to the new one. The records validate against
/// the schema, and `received` shows the moved clock.
#[test]
fn rfc3164_years_across_new_year_are_the_ones_nearest_the_time_of_reading() {
    let schema = format!("{}/schema/record-v1.json", env!("CARGO_MANIFEST_DIR"));
    for (now, cases) in [
        (
            "2027-01-01 00:00:20",
            vec![
                (
                    "<13>Dec 31 23:59:50 h app: last of the old year",
                    "2026-12-31T23:59:50Z",
                ),
                (
                    "<13>Jan  1 00:00:05 h app: first of the new",
                    "2027-01-01T00:00:05Z",
                ),
            ],
        ),
        (
            "2026-12-31 23:59:50",
            vec![
                (
                    "<13>Jan  1 00:00:05 h app: a sender ahead",
                    "2027-01-01T00:00:05Z",
                ),
                ("<13>Dec 31 23:59:45 h app: on time", "2026-12-31T23:59:45Z"),
            ],
        ),
    ] {
        let (b, topic) = fresh_topic("new-year");
        let yaml = format!(
            "global:\n  listen:\n    port: 0\n  kafka:\n    conf:\n      bootstrap.servers: '{b}'\n      linger.ms: '5'\n  status:\n    port: 0\nrules:\n  - regex: '.*'\n    actions:\n      - type: forward\n        topic: '{topic}'\n        format: json\n"
        );
        let clock = format!("{}Z", now.replace(' ', "T"));
        let hotdog = Hotdog::start_config_env(&yaml, &[("HOTDOG_TEST_CLOCK", &clock)]);
        let lines: Vec<String> = cases.iter().map(|(l, _)| l.to_string()).collect();
        crate::util::send_lines(&hotdog.addr(), &lines);
        let got = consume_all(b, &topic, lines.len());
        assert_eq!(got.len(), lines.len(), "records in Kafka");
        let texts: Vec<String> = got.iter().map(|r| r.payload.clone()).collect();
        assert_eq!(
            check(&["json", &schema], &texts).trim(),
            format!("ok {}", lines.len())
        );
        for (text, (line, expected)) in texts.iter().zip(&cases) {
            let v: Value = serde_json::from_str(text).expect("JSON");
            let day = now.split(' ').next().unwrap_or_default();
            assert!(
                v["received"].as_str().is_some_and(|r| r.starts_with(day)),
                "hotdog's clock was not moved to {now}: {v}"
            );
            assert_eq!(v["timestamp"], *expected, "{line} read at {now}");
        }
    }
}

#[test]
fn json_records_validate_against_the_shipped_schema_and_carry_every_field() {
    let got = records_in("json");
    let texts: Vec<String> = got.iter().map(|r| r.payload.clone()).collect();
    let schema = format!("{}/schema/record-v1.json", env!("CARGO_MANIFEST_DIR"));
    assert_eq!(check(&["json", &schema], &texts).trim(), "ok 6");
    let v: Vec<Value> = texts
        .iter()
        .map(|t| serde_json::from_str(t).expect("JSON"))
        .collect();
    assert_eq!(v[0]["timestamp"], "2003-10-11T22:14:15.003Z");
    assert_eq!(
        v[0]["structured_data"],
        json!({"ex@32473": {"iut": "3", "q": "say \"hi\" \\ ]"}, "origin": {"ip": ["10.0.0.1", "10.0.0.2"]}})
    );
    assert_eq!(
        (&v[0]["severity"], &v[0]["facility_code"], &v[0]["procid"]),
        (&json!("notice"), &json!(20), &json!("42"))
    );
    assert_eq!(v[0]["message"], "An application event");
    // RFC 3164 without a year: Paris time (summer offset in October), the nearest year.
    assert_eq!(
        v[1]["timestamp"],
        format!("{}-10-11T22:14:15+02:00", nearest_year_of_oct_11())
    );
    assert_eq!(v[1]["timestamp_text"], "Oct 11 22:14:15");
    assert_eq!(
        (&v[1]["appname"], &v[1]["procid"]),
        (&json!("su"), &json!("123"))
    );
    // With a year, and winter time.
    assert_eq!(v[2]["timestamp"], "2019-03-01T01:02:03.456+01:00");
    // A JSON body is an object, not a string.
    assert_eq!(v[3]["message"], json!({"id": 7, "ok": true}));
    assert_eq!(v[3]["timestamp"], "2024-05-01T12:00:00+02:00");
    // Not UTF-8: said so, and the text has U+FFFD.
    assert_eq!(v[4]["message"], "caf\u{fffd}");
    assert_eq!(v[4]["message_invalid_utf8"], true);
    assert_eq!(v[0].get("message_invalid_utf8"), None);
    // Not syslog: the whole line, and nothing that is not there.
    assert_eq!(v[5]["syslog_format"], "unparsed");
    assert_eq!(v[5]["message"], "no priority at all");
    for absent in [
        "timestamp",
        "hostname",
        "severity",
        "priority",
        "structured_data",
    ] {
        assert_eq!(v[5].get(absent), None, "{absent}");
    }
    assert!(v[5]["peer_addr"]
        .as_str()
        .is_some_and(|p| p.starts_with("127.0.0.1:")));
}

#[test]
fn otlp_proto_records_decode_with_the_official_definitions() {
    let got = records_in("otlp_proto");
    let hex: Vec<String> = got
        .iter()
        .map(|r| r.bytes.iter().map(|b| format!("{b:02x}")).collect())
        .collect();
    let out = check(&["otlp"], &hex);
    let v: Vec<Value> = out
        .lines()
        .map(|l| serde_json::from_str(l).expect("summary"))
        .collect();
    assert_eq!(v.len(), 6);
    let first = &v[0];
    assert_eq!(first["resource"], json!({"host.name": "web1"}));
    assert_eq!(first["scope"][0], "hotdog");
    assert_eq!(first["time_unix_nano"], 1_065_910_455_003_000_000u64);
    assert_eq!(
        (&first["severity_number"], &first["severity_text"]),
        (&json!(10), &json!("notice"))
    );
    assert_eq!(first["body"], "An application event");
    assert_eq!(
        first["attributes"],
        json!({
            "hostname": "web1", "appname": "evntslog", "proc_id": "42", "msg_id": "ID47",
            "hotdog.peer_addr": first["attributes"]["hotdog.peer_addr"],
            "priority": 165, "facility": 20, "version": 1,
            "structured_data": {
                "ex@32473": {"iut": "3", "q": "say \"hi\" \\ ]"},
                "origin": {"ip": ["10.0.0.1", "10.0.0.2"]}
            }
        })
    );
    // When hotdog read it: now, give or take.
    let observed = first["observed_time_unix_nano"].as_u64().unwrap_or(0) / 1_000_000_000;
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .expect("clock")
        .as_secs();
    assert!(
        now.abs_diff(observed) < 600,
        "observed {observed}, now {now}"
    );
    // `<34>`: auth.crit → ERROR2; `<187>` local7.err → ERROR.
    assert_eq!(
        (&v[1]["severity_number"], &v[1]["severity_text"]),
        (&json!(18), &json!("crit"))
    );
    assert_eq!(v[2]["time_unix_nano"], 1_551_398_523_456_000_000u64);
    // A JSON body is a key-value list.
    assert_eq!(v[3]["body"], json!({"id": 7, "ok": true}));
    assert_eq!(v[4]["attributes"]["hotdog.invalid_utf8"], true);
    assert_eq!(v[5]["time_unix_nano"], 0);
}

#[test]
fn otlp_json_is_the_otlp_json_encoding() {
    let got = records_in("otlp_json");
    let v: Value = serde_json::from_str(&got[0].payload).expect("JSON");
    let record = &v["resourceLogs"][0]["scopeLogs"][0]["logRecords"][0];
    assert_eq!(record["timeUnixNano"], "1065910455003000000");
    assert_eq!(record["severityNumber"], 10);
    assert_eq!(
        record["body"],
        json!({"stringValue": "An application event"})
    );
    assert_eq!(
        v["resourceLogs"][0]["resource"]["attributes"][0],
        json!({"key": "host.name", "value": {"stringValue": "web1"}})
    );
}

#[test]
fn raw_records_keep_bytes_that_are_not_utf8() {
    let got = records_in("raw");
    assert_eq!(got[4].bytes, b"caf\xe9");
    assert_eq!(got[0].payload, "An application event");
    assert_eq!(got[5].payload, "no priority at all");
}
