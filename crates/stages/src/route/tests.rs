//! The rules engine's tests: grouped matching against one by one, JMESPath fast paths against
//! the crate, and each action's semantics as hotdog 0.5 had them.

use super::*;
use crate::parse::syslog;

fn rules(defs: Vec<(Field, Matcher, Vec<Action>)>, t: Templates) -> Rules {
    let rules = defs
        .into_iter()
        .enumerate()
        .map(|(i, (field, matcher, actions))| Rule {
            name: None,
            field,
            matcher,
            actions,
            origin: format!("test:{i}"),
            fingerprint: i as u64,
        })
        .collect();
    Rules::new(rules, t, "default")
}

/// Rules where rule `i` forwards to topic `t{i}` (with `{{word}}` when it has that capture)
/// and matches `patterns[i]` on `fields[i % fields.len()]` (a JMESPath expression when it
/// begins with `jmespath:`).
fn numbered(patterns: &[&str], fields: &[Field], group_min: usize) -> Rules {
    let mut t = Templates::new();
    let list = patterns
        .iter()
        .enumerate()
        .map(|(i, p)| {
            let topic = if p.contains("?P<word>") {
                format!("t{i}-{{{{word}}}}")
            } else {
                format!("t{i}")
            };
            Rule {
                name: None,
                field: fields[i % fields.len()],
                matcher: match p.strip_prefix("jmespath:") {
                    Some(q) => Matcher::JmesPath(Query::new(jmespath::compile(q).unwrap())),
                    None => Matcher::Regex(Pattern::new(p).unwrap()),
                },
                actions: vec![Action::Forward {
                    topic: t.compile(&topic).unwrap(),
                    key: None,
                    headers: Vec::new(),
                    format: RecordFormat::Raw,
                }],
                origin: format!("test:{i}"),
                fingerprint: i as u64,
            }
        })
        .collect();
    Rules::grouped(list, t, "default", group_min)
}

#[test]
fn rules_matched_as_a_group_route_exactly_as_one_by_one() {
    let patterns = [
        r"^never$",
        r"disk (?P<word>\w+)",
        r"\bfail(ed|ure)\b",
        r"^<",
        r"",
        r"(?i)ERROR",
        r"[0-9]{4}",
        r"^$",
        r"é",
        r"x{2,}",
        r"^\S+$",
        r"(?P<word>[a-z]+)$",
    ];
    let lines = [
        "<13>Nov 23 12:00:00 web1 app: disk sda failed",
        "<13>Nov 23 12:00:00 web1 app: an error in 2026",
        "<13>Nov 23 12:00:00 db2 app: café xx",
        "plain line with nothing",
        "",
        "<13>1 2026-11-23T12:00:00Z host app - - - ERROR failure",
        "never",
        "xxxx",
        "<13>1 2026-11-23T12:00:00Z web1 app - - [ex@1 p=\"disk sdb\"] an ERROR in 2026",
    ];
    // Every pattern's own match decides, in order, with the others before it skipped: drop
    // the first k patterns so that each one gets to be the first that matches somewhere.
    for k in 0..patterns.len() {
        for fields in [
            &[Field::Msg][..],
            &[Field::Msg, Field::Hostname],
            // A field most lines lack, between the others.
            &[Field::Msg, Field::Sd("ex@1", "p"), Field::Hostname],
        ] {
            let one_by_one = numbered(&patterns[k..], fields, usize::MAX);
            let grouped = numbered(&patterns[k..], fields, 2);
            if fields.len() == 1 {
                assert!(!grouped.groups.is_empty() || patterns.len() - k < 2);
            }
            assert!(one_by_one.groups.is_empty());
            let what = format!("patterns from {k}, fields {fields:?}");
            assert_routes_alike(&grouped, &one_by_one, &lines, &what);
        }
    }
}

/// Every line routes the same through `grouped` as through `one_by_one`.
fn assert_routes_alike(grouped: &Rules, one_by_one: &Rules, lines: &[&str], what: &str) {
    for line in lines {
        assert_eq!(
            run(grouped, line),
            run(one_by_one, line),
            "{what}, line {line:?}"
        );
    }
}

