//! The configuration's tests: every key, every error with its location and its exact text,
//! hotdog 0.5's configurations loading as they did.

use super::*;
use crate::route::{Action, MergeValue};

fn parse(text: &str) -> Result<Config, ConfigErrors> {
    Config::parse("test.yml", text, |_| None)
}

fn errors(text: &str) -> Vec<String> {
    match parse(text) {
        Ok(_) => panic!("expected errors"),
        Err(e) => e.0.iter().map(ToString::to_string).collect(),
    }
}

const MINIMAL: &str =
    "global:\n  listen:\n    port: 1514\n  kafka:\n    conf:\n      bootstrap.servers: 'b:9092'\n";

#[test]
fn structured_data_fields_formats_and_time_zones() {
    let text = format!(
        "{MINIMAL}    timezone: Europe/Paris\nrules:\n  - regex: '^10\\.'\n    field: sd.origin@123.ip\n    actions:\n      - type: replace\n        template: '{{{{sd.[origin@123].ip}}}} at {{{{timestamp_rfc3339}}}}'\n      - type: forward\n        topic: t\n        format: raw\n"
    )
    .replace("    port: 1514\n  kafka", "    port: 1514\n    timezone: Europe/Paris\n  kafka")
    .replace("    timezone: Europe/Paris\nrules", "rules");
    let c = parse(&text).unwrap();
    assert_eq!(
        c.global.listen[0]
            .timezone
            .as_ref()
            .map(|t| t.name.as_str()),
        Some("Europe/Paris")
    );
    let origin = crate::core::Origin {
        zone: c.global.listen[0].timezone.as_ref().map(|t| t.zone.clone()),
        ..Default::default()
    };
    let line = r#"<13>1 2024-05-01T12:00:00+02:00 h a - - [origin@123 ip="10.1.2.3"] x"#;
    let (routed, outcome) = c
        .rules
        .apply(&crate::parse::syslog::parse(line), &origin, None);
    assert!(outcome.forwarded);
    assert_eq!(
        routed.and_then(|r| r.body).as_deref(),
        Some("10.1.2.3 at 2024-05-01T12:00:00+02:00")
    );
    // Another SD value does not match; no structured data skips the rule.
    for other in [
        r#"<13>1 - h a - - [origin@123 ip="192.0.2.1"] x"#,
        "<13>1 - h a - - - x",
    ] {
        let outcome = c
            .rules
            .apply(&crate::parse::syslog::parse(other), &origin, None)
            .1;
        assert!(!outcome.forwarded, "{other}");
    }
    let bad = MINIMAL.replace("    port: 1514\n", "    port: 1514\n    timezone: Mars/Olympus\n")
        + "rules:\n  - regex: 'x'\n    field: sd.nodot\n    actions:\n      - type: forward\n        topic: t\n        format: protobuf\n";
    let errs = errors(&bad).join("\n");
    assert!(
        errs.contains(
            "test.yml:4:15: `global.listen.timezone`: `Mars/Olympus` is not an IANA time zone"
        ),
        "{errs}"
    );
    assert!(
        errs.contains("unknown field `sd.nodot`") && errs.contains("or `sd.SD-ID.PARAM`"),
        "{errs}"
    );
    assert!(
        errs.contains(
            "unknown format `protobuf`; expected one of: raw, json, otlp_json, otlp_proto"
        ),
        "{errs}"
    );
}

#[test]
fn minimal_with_defaults() {
    let c = parse(MINIMAL).unwrap();
    let l = &c.global.listen[0];
    assert_eq!(c.global.listen.len(), 1);
    assert_eq!(l.address, "127.0.0.1");
    assert_eq!(l.port, 1514);
    assert!(matches!(l.protocol, Protocol::Tcp));
    assert_eq!(l.max_message_size, 65536);
    assert_eq!(c.global.kafka.topic, "logs");
    assert_eq!(c.global.kafka.buffer, 1024);
    assert_eq!(c.global.shutdown_timeout, Duration::from_secs(30));
    assert!(c.global.status.is_none());
    assert!(c.rules.rules().is_empty());
    assert_eq!(c.global.max_rules_memory, 1 << 30);
}

