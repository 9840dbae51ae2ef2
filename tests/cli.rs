//! The command line without Kafka: --check, -t, -V, and what a bad config does.

use crate::util::run_hotdog;

/// `hotdog --check` on a file holding `text`: (exit code, stdout + stderr, the file's path).
fn check(text: &str) -> (i32, String, String) {
    let dir = tempfile::tempdir().expect("temp dir");
    let path = dir.path().join("hotdog.yml");
    std::fs::write(&path, text).expect("write config");
    let path = path.to_string_lossy().into_owned();
    let (code, out, err) = run_hotdog(&["--check", "-c", &path]);
    assert!(!err.contains("panicked"), "{err}");
    (code, format!("{out}{err}"), path)
}

#[test]
fn example_config_is_valid() {
    let (code, out, err) = run_hotdog(&["--check", "-c", "hotdog.yml"]);
    assert_eq!(code, 0, "{out}{err}");
    assert!(out.contains("configuration is valid (4 rules)"), "{out}");
}

/// The configuration the Debian package installs as /etc/hotdog/hotdog.yml.
#[test]
fn packaged_config_is_valid() {
    // Its dead-letter directory, /var/lib/hotdog, is the package's: here a temporary one
    // stands in (--check refuses a directory that does not exist; the package test checks the
    // file as installed).
    let text = std::fs::read_to_string("packaging/hotdog.yml").expect("packaged config");
    let dir = tempfile::tempdir().expect("temp dir");
    let moved = text.replace("/var/lib/hotdog/", &format!("{}/", dir.path().display()));
    assert_ne!(
        moved, text,
        "the packaged config has no /var/lib/hotdog/ path any more"
    );
    let path = dir.path().join("hotdog.yml");
    std::fs::write(&path, moved).expect("write config");
    let (code, out, err) = run_hotdog(&["--check", "-c", &path.display().to_string()]);
    assert_eq!(code, 0, "{out}{err}");
    assert!(out.contains("configuration is valid (1 rules)"), "{out}");
    // Where that directory does not exist, --check says so.
    let (code, _, err) = run_hotdog(&["--check", "-c", "packaging/hotdog.yml"]);
    if !std::path::Path::new("/var/lib/hotdog").is_dir() {
        assert_eq!(code, 2, "{err}");
        assert!(err.contains("not in a directory that exists"), "{err}");
    }
}

#[test]
fn hotdog_0_5_config_loads_unchanged_and_routes_the_same() {
    let (code, out, err) = run_hotdog(&["--check", "-c", "tests/configs/hotdog-0.5.yml"]);
    assert_eq!(code, 0, "{out}{err}");
    let dir = tempfile::tempdir().expect("temp dir");
    let log = dir.path().join("in.log");
    std::fs::write(
        &log,
        "<13>Oct 11 22:14:15 web1 app: hello world\n\
         {\"meta\":{\"topic\":\"foo\"}}\n\
         <13>Oct 11 22:14:15 web1 app: other\n",
    )
    .expect("write log");
    let log = log.to_string_lossy().into_owned();
    let (code, out, err) =
        run_hotdog(&["-c", "tests/configs/hotdog-0.5.yml", "-t", &log, "--json"]);
    assert_eq!(code, 0, "{err}");
    let lines: Vec<serde_json::Value> = out
        .lines()
        .map(|l| serde_json::from_str(l).expect("one JSON object per line"))
        .collect();
    assert_eq!(lines.len(), 3);
    let rec = &lines[0]["records"][0];
    assert_eq!(rec["topic"], "test");
    assert_eq!(
        rec["payload"],
        "This is the total message: hello world\n\nAnd the name is: world\n"
    );
    assert_eq!(lines[0]["syslog"]["hostname"], "web1");
    let rec = &lines[1]["records"][0];
    assert_eq!(rec["topic"], "foo");
    let merged: serde_json::Value =
        serde_json::from_str(rec["payload"].as_str().expect("payload")).expect("merged JSON");
    assert_eq!(
        merged["meta"]["hotdog"]["version"],
        env!("CARGO_PKG_VERSION")
    );
    assert_eq!(lines[1]["syslog"]["format"], "unparsed");
    assert_eq!(lines[2]["records"][0]["topic"], "logs-unknown");
}