#[test]
fn jmespath_paths_matched_as_a_group_route_exactly_as_one_by_one() {
    let patterns = [
        "jmespath:meta.topic",
        "jmespath:meta",
        "error",
        "jmespath:a.b.c",
        "jmespath:meta.missing",
        "jmespath:n",
        "jmespath:meta.topic.deeper",
        "jmespath:a.b",
        "jmespath:list",
        "jmespath:meta.t7",
        // Not a path of fields: tried by itself, in its place.
        "jmespath:list[0]",
        "jmespath:z",
    ];
    let lines = [
        r#"<13>1 - h a - - - {"meta": {"topic": "orders"}, "n": 0}"#,
        r#"<13>1 - h a - - - {"meta": {"topic": null, "t7": false}}"#,
        r#"<13>1 - h a - - - {"a": {"b": {"c": [1]}}, "n": null}"#,
        r#"<13>1 - h a - - - {"a": {"b": 3}, "list": [], "z": "error"}"#,
        r#"<13>1 - h a - - - {"meta": "a string", "list": [{"x": 1}]}"#,
        r#"<13>1 - h a - - - [{"meta": {"topic": "in an array"}}]"#,
        "<13>1 - h a - - - not json at all: error",
        r#"<13>1 - h a - - - {"meta": {"topic": {"deeper": "yes"}}, "z": 1}"#,
        r#"<13>1 - h a - - - {"broken": "#,
    ];
    for k in 0..patterns.len() {
        for fields in [&[Field::Msg][..], &[Field::Msg, Field::Hostname]] {
            let one_by_one = numbered(&patterns[k..], fields, usize::MAX);
            let grouped = numbered(&patterns[k..], fields, 2);
            if k == 0 && fields.len() == 1 {
                // The paths as one group; the regex and `list[0]` by themselves.
                assert_eq!(grouped.groups.len(), 1);
                assert_eq!(grouped.group_of[2], None);
                assert_eq!(grouped.group_of[10], None);
                assert!(grouped.group_of[11].is_some());
            }
            let what = format!("patterns from {k}, fields {fields:?}");
            assert_routes_alike(&grouped, &one_by_one, &lines, &what);
        }
    }
}

#[test]
fn a_group_too_large_to_build_is_built_in_parts() {
    // Each about 3.4 MB compiled: the four as one pass the regex engine's 10 MB limit.
    let patterns = [r"\w{60}a", r"\w{60}b", r"\w{60}c", r"\w{60}d"];
    let r = numbered(&patterns, &[Field::Msg], 2);
    assert_eq!(r.groups.len(), 2, "two halves");
    assert_eq!(r.group_of, [Some(0), Some(0), Some(1), Some(1)]);
    let one_by_one = numbered(&patterns, &[Field::Msg], usize::MAX);
    let long = "x".repeat(60);
    for line in [
        format!("<13>{long}c"),
        format!("<13>{long}a"),
        "<13>short".into(),
    ] {
        assert_eq!(run(&r, &line), run(&one_by_one, &line), "{line}");
    }
    assert_eq!(run(&r, &format!("<13>{long}c")).0[0].topic, "t2");
}

#[test]
fn groups_gather_the_regex_rules_of_one_field_wherever_they_are() {
    let r = numbered(&["a", "b", "c", "d", "e"], &[Field::Msg], 4);
    assert_eq!(r.groups.len(), 1);
    assert_eq!(r.group_of, [Some(0); 5]);
    // Alternating fields: a group for each field, its rules apart.
    let r = numbered(&["a", "b", "c", "d"], &[Field::Msg, Field::Hostname], 2);
    assert_eq!(r.group_of, [Some(0), Some(1), Some(0), Some(1)]);
    assert_eq!(r.groups[1].members, [1, 3]);
    // Too few on a field: one by one.
    let r = numbered(
        &["a", "b", "c", "d", "e"],
        &[
            Field::Msg,
            Field::Msg,
            Field::Hostname,
            Field::Msg,
            Field::Msg,
        ],
        4,
    );
    assert_eq!(r.group_of, [Some(0), Some(0), None, Some(0), Some(0)]);
    // A regex that matches the empty string (a catch-all) is tried by itself, in its place.
    let r = numbered(&["a", "b", ".*", "c", "d"], &[Field::Msg], 2);
    assert_eq!(r.group_of, [Some(0), Some(0), None, Some(0), Some(0)]);
    assert_eq!(run(&r, "<13>a c").0[0].topic, "t0");
    assert_eq!(run(&r, "<13>c").0[0].topic, "t2");
}