#[test]
fn rules_past_max_rules_memory_are_refused_naming_the_costliest() {
    let rules: String = (0..40)
        .map(|i| {
            format!("  - regex: 'tenant{i} says (?P<w>[a-z]+)'\n    actions:\n      - type: stop\n")
        })
        .collect();
    let text = format!(
        "global:\n  max_rules_memory: 1048576\n  listen: {{port: 1514}}\n  kafka:\n    conf: {{bootstrap.servers: 'k:9092'}}\nrules:\n{rules}"
    );
    assert!(parse(&text).is_ok(), "40 small rules fit in 1 MiB");
    // Three rules with a Unicode class and a capture cost more than 1 MiB.
    let costly = text.replacen("[a-z]+", "\\w+", 3);
    let e = errors(&costly).join("\n");
    assert!(
        e.contains("global.max_rules_memory allows (1.0 MiB)"),
        "{e}"
    );
    assert!(e.contains("compiling stopped at"), "{e}");
    assert!(e.contains("the costliest: test.yml:7 (0.4 MiB)"), "{e}");
    assert!(errors(&text.replace("1048576", "0"))[0].contains("max_rules_memory"));
}

#[test]
fn listeners_single_and_list() {
    let single = MINIMAL.replace(
        "    port: 1514\n",
        "    port: 6514\n    tls:\n      cert: c.pem\n      key: k.pem\n      ca: ca.pem\n",
    );
    let c = parse(&single).unwrap();
    let Protocol::Tls(t) = &c.global.listen[0].protocol else {
        panic!("not tls");
    };
    assert_eq!(t.client_auth, ClientAuth::Required);
    assert_eq!(t.handshake_timeout, Duration::from_secs(10));
    let list = MINIMAL.replace(
        "  listen:\n    port: 1514\n",
        "  listen:\n    - port: 1514\n    - port: 6514\n      tls:\n        cert: c.pem\n        key: k.pem\n        ca: ca.pem\n        client_auth: optional\n        handshake_timeout: 2s\n    - port: 514\n      protocol: udp\n      address: 0.0.0.0\n",
    );
    let c = parse(&list).unwrap();
    let kinds: Vec<_> = c
        .global
        .listen
        .iter()
        .map(|l| (l.port, l.protocol.name()))
        .collect();
    assert_eq!(kinds, [(1514, "tcp"), (6514, "tls"), (514, "udp")]);
    let Protocol::Tls(t) = &c.global.listen[1].protocol else {
        panic!("not tls");
    };
    assert_eq!(t.client_auth, ClientAuth::Optional);
    assert_eq!(t.handshake_timeout, Duration::from_secs(2));
    let relp = MINIMAL.replace(
        "  listen:\n    port: 1514\n",
        "  listen:\n    - port: 2514\n      protocol: relp\n    - port: 2515\n      protocol: relp\n      tls:\n        cert: c.pem\n        key: k.pem\n",
    );
    let c = parse(&relp).unwrap();
    assert!(matches!(c.global.listen[0].protocol, Protocol::Relp(None)));
    assert!(matches!(
        c.global.listen[1].protocol,
        Protocol::Relp(Some(_))
    ));
    assert_eq!(c.global.listen[1].protocol.name(), "relp+tls");
    let bad = MINIMAL.replace("    port: 1514\n", "    port: 1514\n    protocol: rlep\n");
    let joined = errors(&bad).join("\n");
    assert!(joined.contains("did you mean `relp`?"), "{joined}");
    let bad = MINIMAL.replace("    port: 1514\n", "    port: 1514\n    protocol: tsl\n");
    let joined = errors(&bad).join("\n");
    assert!(
        joined.contains("unknown protocol `tsl`; did you mean `tls`?"),
        "{joined}"
    );
    let bad = MINIMAL.replace("    port: 1514\n", "    port: 1514\n    protocol: tls\n");
    assert!(errors(&bad)[0].contains("has no `tls` settings"));
}