#[test]
fn broken_config_exits_2_and_names_every_line() {
    for args in [
        &["--check", "-c", "tests/configs/broken.yml"][..],
        &["-c", "tests/configs/broken.yml"][..],
    ] {
        let (code, out, err) = run_hotdog(args);
        assert_eq!(code, 2, "{out}{err}");
        assert!(
            err.contains("tests/configs/broken.yml:7:5: unknown key `topik` in `global.kafka`; did you mean `topic`?"),
            "{err}"
        );
        assert!(
            err.contains("tests/configs/broken.yml:9:12: invalid regex"),
            "{err}"
        );
        assert!(!err.contains("panicked"), "{err}");
    }
}

#[test]
fn missing_config_file_is_a_clear_error() {
    let (code, _, err) = run_hotdog(&["--check", "-c", "does-not-exist.yml"]);
    assert_eq!(code, 2);
    assert!(
        err.contains("does-not-exist.yml: cannot read the configuration"),
        "{err}"
    );
}

/// `hotdog replay LOGFILE` prints what the rules make of each line; hotdog 0.5's `-t LOGFILE`
/// prints the same, with and without `--json`.
#[test]
fn replay_prints_matches_and_records_as_0_5s_dash_t_does() {
    let dir = tempfile::tempdir().expect("temp dir");
    let log = dir.path().join("in.log");
    std::fs::write(
        &log,
        "<13>Oct 11 22:14:15 web1 app[12]: hello bob\n<15>Oct 11 22:14:15 web1 app: noise\n",
    )
    .expect("write log");
    let log = log.to_string_lossy().into_owned();
    let (code, out, err) = run_hotdog(&["-c", "hotdog.yml", "replay", &log]);
    assert_eq!(code, 0, "{err}");
    assert_eq!(
        run_hotdog(&["-c", "hotdog.yml", "-t", &log]),
        (0, out.clone(), err)
    );
    let json = run_hotdog(&["-c", "hotdog.yml", "replay", "--json", &log]);
    assert_eq!(json.0, 0, "{}", json.2);
    assert_eq!(json.1.lines().count(), 2, "{}", json.1);
    assert_eq!(
        run_hotdog(&["-c", "hotdog.yml", "-t", &log, "--json"]),
        json
    );
    assert!(out.contains("matched rule 0 (hotdog.yml:"), "{out}");
    assert!(
        out.contains("-> topic logs-hello key web1 payload bob said hello from web1"),
        "{out}"
    );
    assert!(out.contains("line 2:"), "{out}");
    assert!(
        out.contains("unrouted: no rule forwards this line"),
        "{out}"
    );
}

/// `replay` cuts its input as a connection does: octet-counted frames (which may hold a newline),
/// CR and NUL trimmed, a frame longer than `max_message_size` truncated.
#[test]
fn replay_frames_input_as_a_connection_does() {
    let dir = tempfile::tempdir().expect("temp dir");
    let log = dir.path().join("in.log");
    let counted = "<13>Oct 11 22:14:15 web1 app: two\nlines";
    let long = format!("<13>Oct 11 22:14:15 web1 app: {}", "x".repeat(70_000));
    std::fs::write(
        &log,
        format!("{} {counted}<13>plain\r\n{long}\n<13>last", counted.len()),
    )
    .expect("write log");
    let (code, out, err) = run_hotdog(&["-c", "hotdog.yml", "replay", &log.to_string_lossy()]);
    assert_eq!(code, 0, "{err}");
    let frames: Vec<&str> = out.lines().filter(|l| l.starts_with("line ")).collect();
    assert_eq!(frames.len(), 4, "{out}");
    assert_eq!(frames[0], "line 1: <13>Oct 11 22:14:15 web1 app: two");
    assert_eq!(frames[1], "line 2: <13>plain");
    assert!(
        frames[2].len() < 65_600,
        "not truncated: {} bytes",
        frames[2].len()
    );
    assert!(out.contains("truncated to max_message_size"), "{out}");
    assert_eq!(frames[3], "line 4: <13>last");
}

#[test]
fn version_flag() {
    let (code, out, _) = run_hotdog(&["-V"]);
    assert_eq!(code, 0);
    assert_eq!(out.trim(), format!("hotdog {}", env!("CARGO_PKG_VERSION")));
}

#[test]
fn unreadable_tls_files_are_configuration_errors() {
    let (code, _, err) = run_hotdog(&["--check", "-c", "contrib/hotdog-tls.yml"]);
    assert_eq!(code, 2, "{err}");
    assert!(
        err.contains("contrib/hotdog-tls.yml:10:7: global.listen[1].tls: cannot read certificates from /etc/hotdog/server.pem"),
        "{err}"
    );
}