#[test]
fn rules_with_literals_are_found_by_them_and_the_rest_by_one_regex() {
    let r = numbered(
        &[
            "^tenant1: (?P<word>.*)",
            r"service-2 (failed|stopped)",
            r"\bcode=3x\b",
            r"(?i)error",
            r"[0-9]{4}",
            r"\d+ms$",
            "x{2,}",
        ],
        &[Field::Msg],
        2,
    );
    assert_eq!(
        r.group_of,
        [
            Some(0),
            Some(0),
            Some(0),
            Some(0),
            Some(1),
            Some(1),
            Some(1)
        ]
    );
    assert!(matches!(
        (&r.groups[0].finder, &r.groups[1].finder),
        (Finder::Literals { set: None, .. }, Finder::Set(_))
    ));
    // Literals found say which rules to try: the one whose literal occurs.
    assert_eq!(
        r.groups[0].candidates("a service-2 stopped, code=3xy", Field::Msg, &mut None),
        (vec![1, 2], false)
    );
    // ... and its regex decides: `code=3xy` has no word boundary after the x.
    assert_eq!(
        run(&r, "<13>a service-2 stopped, code=3xy").0[0].topic,
        "t1"
    );
    assert_eq!(run(&r, "<13>code=3xy took 12ms").0[0].topic, "t5");
    assert_eq!(run(&r, "<13>an ERROR").0[0].topic, "t3");
}

/// Rules whose literals the traffic carries (a phrase every line has) and that differ only after
/// a variable part: past [`ONE_BY_ONE`] candidates, the group's regexes as one say which match,
/// the first in order wins, and its captures are found by its own regex.
#[test]
fn many_candidates_are_decided_by_one_pass_in_rule_order() {
    let patterns: Vec<String> = (0..20)
        .map(|i| format!(r"user=\d+ action=(?P<word>x{i})\b"))
        .chain(std::iter::once(r"user=\d+ action=(?P<word>x1)".to_string()))
        .collect();
    let refs: Vec<&str> = patterns.iter().map(String::as_str).collect();
    let r = numbered(&refs, &[Field::Msg], 2);
    assert_eq!(r.groups.len(), 1);
    assert!(matches!(
        r.groups[0].finder,
        Finder::Literals { set: Some(_), .. }
    ));
    // Every rule's literal (`user=` and a digit) occurs; only rule 12 (`x12`) and rule 20
    // (`x1`, with no word boundary after it) match.
    assert_eq!(
        r.groups[0].candidates("user=42 action=x12 done", Field::Msg, &mut None),
        (vec![12, 20], true)
    );
    assert_eq!(run(&r, "<13>user=42 action=x12 done").0[0].topic, "t12-x12");
    assert_eq!(run(&r, "<13>user=7 action=x1 done").0[0].topic, "t1-x1");
    // Nothing matches: no rule's regex runs by itself, and the line goes nowhere.
    assert_eq!(
        r.groups[0].candidates("user=42 action=y1 done", Field::Msg, &mut None),
        (vec![], true)
    );
    assert!(run(&r, "<13>user=42 action=y1 done").0.is_empty());
}

#[test]
fn rules_that_can_never_run_are_found() {
    let r = numbered(&["a", "b", "a", ".*", "c"], &[Field::Msg], usize::MAX);
    let never = r.never_run();
    let found: Vec<(&str, &str)> = never
        .iter()
        .map(|(rule, why)| (rule.origin.as_str(), why.as_str()))
        .collect();
    assert_eq!(
        found,
        [
            (
                "test:2",
                "rule can never run: the rule at test:0 matches the same and ends processing"
            ),
            (
                "test:4",
                "rule can never run: the rule at test:3 before it matches every message and ends processing"
            ),
        ]
    );
    // Anchored, bounded, or on a field a message may lack: not everything.
    for pattern in ["^$", "\\b", "x+", "(?m)^"] {
        let r = numbered(&[pattern, "after"], &[Field::Msg], usize::MAX);
        assert!(r.never_run().is_empty(), "{pattern}");
    }
    let r = numbered(&[".*", "after"], &[Field::Hostname], usize::MAX);
    assert!(r.never_run().is_empty(), "hostname may be absent");
    for pattern in ["", "(?s).*", "a*"] {
        let r = numbered(&[pattern, "after"], &[Field::Msg], usize::MAX);
        assert_eq!(r.never_run().len(), 1, "{pattern}");
    }
}

fn run(r: &Rules, line: &str) -> (Vec<Routed>, Outcome) {
    let msg = syslog::parse(line);
    let (routed, outcome) = r.apply(
        &msg,
        &Origin {
            peer_addr: Some("127.0.0.1:5000".into()),
            tls_client_cn: Some("tenant-a".into()),
            tls_client_san: None,
            clock: None,
            zone: None,
            listener: None,
        },
        None,
    );
    (routed.into_iter().collect(), outcome)
}