#[test]
fn env_overrides_kafka_conf() {
    let c = Config::parse("t.yml", MINIMAL, |k| match k {
        "KAFKA_BROKER" => Some("env:1".into()),
        "SASL_SCRAM_USERNAME" => Some("u".into()),
        _ => None,
    })
    .unwrap();
    assert_eq!(c.global.kafka.conf["bootstrap.servers"], "env:1");
    assert_eq!(c.global.kafka.conf["sasl.username"], "u");
    assert!(!c.global.kafka.conf.contains_key("sasl.password"));
}

#[test]
fn unknown_keys_suggest_and_all_errors_are_reported() {
    let text = "global:\n  listen:\n    prot: 1514\n  kafka:\n    conf:\n      bootstrap.servers: b\n    buffr: 3\nrules:\n  - regex: '('\n    actions:\n      - type: forwrd\n  - jmespath: 'a'\n    fieeld: msg\n    actions:\n      - type: forward\n        topic: 'x'\n        tpic: 'y'\n";
    let errs = errors(text);
    let joined = errs.join("\n");
    assert!(
        joined
            .contains("test.yml:3:5: unknown key `prot` in `global.listen`; did you mean `port`?"),
        "{joined}"
    );
    assert!(
        joined.contains("test.yml:7:5: unknown key `buffr`"),
        "{joined}"
    );
    assert!(joined.contains("did you mean `buffer`?"), "{joined}");
    assert!(joined.contains("test.yml:9:12: invalid regex"), "{joined}");
    assert!(
        joined.contains("test.yml:11:15: unknown action type `forwrd`; did you mean `forward`?"),
        "{joined}"
    );
    assert!(
        joined.contains("test.yml:13:5: unknown key `fieeld`"),
        "{joined}"
    );
    assert!(
        joined.contains("test.yml:17:9: unknown key `tpic`"),
        "{joined}"
    );
    assert_eq!(errs.len(), 6, "{joined}");
}

/// A bad value never hides an unknown key beside it (issue 9, point 4): each case has one
/// broken value and one typo in the same mapping, and both are reported.
#[test]
fn a_bad_value_does_not_hide_a_typo_beside_it() {
    let rule =
        |action: &str| format!("{MINIMAL}rules:\n  - regex: '.'\n    actions:\n      - {action}\n");
    let cases = [
        (
            rule("type: forward\n        topic: t\n        key: '{{#if}}'\n        hedaers: {a: b}"),
            "invalid template in `rules[0].actions[0].key`",
            "unknown key `hedaers`",
        ),
        (
            rule("type: [forward]\n        topic: t\n        tpoic: u"),
            "expected a value for `rules[0].actions[0].type`",
            "unknown key `tpoic`",
        ),
        (
            rule("topic: t\n        tpye: forward"),
            "needs a `type`",
            "unknown key `tpye`",
        ),
        (
            rule("type: frward\n        topic: t\n        jsn: {}"),
            "unknown action type `frward`",
            "unknown key `jsn`",
        ),
        (
            format!("{MINIMAL}rules:\n  - regex: [x]\n    feild: msg\n    actions: []\n"),
            "expected a value for `rules[0].regex`",
            "unknown key `feild`",
        ),
        (
            format!("{MINIMAL}rules:\n  - regex: x\n    field: [msg]\n    actoins: []\n"),
            "expected a value for `rules[0].field`",
            "unknown key `actoins`",
        ),
        (
            MINIMAL.replace("    port: 1514\n", "    port: 1514\n    protocol: [tcp]\n    adress: x\n"),
            "expected a value for `global.listen.protocol`",
            "unknown key `adress`",
        ),
        (
            MINIMAL.replace(
                "    port: 1514\n",
                "    port: 1514\n    tls:\n      cert: c\n      key: k\n      ca: a\n      client_auth: [x]\n      kye: k\n",
            ),
            "expected a value for `global.listen.tls.client_auth`",
            "unknown key `kye`",
        ),
    ];
    for (text, bad, typo) in cases {
        let joined = errors(&text).join("\n");
        assert!(joined.contains(bad), "{bad}:\n{joined}");
        assert!(joined.contains(typo), "{typo}:\n{joined}");
    }
}