/// Exit codes mean what README.adoc says (issue 9, point 3): settings librdkafka refuses are a
/// configuration error (2); a port that is taken is a runtime failure (1). Neither needs a
/// broker: both fail before hotdog talks to one.
#[test]
fn exit_codes_keep_the_kind_of_the_error() {
    let dir = tempfile::tempdir().expect("temp dir");
    let config = |name: &str, listen: &str, conf: &str| {
        let path = dir.path().join(name);
        std::fs::write(
            &path,
            format!(
                "global:\n  listen:\n{listen}  kafka:\n    conf:\n      bootstrap.servers: '127.0.0.1:1'\n{conf}rules: []\n"
            ),
        )
        .expect("write config");
        path.to_string_lossy().into_owned()
    };
    let refused = config(
        "refused.yml",
        "    port: 0\n",
        "      no.such.librdkafka.setting: 'x'\n",
    );
    let (code, out, err) = run_hotdog(&["-c", &refused]);
    assert_eq!(code, 2, "{out}{err}");
    assert!(
        err.contains("global.kafka.conf is not accepted by librdkafka"),
        "{err}"
    );
    assert!(err.contains("no.such.librdkafka.setting"), "{err}");
    let taken = std::net::TcpListener::bind("127.0.0.1:0").expect("bind");
    let port = taken.local_addr().expect("address").port();
    let busy = config("busy.yml", &format!("    port: {port}\n"), "");
    let (code, out, err) = run_hotdog(&["-c", &busy]);
    assert_eq!(code, 1, "{out}{err}");
    assert!(
        err.contains(&format!("cannot listen on tcp 127.0.0.1:{port}")),
        "{err}"
    );
    assert!(!err.contains("panicked"), "{err}");
}

/// `--check` warns about rules that can never run; `--strict` makes the warnings fail it.
#[test]
fn check_warns_about_rules_that_can_never_run() {
    let text = "global:\n  listen:\n    port: 1514\n  kafka:\n    conf:\n      bootstrap.servers: 'b:9092'\nrules:\n  - regex: 'disk'\n    actions:\n      - type: forward\n        topic: 'disks'\n  - regex: 'disk'\n    actions:\n      - type: forward\n        topic: 'again'\n  - regex: '.*'\n    actions:\n      - type: forward\n        topic: 'logs'\n  - regex: 'late'\n    actions:\n      - type: stop\n";
    let (code, out, path) = check(text);
    assert_eq!(code, 0, "{out}");
    assert!(
        out.contains(&format!("{path}:12: warning: rule can never run: the rule at {path}:8 matches the same and ends processing")),
        "{out}"
    );
    assert!(
        out.contains(&format!("{path}:20: warning: rule can never run: the rule at {path}:16 before it matches every message")),
        "{out}"
    );
    assert!(out.contains("configuration is valid (4 rules)"), "{out}");
    let dir = tempfile::tempdir().expect("temp dir");
    let file = dir.path().join("hotdog.yml");
    std::fs::write(&file, text).expect("write config");
    let (code, _, err) = run_hotdog(&["--check", "--strict", "-c", &file.to_string_lossy()]);
    assert_eq!(code, 2, "{err}");
    assert!(err.contains("2 warning(s)"), "{err}");
}

/// Values that made hotdog abort or panic later are refused by `--check`, each with its
/// location (issue 11: sizes and durations have upper bounds).
#[test]
fn values_that_would_crash_are_refused_with_their_location() {
    let (code, err, path) = check(
        "global:\n  listen:\n    port: 1514\n    max_message_size: 100000000000000\n  kafka:\n    conf:\n      bootstrap.servers: 'b:9092'\n    buffer: 1000000000000000\n  shutdown_timeout: 18446744073709551615\n",
    );
    assert_eq!(code, 2, "{err}");
    for (line, what) in [
        (
            4,
            "`global.listen.max_message_size` must be from 1 to 16777216",
        ),
        (8, "`global.kafka.buffer` must be from 1 to 1000000"),
        (9, "`global.shutdown_timeout` must be at most 1day"),
    ] {
        assert!(
            err.contains(&format!("{path}:{line}:")),
            "line {line}: {err}"
        );
        assert!(err.contains(what), "{what}: {err}");
    }
    assert!(err.contains("3 error(s)"), "{err}");
}

