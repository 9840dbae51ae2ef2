//! `hotdog test TESTS.yml...`: rule test cases run against the rules, without Kafka. Each case's
//! input is cut into frames by the same code as a connection ([`replay::each_frame`]), every
//! frame goes through the rules with the case's connection facts and clock, and the records
//! made are compared with the ones expected. A failure shows the input, the rules that matched,
//! and a diff of expected and got. [`junit`] writes the results as a JUnit XML report.

use std::collections::BTreeSet;
use std::io::Write;

use serde_json::{json, Value};

use crate::offline::replay::{self, Reading};
use hotdog_stages::config::cases::{Case, Expect, Expected, Payload, TestFile};
use hotdog_stages::core::Record;
use hotdog_stages::encode;
use hotdog_stages::parse::syslog;
use hotdog_stages::route::Rules;

/// How one case went.
#[derive(Debug)]
pub struct Outcome {
    pub file: String,
    pub name: String,
    pub at: String,
    /// Why it failed (input, matched rules, diff); `None` when it passed.
    pub failure: Option<String>,
}

/// Every case of every file.
#[derive(Debug, Default)]
pub struct Results {
    pub outcomes: Vec<Outcome>,
    /// The rules (`file:line:column`, after the name of a named one) that no case's input
    /// matched.
    pub uncovered: Vec<String>,
}

impl Results {
    pub fn failed(&self) -> usize {
        self.outcomes.iter().filter(|o| o.failure.is_some()).count()
    }
}

/// Runs every case of `files` (name, cases) against `rules`, printing each result to `out`.
pub fn run(
    rules: &Rules,
    files: &[(String, TestFile)],
    reading: &Reading,
    out: &mut impl Write,
) -> std::io::Result<Results> {
    let mut results = Results::default();
    let mut covered = BTreeSet::new();
    for (file, tests) in files {
        for case in &tests.cases {
            let (records, matched) = apply(rules, case, reading);
            covered.extend(matched.iter().copied());
            let failure = compare(&case.expect, &records).map(|diff| {
                let mut text = format!(
                    "  input: {}\n",
                    String::from_utf8_lossy(&case.input).trim_end()
                );
                if matched.is_empty() {
                    text.push_str("  matched no rule\n");
                }
                for &r in &matched {
                    text.push_str(&format!(
                        "  matched rule {r} ({})\n",
                        rules.rules()[r].origin
                    ));
                }
                text.push_str("  --- expected\n  +++ got\n");
                text.push_str(&diff);
                text
            });
            match &failure {
                None => writeln!(out, "ok   {} ({})", case.name, case.at)?,
                Some(why) => write!(out, "FAIL {} ({})\n{why}", case.name, case.at)?,
            }
            results.outcomes.push(Outcome {
                file: file.clone(),
                name: case.name.clone(),
                at: case.at.clone(),
                failure,
            });
        }
    }
    results.uncovered = (0..rules.rules().len())
        .filter(|r| !covered.contains(r))
        .map(|r| {
            let rule = &rules.rules()[r];
            match &rule.name {
                Some(name) => format!("{name} ({})", rule.origin),
                None => rule.origin.clone(),
            }
        })
        .collect();
    let failed = results.failed();
    writeln!(
        out,
        "\n{} passed, {failed} failed",
        results.outcomes.len() - failed
    )?;
    if !results.uncovered.is_empty() {
        writeln!(
            out,
            "rules no case matched: {}",
            results.uncovered.join(", ")
        )?;
    }
    Ok(results)
}

/// The records the case's input makes, and the rules that matched (in order, without repeats).
fn apply(rules: &Rules, case: &Case, reading: &Reading) -> (Vec<Record>, Vec<usize>) {
    let mut records = Vec::new();
    let mut matched = Vec::new();
    let mut origin = case.origin.clone();
    origin.zone = origin.zone.or_else(|| reading.zone.clone());
    // Reading from memory cannot fail, and the callback does not.
    let _ = replay::each_frame(&case.input[..], reading, |data, _| {
        let text = String::from_utf8_lossy(data);
        let msg = syslog::parse_frame(data, &text);
        let (routed, _) = rules.apply(&msg, &origin, Some(&mut matched));
        records.extend(routed.map(|r| encode::record(r, &msg, &origin, Default::default())));
        Ok(())
    });
    let mut seen = BTreeSet::new();
    matched.retain(|r| seen.insert(*r));
    (records, matched)
}