/// Values that would break the process are refused with their location (issue 11).
#[test]
fn connection_limits_keepalive_and_proxy_protocol_are_decoded_and_checked() {
    let c = parse(&MINIMAL.replace(
        "    port: 1514\n",
        "    port: 1514\n    max_connections: 5\n    max_connections_per_source: 2\n    tcp_keepalive: off\n    idle_timeout: 5m\n    proxy_protocol:\n      from: ['10.0.0.0/8', '192.0.2.7', '::1']\n",
    ))
    .unwrap();
    let l = &c.global.listen[0];
    assert_eq!(l.max_connections, 5);
    assert_eq!(l.max_connections_per_source, Some(2));
    assert_eq!(l.tcp_keepalive, None);
    assert_eq!(l.idle_timeout, Some(Duration::from_secs(300)));
    let p = l.proxy_protocol.as_ref().unwrap();
    assert!(p.trusts("10.1.2.3".parse().unwrap()));
    assert!(p.trusts("::ffff:192.0.2.7".parse().unwrap()));
    assert!(p.trusts("::1".parse().unwrap()));
    assert!(!p.trusts("192.0.2.8".parse().unwrap()));
    // The defaults.
    let d = &parse(MINIMAL).unwrap().global.listen[0];
    assert_eq!(
        (d.max_connections, d.max_connections_per_source),
        (10_000, None)
    );
    assert_eq!(d.tcp_keepalive, Some(Duration::from_secs(60)));
    assert!(d.idle_timeout.is_none() && d.proxy_protocol.is_none());

    let bad = MINIMAL.replace(
        "    port: 1514\n",
        "    port: 1514\n    max_connections: 0\n    idle_timeout: 500ms\n    proxy_protocol:\n      from: ['10.0.0.0/33']\n",
    );
    let joined = errors(&bad).join("\n");
    for expected in [
        "test.yml:4:22: `global.listen.max_connections` must be from 1 to 1000000, found 0",
        "test.yml:5:19: `global.listen.idle_timeout` must be at least 1s",
        "test.yml:7:14: expected a network like `10.0.0.0/8` or an address in `global.listen.proxy_protocol.from`, found `10.0.0.0/33`",
    ] {
        assert!(joined.contains(expected), "{expected}\n{joined}");
    }
    let udp = MINIMAL.replace(
        "    port: 1514\n",
        "    port: 1514\n    protocol: udp\n    idle_timeout: 5s\n",
    );
    let joined = errors(&udp).join("\n");
    assert!(
        joined.contains("`global.listen.idle_timeout` is for tcp, tls and relp listeners, not udp"),
        "{joined}"
    );
}

#[test]
fn sizes_and_durations_have_upper_bounds() {
    let text = MINIMAL
        .replace(
            "    port: 1514\n",
            "    port: 1514\n    max_message_size: 100000000000000\n",
        )
        .replace(
            "      bootstrap.servers: 'b:9092'\n",
            "      bootstrap.servers: 'b:9092'\n    buffer: 1000000000000000\n",
        )
        + "  shutdown_timeout: 18446744073709551615\n";
    let joined = errors(&text).join("\n");
    assert!(
        joined.contains("test.yml:4:23: `global.listen.max_message_size` must be from 1 to 16777216, found 100000000000000"),
        "{joined}"
    );
    assert!(
        joined.contains("`global.kafka.buffer` must be from 1 to 1000000, found 1000000000000000"),
        "{joined}"
    );
    assert!(
        joined.contains("`global.shutdown_timeout` must be at most 1day"),
        "{joined}"
    );
    // The bounds themselves are accepted.
    let ok = MINIMAL.replace(
        "    port: 1514\n",
        "    port: 1514\n    max_message_size: 16777216\n",
    ) + "  shutdown_timeout: 24h\n";
    assert!(parse(&ok).is_ok());
}