/// Rules the jmespath crate or handlebars cannot take (a panic, a stack overflow, seconds of
/// compiling) are refused with their location, and a file's form is read as it is meant: a
/// UTF-8 byte-order mark is accepted, a second YAML document refused (issue 11).
#[test]
fn configs_that_panicked_or_were_misread_are_handled() {
    let global = "global:\n  listen:\n    port: 1514\n  kafka:\n    conf:\n      bootstrap.servers: 'b:9092'\n";
    let rule = |matcher: &str, template: &str| {
        format!("{global}rules:\n  - {matcher}\n    actions:\n      - type: replace\n        template: \"{template}\"\n      - type: stop\n")
    };
    let (code, text, path) = check(&rule("jmespath: '[99999999999999999999999]'", "x"));
    assert_eq!(code, 2, "{text}");
    assert!(
        text.contains(&format!("{path}:8:15: invalid JMESPath expression")),
        "{text}"
    );
    let deep = format!("jmespath: '{}a{}'", "(".repeat(20_000), ")".repeat(20_000));
    let (code, text, _) = check(&rule(&deep, "x"));
    assert_eq!(code, 2, "{text}");
    assert!(text.contains("nested deeper than 64"), "{text}");
    let started = std::time::Instant::now();
    let (code, text, path) = check(&rule("regex: '.'", &"{{#if a}}".repeat(20_000)));
    assert_eq!(code, 2, "{text}");
    assert!(
        text.contains(&format!("{path}:11:19: invalid template")),
        "{text}"
    );
    eprintln!("20,000 nested blocks refused in {:?}", started.elapsed());
    let (code, text, _) = check(&format!("\u{feff}{global}"));
    assert_eq!(code, 0, "{text}");
    let (code, text, path) = check(&format!("{global}---\nrules: 3\n"));
    assert_eq!(code, 2, "{text}");
    assert!(
        text.contains(&format!("{path}:7:1: a second YAML document")),
        "{text}"
    );
}

/// A TLS file that does not load is reported at its listener's `tls` key, together with the
/// other errors of the file, not after they are fixed (issue 11).
#[test]
fn tls_file_errors_come_with_the_rest_and_say_where() {
    let (code, err, path) = check(
        "global:\n  listen:\n    port: 1\n    tls:\n      cert: /nonexistent/cert.pem\n      key: /nonexistent/key.pem\n    prot: 2\n  kafka:\n    conf:\n      bootstrap.servers: b\n    buffer: lots\n",
    );
    assert_eq!(code, 2, "{err}");
    for expected in [
        format!(
            "{path}:4:5: global.listen[0].tls: cannot read certificates from /nonexistent/cert.pem"
        ),
        format!("{path}:7:5: unknown key `prot`"),
        format!("{path}:11:13: expected a whole number"),
    ] {
        assert!(err.contains(&expected), "{expected}:\n{err}");
    }
    assert!(err.contains("3 error(s)"), "{err}");
}