/// `None` when `got` is what `expect` says; otherwise a diff, expected against got, of the
/// records as JSON (fields the case does not give are shown as got, so only real differences
/// show).
fn compare(expect: &Expect, got: &[Record]) -> Option<String> {
    let wanted: &[Expected] = match expect {
        Expect::Unrouted => &[],
        Expect::Records(r) => r,
    };
    let got_view: Vec<Value> = got
        .iter()
        .enumerate()
        .map(|(i, r)| view(r, wanted.get(i)))
        .collect();
    let wanted_view: Vec<Value> = wanted
        .iter()
        .enumerate()
        .map(|(i, e)| expected_view(e, got.get(i)))
        .collect();
    if got_view == wanted_view {
        return None;
    }
    let pretty = |v: &Vec<Value>| serde_json::to_string_pretty(v).unwrap_or_default() + "\n";
    let (a, b) = (pretty(&wanted_view), pretty(&got_view));
    let diff = similar::TextDiff::from_lines(&a, &b);
    let mut text = String::new();
    for change in diff.iter_all_changes() {
        let sign = match change.tag() {
            similar::ChangeTag::Delete => "-",
            similar::ChangeTag::Insert => "+",
            similar::ChangeTag::Equal => " ",
        };
        text.push_str(&format!("  {sign} {change}"));
    }
    Some(text)
}

/// A record as JSON; its payload as JSON when the expected one is compared as JSON and it is.
fn view(r: &Record, expected: Option<&Expected>) -> Value {
    let payload = match expected.and_then(|e| e.payload.as_ref()) {
        Some(Payload::Json(_)) => serde_json::from_slice(&r.payload)
            .unwrap_or_else(|_| Value::String(r.payload_text().into_owned())),
        _ => Value::String(r.payload_text().into_owned()),
    };
    let headers: serde_json::Map<String, Value> = r
        .headers
        .iter()
        .map(|(k, v)| (k.to_string(), Value::String(v.clone())))
        .collect();
    json!({ "topic": &*r.topic, "key": r.key, "payload": payload, "headers": headers })
}

/// What is expected, as JSON, with what the case does not give taken from `got`.
fn expected_view(e: &Expected, got: Option<&Record>) -> Value {
    let mut v = match got {
        Some(r) => view(r, Some(e)),
        None => json!({ "topic": "", "key": null, "payload": "", "headers": {} }),
    };
    v["topic"] = Value::String(e.topic.clone());
    if let Some(k) = &e.key {
        v["key"] = Value::String(k.clone());
    }
    match &e.payload {
        Some(Payload::Text(t)) => v["payload"] = Value::String(t.clone()),
        Some(Payload::Json(j)) => v["payload"] = j.clone(),
        None => {}
    }
    if let Some(h) = &e.headers {
        v["headers"] = json!(h);
    }
    v
}

/// The results as a JUnit XML report: one `testsuite` per file, one `testcase` per case.
pub fn junit(results: &Results, out: impl Write) -> std::io::Result<()> {
    use quick_xml::events::{BytesDecl, BytesText, Event};
    let mut w = quick_xml::Writer::new_with_indent(out, b' ', 2);
    w.write_event(Event::Decl(BytesDecl::new("1.0", Some("UTF-8"), None)))?;
    let total = results.outcomes.len().to_string();
    let failed = results.failed().to_string();
    w.create_element("testsuites")
        .with_attributes([
            ("name", "hotdog rules"),
            ("tests", total.as_str()),
            ("failures", failed.as_str()),
        ])
        .write_inner_content(|w| {
            let mut files: Vec<&str> = results.outcomes.iter().map(|o| o.file.as_str()).collect();
            files.dedup();
            for file in files {
                let cases: Vec<&Outcome> =
                    results.outcomes.iter().filter(|o| o.file == file).collect();
                let tests = cases.len().to_string();
                let failures = cases
                    .iter()
                    .filter(|o| o.failure.is_some())
                    .count()
                    .to_string();
                w.create_element("testsuite")
                    .with_attributes([
                        ("name", file),
                        ("tests", tests.as_str()),
                        ("failures", failures.as_str()),
                    ])
                    .write_inner_content(|w| {
                        for case in &cases {
                            let element = w.create_element("testcase").with_attributes([
                                ("name", case.name.as_str()),
                                ("classname", file),
                                ("file", case.at.as_str()),
                            ]);
                            match &case.failure {
                                None => {
                                    element.write_empty()?;
                                }
                                Some(why) => {
                                    element.write_inner_content(|w| {
                                        w.create_element("failure")
                                            .with_attribute((
                                                "message",
                                                "the records differ from the expected ones",
                                            ))
                                            .write_text_content(BytesText::new(why))?;
                                        Ok(())
                                    })?;
                                }
                            }
                        }
                        Ok(())
                    })?;
            }
            Ok(())
        })?;
    w.into_inner().flush()
}