#[test]
fn a_byte_order_mark_is_accepted_and_a_second_document_refused() {
    assert!(parse(&format!("\u{feff}{MINIMAL}")).is_ok());
    assert!(parse(&format!("# comment\n---\n{MINIMAL}...\n")).is_ok());
    let joined = errors(&format!("---\n{MINIMAL}---\nrules: []\n")).join("\n");
    assert!(
        joined.contains("test.yml:8:1: a second YAML document"),
        "{joined}"
    );
    let joined = errors(&format!("{MINIMAL}...\nrules: []\n")).join("\n");
    assert!(
        joined.contains("test.yml:8:1: a second YAML document"),
        "{joined}"
    );
}

#[test]
fn a_forward_action_lists_each_expected_key_once() {
    let text = format!(
        "{MINIMAL}rules:\n  - regex: '.'\n    actions:\n      - type: forward\n        topic: t\n        zzzzzzzz: 1\n"
    );
    let joined = errors(&text).join("\n");
    assert!(
        joined.contains("unknown key `zzzzzzzz` in `rules[0].actions[0]`; expected one of: type, topic, key, headers"),
        "{joined}"
    );
}

#[test]
fn bad_values_are_located() {
    let text = "global:\n  listen:\n    port: lots\n  kafka:\n    conf:\n      bootstrap.servers: b\n    topic: 'no spaces'\nrules:\n  - regex: 'x'\n    field: hostnam\n    actions:\n      - type: forward\n        topic: '{{#if}}'\n      - type: merge\n        json: 'not a map'\n";
    let joined = errors(text).join("\n");
    assert!(
        joined.contains("test.yml:3:11: expected a whole number"),
        "{joined}"
    );
    assert!(
        joined.contains("test.yml:7:12: `no spaces` is not a legal Kafka topic"),
        "{joined}"
    );
    assert!(
        joined.contains("test.yml:10:12: unknown field `hostnam`"),
        "{joined}"
    );
    assert!(joined.contains("did you mean `hostname`?"), "{joined}");
    assert!(
        joined.contains("test.yml:13:16: invalid template"),
        "{joined}"
    );
    assert!(
        joined.contains("test.yml:15:15: expected a mapping"),
        "{joined}"
    );
}

#[test]
fn yaml_syntax_errors_and_odd_documents_do_not_panic() {
    for text in [
        "global: [\n",
        "- a\n- b\n",
        "a: *nothing\n",
        "a: &x 1\nb: *x\n",
        "global:\n  listen: 1\n  listen: 2\n",
        "",
        "global: !!str x\n",
        "rules: 3\nglobal: 4\n",
    ] {
        let errs = errors(text);
        assert!(!errs.is_empty());
        assert!(errs[0].starts_with("test.yml"), "{errs:?}");
    }
}

#[test]
fn missing_broker_is_reported() {
    let joined = errors("global:\n  listen: {}\n  kafka: {}\n").join("\n");
    assert!(joined.contains("bootstrap.servers"), "{joined}");
}

#[test]
fn merge_values_keep_their_types() {
    let text = format!(
        "{MINIMAL}rules:\n  - regex: '.'\n    actions:\n      - type: merge\n        json:\n          n: 3\n          f: 1.5\n          b: true\n          s: '3'\n          t: '{{{{msg}}}}'\n          l: [1, x]\n      - type: forward\n        topic: t\n"
    );
    let c = parse(&text).unwrap();
    let Action::Merge(MergeValue::Object(fields)) = &c.rules.rules()[0].actions[0] else {
        panic!("not a merge");
    };
    let kinds: Vec<String> = fields
        .iter()
        .map(|(k, v)| match v {
            MergeValue::Json(j) => format!("{k}={j}"),
            MergeValue::Template(_) => format!("{k}=template"),
            MergeValue::Array(a) => format!("{k}=array{}", a.len()),
            MergeValue::Object(_) => format!("{k}=object"),
        })
        .collect();
    assert_eq!(
        kinds,
        [
            "n=3",
            "f=1.5",
            "b=true",
            "s=template",
            "t=template",
            "l=array2"
        ]
    );
}