#[test]
fn field_chains_find_what_jmespath_finds() {
    let docs = [
        r#"{"meta":{"topic":"audit","n":3,"f":1.5,"b":true,"z":null,"o":{"k":[1,"two"]},"a":[{"x":1}]}}"#,
        r#"{"meta":"flat"}"#,
        r#"[{"meta":1}]"#,
        "{}",
    ];
    for src in [
        "meta",
        "meta.topic",
        "meta.n",
        "meta.f",
        "meta.b",
        "meta.z",
        "meta.o",
        "meta.o.k",
        "meta.a",
        "meta.missing.deeper",
        "\"meta\".topic",
    ] {
        let fast = Query::new(jmespath::compile(src).unwrap());
        assert!(fast.fields.is_some(), "{src} is a chain of fields");
        let slow = Query {
            expr: jmespath::compile(src).unwrap(),
            fields: None,
        };
        for doc in docs {
            let v: Value = serde_json::from_str(doc).unwrap();
            assert_eq!(fast.find(&v), slow.find(&v), "{src} on {doc}");
        }
    }
    for src in ["meta.a[0].x", "meta.*", "length(meta)", "@"] {
        assert!(
            Query::new(jmespath::compile(src).unwrap()).fields.is_none(),
            "{src}"
        );
    }
}

fn re(s: &str) -> Matcher {
    Matcher::Regex(Pattern::new(s).unwrap())
}

fn fwd(t: &mut Templates, topic: &str) -> Action {
    Action::Forward {
        topic: t.compile(topic).unwrap(),
        key: None,
        headers: Vec::new(),
        format: RecordFormat::Raw,
    }
}

#[test]
fn replace_with_captures_then_forward() {
    let mut t = Templates::new();
    let actions = vec![
        Action::Replace(
            t.compile("{{name}} said hello to {{hostname}} & {{peer_addr}}")
                .unwrap(),
        ),
        Action::Forward {
            topic: t.compile("hello-{{appname}}").unwrap(),
            key: Some(t.compile("{{name}}").unwrap()),
            headers: vec![
                ("host", t.compile("{{hostname}}").unwrap()),
                ("tenant", t.compile("{{tls_client_cn}}").unwrap()),
            ],
            format: RecordFormat::Raw,
        },
    ];
    let r = rules(
        vec![(Field::Msg, re(r"^hello\s+(?P<name>\w+)"), actions)],
        t,
    );
    let (out, outcome) = run(&r, "<13>Oct 11 22:14:15 web1 app[1]: hello bob");
    assert!(outcome.forwarded);
    assert_eq!(
        out,
        vec![Routed {
            topic: "hello-app".into(),
            key: Some("bob".into()),
            format: RecordFormat::Raw,
            body: Some("bob said hello to web1 & 127.0.0.1:5000".into()),
            headers: vec![
                ("host".into(), "web1".into()),
                ("tenant".into(), "tenant-a".into())
            ],
        }]
    );
}

#[test]
fn first_forward_wins_and_unmatched_is_unrouted() {
    let mut t = Templates::new();
    let a = vec![fwd(&mut t, "first")];
    let b = vec![fwd(&mut t, "second")];
    let r = rules(vec![(Field::Msg, re("x"), a), (Field::Msg, re(".*"), b)], t);
    assert_eq!(run(&r, "<13>x").0[0].topic.as_ref(), "first");
    assert_eq!(run(&r, "<13>y").0[0].topic.as_ref(), "second");
    let mut t = Templates::new();
    let only = vec![fwd(&mut t, "only")];
    let r = rules(vec![(Field::Msg, re("^never$"), only)], t);
    let (out, outcome) = run(&r, "<13>something");
    assert!(out.is_empty());
    assert!(!outcome.forwarded);
}

#[test]
fn stop_ends_processing() {
    let mut t = Templates::new();
    let b = vec![fwd(&mut t, "later")];
    let r = rules(
        vec![
            (Field::Msg, re("drop"), vec![Action::Stop]),
            (Field::Msg, re(".*"), b),
        ],
        t,
    );
    assert!(run(&r, "<13>drop me").0.is_empty());
    assert_eq!(run(&r, "<13>keep me").0.len(), 1);
}