#[test]
fn the_shipped_rule_tests_pass_cover_every_rule_and_write_junit() {
    let dir = tempfile::tempdir().expect("temp dir");
    let junit = dir.path().join("junit.xml");
    let (code, out, err) = run_hotdog(&[
        "test",
        "-c",
        "hotdog.yml",
        "hotdog.test.yml",
        "--junit",
        &junit.to_string_lossy(),
    ]);
    assert_eq!(code, 0, "{out}{err}");
    assert!(out.contains("8 passed, 0 failed"), "{out}");
    assert!(!out.contains("rules no case matched"), "{out}");
    let xml = std::fs::read_to_string(&junit).expect("junit report");
    assert!(
        xml.contains(r#"<testsuite name="hotdog.test.yml" tests="8" failures="0">"#),
        "{xml}"
    );
    assert!(!xml.contains("<failure"), "{xml}");
}

/// A configuration whose rules read connection facts and the clock.
const FACTS: &str = "global:\n  listen:\n    port: 1514\n  kafka:\n    conf:\n      bootstrap.servers: 'b'\nrules:\n  - regex: '^audit'\n    actions:\n      - type: forward\n        topic: 'audit-{{tls_client_cn}}'\n        key: '{{peer_addr}}'\n        headers:\n          at: '{{iso8601}}'\n          san: '{{tls_client_san}}'\n  - regex: 'drop'\n    actions:\n      - type: stop\n";

#[test]
fn rule_tests_fail_with_the_rule_that_matched_and_a_diff() {
    let dir = tempfile::tempdir().expect("temp dir");
    let config = dir.path().join("hotdog.yml");
    std::fs::write(&config, FACTS).expect("config");
    let tests = dir.path().join("t.yml");
    std::fs::write(
        &tests,
        "tests:\n  - name: facts and a fixed clock\n    input: '<13>audit ok'\n    peer_addr: '10.1.2.3:999'\n    tls_client_cn: tenant-a\n    tls_client_san: a.example.com\n    clock: '2030-01-02T03:04:05Z'\n    records:\n      - topic: audit-tenant-a\n        key: '10.1.2.3:999'\n        payload: audit ok\n        headers:\n          at: '2030-01-02T03:04:05.000Z'\n          san: a.example.com\n  - name: wrong topic\n    input: '<13>audit no cert'\n    records:\n      - topic: audit-tenant-b\n  - name: dropped lines make no record\n    input: '<13>please drop me'\n    unrouted: true\n  - name: but this one is routed\n    input: '<13>audit and drop'\n    unrouted: true\n",
    )
    .expect("tests");
    let junit = dir.path().join("junit.xml");
    let (code, out, err) = run_hotdog(&[
        "test",
        "-c",
        &config.to_string_lossy(),
        &tests.to_string_lossy(),
        "--junit",
        &junit.to_string_lossy(),
    ]);
    assert_eq!(code, 1, "{out}{err}");
    assert!(out.contains("ok   facts and a fixed clock"), "{out}");
    assert!(out.contains("ok   dropped lines make no record"), "{out}");
    let file = tests.to_string_lossy();
    assert!(
        out.contains(&format!("FAIL wrong topic ({file}:15:5)")),
        "{out}"
    );
    // The rule that matched, then expected against got.
    let rule = format!("matched rule 0 ({}:8)", config.to_string_lossy());
    assert!(out.contains(&rule), "{out}");
    assert!(out.contains(r#"-     "topic": "audit-tenant-b""#), "{out}");
    // No CN: the rendered topic `audit-` is still legal.
    assert!(out.contains(r#"+     "topic": "audit-""#), "{out}");
    assert!(out.contains("FAIL but this one is routed"), "{out}");
    assert!(out.contains("2 passed, 2 failed"), "{out}");
    let xml = std::fs::read_to_string(&junit).expect("junit report");
    assert_eq!(xml.matches("<failure").count(), 2, "{xml}");
}

#[test]
fn invalid_rule_test_files_exit_2_with_every_error_located() {
    let dir = tempfile::tempdir().expect("temp dir");
    let tests = dir.path().join("t.yml");
    std::fs::write(
        &tests,
        "tests:\n  - name: two inputs\n    input: a\n    raw: b\n    unrouted: true\n  - nme: typo\n    input: c\n    records:\n      - topic: t\n        payload_json: '{not json'\n",
    )
    .expect("tests");
    let (code, out, err) = run_hotdog(&["test", "-c", "hotdog.yml", &tests.to_string_lossy()]);
    assert_eq!(code, 2, "{out}{err}");
    let file = tests.to_string_lossy();
    for expected in [
        format!("{file}:4:10: `tests[0]` needs exactly one of `input`, `raw` or `raw_hex`"),
        format!("{file}:6:5: unknown key `nme` in `tests[1]`; did you mean `name`?"),
        format!("{file}:10:23: `tests[1].records[0].payload_json` is not JSON"),
    ] {
        assert!(err.contains(&expected), "{expected}\n{err}");
    }
    assert!(out.is_empty(), "no case runs: {out}");
}

/// `--check` warns about a regex that costs far more than a scan of the line (a counted
/// repetition of a Unicode class), and not about ordinary ones; `--strict` fails on it.
#[test]
fn check_warns_about_a_regex_that_costs_far_more_than_a_scan() {
    let rule = |regex: &str| format!("  - regex: '{regex}'\n    actions:\n      - type: stop\n");
    let text = format!(
        "global:\n  listen:\n    port: 1514\n  kafka:\n    conf:\n      bootstrap.servers: 'b:9092'\nrules:\n{}{}{}{}",
        rule(r"disk \d+"),
        rule(r"(?P<user>\w+) login"),
        rule(r"\w{100}z"),
        rule(r"(?-u:\w){100}z"),
    );
    let (code, out, path) = check(&text);
    assert_eq!(code, 0, "{out}");
    let warnings: Vec<&str> = out.lines().filter(|l| l.contains("warning:")).collect();
    assert_eq!(warnings.len(), 1, "{out}");
    assert!(
        warnings[0].starts_with(&format!(
            "{path}:14: warning: the rule's regex costs about "
        )) && warnings[0].contains("times a plain scan of the line"),
        "{out}"
    );
    let dir = tempfile::tempdir().expect("temp dir");
    let file = dir.path().join("hotdog.yml");
    std::fs::write(&file, &text).expect("write config");
    let (code, _, err) = run_hotdog(&["--check", "--strict", "-c", &file.to_string_lossy()]);
    assert_eq!(code, 2, "{err}");
    assert!(err.contains("1 warning(s)"), "{err}");
}