#[test]
fn rule_names_label_counters_are_checked_and_unique() {
    let rule = |name: &str, regex: &str| {
        format!("  - name: {name}\n    regex: '{regex}'\n    actions:\n      - type: stop\n")
    };
    let text = format!(
        "{MINIMAL}rules:\n{}  - regex: 'b'\n    actions:\n      - type: stop\n",
        rule("first-rule_1", "a")
    );
    let c = parse(&text).unwrap();
    assert_eq!(c.rules.rules()[0].name.as_deref(), Some("first-rule_1"));
    assert_eq!(c.rules.label(0), "first-rule_1");
    assert_eq!(c.rules.label(1), "1", "a rule without a name by its index");
    for bad in ["1st", "a.b", "'a b'", "''"] {
        let errs = errors(&format!("{MINIMAL}rules:\n{}", rule(bad, "a")));
        assert_eq!(errs.len(), 1, "{bad}: {errs:?}");
        assert!(
            errs[0].starts_with("test.yml:8:11: ")
                && errs[0].contains("is not a rule name: 1 to 100 of a-z A-Z 0-9 _ -"),
            "{bad}: {errs:?}"
        );
    }
    let errs = errors(&format!(
        "{MINIMAL}rules:\n{}{}",
        rule("same", "a"),
        rule("same", "b")
    ));
    assert_eq!(
        errs,
        vec!["test.yml:12:11: rule name `same` is already the name of the rule at test.yml:8"]
    );
}

#[test]
fn a_reloaded_rule_keeps_its_count_only_when_it_stayed_the_same() {
    let text = |second: &str| {
        format!(
            "{MINIMAL}rules:\n  - name: kept\n    regex: 'a'\n    actions:\n      - type: stop\n  - regex: '{second}'\n    actions:\n      - type: stop\n  - regex: 'c'\n    actions:\n      - type: stop\n"
        )
    };
    let old = parse(&text("b")).unwrap().rules;
    for i in 0..3 {
        old.count_matches(i, 10 + i as u64);
    }
    // The same text on other lines (a comment above) is the same rule.
    let moved = text("b").replace("rules:\n", "# routing\nrules:\n");
    let mut same = parse(&moved).unwrap().rules;
    same.keep_counts(&old);
    assert_eq!(
        same.matches(),
        vec![("kept".into(), 10), ("1".into(), 11), ("2".into(), 12)]
    );
    let mut changed = parse(&text("B")).unwrap().rules;
    changed.keep_counts(&old);
    assert_eq!(
        changed.matches(),
        vec![("kept".into(), 10), ("1".into(), 0), ("2".into(), 12)]
    );
    // Counted once, seen by both: the counter is shared, not copied.
    changed.count_matches(0, 1);
    assert_eq!(old.matches()[0].1, 11);
}

#[test]
fn a_listeners_framing_is_decoded_and_checked() {
    use crate::frame::lines::Framing;
    let c = parse(MINIMAL).unwrap();
    assert_eq!(c.global.listen[0].framing, Framing::Auto);
    let with = |framing: &str, extra: &str| {
        MINIMAL.replace(
            "    port: 1514\n",
            &format!("    port: 1514\n    framing: {framing}\n{extra}"),
        )
    };
    assert_eq!(
        parse(&with("nul", "")).unwrap().global.listen[0].framing,
        Framing::Nul
    );
    let errs = errors(&with("octet", ""));
    assert_eq!(errs.len(), 1, "{errs:?}");
    assert!(
        errs[0].starts_with("test.yml:4:14: unknown framing `octet`"),
        "{errs:?}"
    );
    let errs = errors(&with("lf", "    protocol: udp\n"));
    assert_eq!(
        errs,
        ["test.yml:4:14: `global.listen.framing` is for TCP and TLS listeners; this one is udp (which frames its messages itself)"]
    );
}