#[test]
fn jmespath_merge_escapes_and_routes_by_value() {
    let mut t = Templates::new();
    let merge = MergeValue::Object(vec![(
        "meta".into(),
        MergeValue::Object(vec![
            (
                "host".into(),
                MergeValue::Template(t.compile("{{hostname}}").unwrap()),
            ),
            (
                "raw".into(),
                MergeValue::Template(t.compile("{{msg}}").unwrap()),
            ),
            ("n".into(), MergeValue::Json(Value::from(3))),
        ]),
    )]);
    let actions = vec![Action::Merge(merge), fwd(&mut t, "{{value}}")];
    let expr = jmespath::compile("meta.topic").unwrap();
    let r = rules(
        vec![(Field::Msg, Matcher::JmesPath(Query::new(expr)), actions)],
        t,
    );
    let line = r#"<13>1 - h"q - - - - {"meta":{"topic":"audit","keep":1},"x":"a\"b"}"#;
    let (out, outcome) = run(&r, line);
    assert_eq!(outcome.merge_errors, 0);
    assert_eq!(out[0].topic.as_ref(), "audit");
    let v: Value = serde_json::from_str(out[0].body.as_deref().unwrap()).unwrap();
    assert_eq!(v["meta"]["keep"], 1);
    assert_eq!(v["meta"]["topic"], "audit");
    assert_eq!(v["meta"]["host"], "h\"q");
    assert_eq!(v["meta"]["n"], 3);
    assert_eq!(v["x"], "a\"b");
    // The raw body, quotes and all, is a JSON string inside valid JSON.
    assert!(v["meta"]["raw"].as_str().unwrap().starts_with("{\"meta\""));
    // Not JSON: the rule does not match at all.
    assert!(run(&r, "<13>not json").0.is_empty());
}

#[test]
fn merge_into_non_json_is_counted_and_stops_later_rules() {
    let mut t = Templates::new();
    let a = vec![
        Action::Merge(MergeValue::Object(vec![(
            "a".into(),
            MergeValue::Json(Value::from(1)),
        )])),
        fwd(&mut t, "same-rule"),
    ];
    let r = rules(vec![(Field::Msg, re(".*"), a)], t);
    let (out, outcome) = run(&r, "<13>plain text");
    assert_eq!(outcome.merge_errors, 1);
    // hotdog 0.5 still ran the rule's forward with the unchanged body: the message's own.
    assert_eq!(out[0].body, None);
}

#[test]
fn illegal_rendered_topic_goes_to_default() {
    let mut t = Templates::new();
    let a = vec![fwd(&mut t, "logs-{{hostname}}")];
    let r = rules(vec![(Field::Msg, re(".*"), a)], t);
    let (out, outcome) = run(&r, "<13>Oct 11 22:14:15 bad/host app: x");
    assert_eq!(out[0].topic.as_ref(), "default");
    assert_eq!(outcome.invalid_topics, 1);
    let (out, _) = run(&r, "<13>Oct 11 22:14:15 good.host app: x");
    assert_eq!(out[0].topic.as_ref(), "logs-good.host");
}

#[test]
fn fields_other_than_msg() {
    let mut t = Templates::new();
    let a = vec![fwd(&mut t, "errors")];
    let b = vec![fwd(&mut t, "web")];
    let r = rules(
        vec![
            (Field::Severity, re("^(err|crit)$"), a),
            (Field::Hostname, re("^web"), b),
        ],
        t,
    );
    assert_eq!(
        run(&r, "<11>Oct 11 22:14:15 db1 x: y").0[0].topic.as_ref(),
        "errors"
    );
    assert_eq!(
        run(&r, "<14>Oct 11 22:14:15 web2 x: y").0[0].topic.as_ref(),
        "web"
    );
    // No hostname: the rule is skipped, not matched against "".
    assert!(run(&r, "<14>no header").0.is_empty());
}

#[test]
fn legal_topics() {
    assert!(is_legal_topic("logs.app_1-x"));
    for bad in ["", ".", "..", "a b", "a/b", &"x".repeat(250)] {
        assert!(!is_legal_topic(bad), "{bad}");
    }
}

#[test]
fn a_rule_is_labelled_by_its_name_or_else_its_index_as_written() {
    let mut list = numbered(&["a", "b", "c"], &[Field::Msg], usize::MAX);
    list.rules[1].name = Some("named".into());
    for i in 0..3 {
        let label = list.label(i);
        assert!(list.is_labelled(i, &label), "rule {i} is `{label}`");
    }
    assert!(list.is_labelled(0, "0"));
    assert!(list.is_labelled(2, "2"));
    assert!(!list.is_labelled(1, "1"), "a named rule is not its index");
    for other in ["00", "02", "+2", " 2", "2 ", "3", "", "named"] {
        assert!(!list.is_labelled(2, other), "`{other}` is not rule 2");
    }
    assert!(!list.is_labelled(3, "3"), "there is no rule 3");
}