#[test]
fn a_udp_listeners_receive_buffer_is_a_size() {
    let with =
        |extra: &str| MINIMAL.replace("    port: 1514\n", &format!("    port: 1514\n{extra}"));
    assert_eq!(
        parse(MINIMAL).unwrap().global.listen[0].receive_buffer,
        None
    );
    let c = parse(&with("    protocol: udp\n    receive_buffer: 16MiB\n")).unwrap();
    assert_eq!(c.global.listen[0].receive_buffer, Some(16 << 20));
    assert_eq!(
        errors(&with("    receive_buffer: 1MiB\n")),
        ["test.yml:4:21: `global.listen.receive_buffer` is for UDP listeners; this one is tcp"]
    );
    let errs = errors(&with("    protocol: udp\n    receive_buffer: 2GiB\n"));
    assert!(errs[0].contains("must be from 1 byte to 1GiB"), "{errs:?}");
}

#[test]
fn kafka_secrets_come_from_the_environment_and_from_files_and_are_never_shown() {
    let dir = tempfile::tempdir().unwrap();
    let password = dir.path().join("password");
    std::fs::write(&password, "hunter2-from-a-file\n").unwrap();
    let text = MINIMAL.replace(
        "      bootstrap.servers: 'b:9092'\n",
        "      bootstrap.servers: '${BROKER_HOST}:9092'\n      sasl.username: 'user-$${x}'\n      \
         sasl.password_file: '${SECRETS}/password'\n",
    );
    let dir_text = dir.path().display().to_string();
    let env = |k: &str| match k {
        "BROKER_HOST" => Some("kafka.example".to_string()),
        "SECRETS" => Some(dir_text.clone()),
        _ => None,
    };
    let c = Config::parse("test.yml", &text, env).unwrap();
    let conf = &c.global.kafka.conf;
    assert_eq!(conf["bootstrap.servers"], "kafka.example:9092");
    assert_eq!(conf["sasl.username"], "user-${x}");
    assert_eq!(conf["sasl.password"], "hunter2-from-a-file");
    assert!(!conf.contains_key("sasl.password_file"));

    // Errors say which key and which variable or file, never a value.
    std::fs::write(dir.path().join("empty"), "\n").unwrap();
    let bad = MINIMAL.replace(
        "      bootstrap.servers: 'b:9092'\n",
        &format!(
            "      bootstrap.servers: 'b:9092'\n      sasl.username: '${{NOT_SET}}'\n      \
             sasl.password: '${{open'\n      ssl.key.password_file: '{dir_text}/missing'\n      \
             sasl.oauthbearer.client.secret_file: '{dir_text}/empty'\n      \
             client.id: hotdog\n      client.id_file: '{}'\n",
            password.display()
        ),
    );
    let e = match Config::parse("test.yml", &bad, |_| None) {
        Ok(_) => panic!("expected errors"),
        Err(e) => e.0.iter().map(ToString::to_string).collect::<Vec<_>>(),
    };
    assert_eq!(e.len(), 5, "{e:#?}");
    assert!(e[0].starts_with("test.yml:7:22: `global.kafka.conf.sasl.username` names the environment variable NOT_SET, which is not set"), "{e:#?}");
    assert!(
        e[1].contains("`global.kafka.conf.sasl.password` has a `${` without its `}`"),
        "{e:#?}"
    );
    assert!(
        e[2].contains("`global.kafka.conf.ssl.key.password_file`: cannot read")
            && e[2].contains("missing"),
        "{e:#?}"
    );
    assert!(
        e[3].contains("sasl.oauthbearer.client.secret_file`:") && e[3].ends_with("empty is empty"),
        "{e:#?}"
    );
    assert!(e[4].contains("sets `client.id` twice"), "{e:#?}");
    assert!(!e.iter().any(|m| m.contains("hunter2")), "{e:#?}");
}

#[test]
fn the_status_server_takes_tls_a_token_file_and_open() {
    let dir = tempfile::tempdir().unwrap();
    let token = dir.path().join("token");
    std::fs::write(&token, "a-token\n").unwrap();
    let text = format!(
        "{MINIMAL}  status:\n    address: 0.0.0.0\n    token_file: '{}'\n    open: false\n    tls:\n      cert: c.pem\n      key: k.pem\n",
        token.display()
    );
    let s = parse(&text).unwrap().global.status.unwrap();
    assert_eq!(s.token_file.as_deref(), Some(token.as_path()));
    assert!(!s.open && s.authenticates() && !s.is_loopback() && s.control_off().is_none());
    assert_eq!(s.tls.map(|t| t.cert), Some("c.pem".into()));
    // hotdog 0.5's status keys alone: no authentication, reload off away from loopback.
    let old = parse(&format!(
        "{MINIMAL}  status:\n    address: 0.0.0.0\n    port: 8585\n"
    ))
    .unwrap()
    .global
    .status
    .unwrap();
    assert!(old.open && old.tls.is_none() && !old.authenticates());
    assert!(old.control_off().is_some());
    assert_eq!(
        errors(&format!(
            "{MINIMAL}  status:\n    token_file: '{}/none'\n    open: maybe\n",
            dir.path().display()
        )),
        vec![
            format!(
                "test.yml:8:17: `global.status.token_file`: cannot read {}/none: No such file or directory (os error 2)",
                dir.path().display()
            ),
            "test.yml:9:11: expected true or false for `global.status.open`, found `maybe`".to_string(),
        ]
    );
}

#[test]
fn a_listeners_quota_is_decoded_and_checked() {
    use super::{KeyPart, KeyVar, Over};
    let with =
        |extra: &str| MINIMAL.replace("    port: 1514\n", &format!("    port: 1514\n{extra}"));
    assert_eq!(parse(MINIMAL).unwrap().global.listen[0].quota, None);
    let c = parse(&with("    quota:\n      lines: 2000\n")).unwrap();
    let q = c.global.listen[0].quota.clone().unwrap();
    assert_eq!(q.lines, Some(2000));
    assert_eq!(q.bytes, None);
    assert_eq!(q.burst, std::time::Duration::from_secs(1));
    assert_eq!(q.over, Over::Wait);
    assert_eq!(q.key.parts, [KeyPart::Var(KeyVar::Source)]);
    let c = parse(&with(
        "    quota:\n      bytes: 1MB\n      burst: 250ms\n      over: drop\n      key: 'cn={{tls_client_cn}}'\n",
    ))
    .unwrap();
    let q = c.global.listen[0].quota.clone().unwrap();
    assert_eq!(q.bytes, Some(1_000_000));
    assert_eq!(q.burst, std::time::Duration::from_millis(250));
    assert_eq!(q.over, Over::Drop);
    assert_eq!(
        q.key.parts,
        [
            KeyPart::Text("cn=".into()),
            KeyPart::Var(KeyVar::TlsClientCn)
        ]
    );
    assert_eq!(
        errors(&with("    protocol: udp\n    quota:\n      lines: 10\n")),
        ["test.yml:6:12: `global.listen.quota.over` must be `drop` on a UDP listener (a datagram cannot be made to wait; the default, `wait`, is for TCP, TLS and RELP)"]
    );
    assert_eq!(
        errors(&with("    quota:\n      over: drop\n")),
        ["test.yml:5:11: `global.listen.quota` needs `lines`, `bytes` or both (per second, per key)"]
    );
    let errs = errors(&with(
        "    quota:\n      lines: 0\n      key: '{{host}}'\n      ovr: drop\n",
    ));
    assert_eq!(errs.len(), 3, "{errs:?}");
    assert!(
        errs[0].contains("test.yml:5:14: `global.listen.quota.lines` must be from 1"),
        "{errs:?}"
    );
    assert!(
        errs[1].contains("test.yml:6:12: `global.listen.quota.key`: unknown key variable `host`"),
        "{errs:?}"
    );
    assert!(
        errs[2].contains("unknown key `ovr` in `global.listen.quota`; did you mean `over`?"),
        "{errs:?}"
    );
    let errs = errors(&with("    quota:\n      lines: 5\n      key: everyone\n"));
    assert!(
        errs[0].contains("names no fact of the connection"),
        "{errs:?}"
    );
}
