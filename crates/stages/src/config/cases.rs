//! Decoding a rule test file (`hotdog test TESTS.yml`), with every error located as for the
//! configuration:
//!
//! ```yaml
//! clock: '2024-05-01T12:00:00Z'   # optional: `{{iso8601}}` in every case
//! tests:
//!   - name: nginx lines go to the web topic
//!     input: '<13>Oct 11 22:14:15 web1 nginx: GET /'
//!     peer_addr: '10.0.0.1:5000'   # optional connection facts
//!     records:
//!       - topic: web
//!         key: web1
//!         payload_json: '{"path": "/"}'
//!   - name: health checks are dropped
//!     input: '<13>Oct 11 22:14:15 lb1 haproxy: health'
//!     unrouted: true
//! ```

use std::collections::BTreeMap;
use std::time::SystemTime;

use marked_yaml::Node;

use super::yaml::{every, list, scalar, Cx, Map};
use crate::core::Origin;

/// A rule test file.
#[derive(Debug)]
pub struct TestFile {
    pub cases: Vec<Case>,
}

/// One test case.
#[derive(Debug)]
pub struct Case {
    pub name: String,
    /// Where it is written (`file:line:column`).
    pub at: String,
    /// The bytes a connection would read; they are cut into frames as a connection cuts them.
    pub input: Vec<u8>,
    /// The connection facts, and the clock.
    pub origin: Origin,
    pub expect: Expect,
}

/// What a case expects.
#[derive(Debug)]
pub enum Expect {
    /// No record: no rule forwards the input.
    Unrouted,
    /// These records, in this order.
    Records(Vec<Expected>),
}

/// One expected record; what is not given is not compared.
#[derive(Debug, Default)]
pub struct Expected {
    pub topic: String,
    pub key: Option<String>,
    pub payload: Option<Payload>,
    pub headers: Option<BTreeMap<String, String>>,
}

#[derive(Debug)]
pub enum Payload {
    /// Compared as text, exactly.
    Text(String),
    /// Compared as JSON: key order and spacing do not matter.
    Json(serde_json::Value),
}

pub(super) fn decode(cx: &mut Cx<'_>, root: &Node) -> Option<TestFile> {
    let mut top = Map::new(cx, root, "the test file")?;
    let clock = top.get("clock").and_then(|n| decode_clock(cx, n, "clock"));
    let cases = match top.get("tests") {
        Some(n) => list(cx, n, "tests").and_then(|items| {
            every(
                items
                    .iter()
                    .enumerate()
                    .map(|(i, item)| decode_case(cx, item, &format!("tests[{i}]"), clock)),
            )
        }),
        None => {
            cx.error(root, "`tests` is required: a list of test cases");
            None
        }
    };
    top.finish(cx);
    Some(TestFile { cases: cases? })
}

fn decode_clock(cx: &mut Cx<'_>, node: &Node, what: &str) -> Option<SystemTime> {
    let text = scalar(cx, node, what)?;
    match humantime::parse_rfc3339_weak(&text) {
        Ok(t) => Some(t),
        Err(e) => {
            cx.error(
                node,
                format!("expected a UTC time like `2024-05-01T12:00:00Z` for `{what}`: {e}"),
            );
            None
        }
    }
}

fn decode_case(
    cx: &mut Cx<'_>,
    node: &Node,
    what: &str,
    clock: Option<SystemTime>,
) -> Option<Case> {
    let mut m = Map::new(cx, node, what)?;
    let name = m.required_string(cx, "name");
    let input = decode_input(cx, &mut m, node, what);
    // `None` when the case's own clock is not valid (reported).
    let clock = match m.get("clock") {
        Some(n) => decode_clock(cx, n, &m.path("clock")).map(Some),
        None => Some(clock),
    };
    let peer_addr = m.string(cx, "peer_addr");
    let tls_client_cn = m.string(cx, "tls_client_cn");
    let tls_client_san = m.string(cx, "tls_client_san");
    let expect = decode_expect(cx, &mut m, node, what);
    let (line, column) = m.key_position("name");
    m.finish(cx);
    Some(Case {
        name: name?,
        at: format!("{}:{line}:{column}", cx.file),
        input: input?,
        origin: Origin {
            peer_addr,
            tls_client_cn,
            tls_client_san,
            clock: clock?,
            zone: None,
            listener: None,
        },
        expect: expect?,
    })
}

/// `input` (one line), `raw` (bytes as written, framed as they come: several frames, octet
/// counting) or `raw_hex` (bytes that need not be UTF-8): exactly one.
fn decode_input(cx: &mut Cx<'_>, m: &mut Map<'_>, node: &Node, what: &str) -> Option<Vec<u8>> {
    let given: Vec<(&str, &Node)> = ["input", "raw", "raw_hex"]
        .into_iter()
        .filter_map(|k| m.get(k).map(|n| (k, n)))
        .collect();
    let [(key, value)] = given[..] else {
        cx.error(
            given.get(1).map_or(node, |g| g.1),
            format!("`{what}` needs exactly one of `input`, `raw` or `raw_hex`"),
        );
        return None;
    };
    let text = scalar(cx, value, &m.path(key))?;
    match key {
        "input" => {
            if text.contains('\n') {
                cx.error(
                    value,
                    format!(
                        "`{}` is one line; use `raw` for several frames",
                        m.path(key)
                    ),
                );
                return None;
            }
            Some(format!("{text}\n").into_bytes())
        }
        "raw" => Some(text.into_bytes()),
        _ => match hex(&text) {
            Some(bytes) => Some(bytes),
            None => {
                cx.error(
                    value,
                    format!("expected pairs of hex digits for `{}`", m.path(key)),
                );
                None
            }
        },
    }
}

/// Hex digits, in pairs, spaces allowed between them.
fn hex(text: &str) -> Option<Vec<u8>> {
    let digits: Vec<u8> = text.bytes().filter(|b| !b.is_ascii_whitespace()).collect();
    if digits.len() % 2 != 0 {
        return None;
    }
    digits
        .chunks(2)
        .map(|pair| u8::from_str_radix(std::str::from_utf8(pair).ok()?, 16).ok())
        .collect()
}

/// `records` (a list) or `unrouted: true`: exactly one.
fn decode_expect(cx: &mut Cx<'_>, m: &mut Map<'_>, node: &Node, what: &str) -> Option<Expect> {
    match (m.get("records"), m.get("unrouted")) {
        (Some(records), None) => {
            let items = list(cx, records, &m.path("records"))?;
            if items.is_empty() {
                cx.error(
                    records,
                    format!(
                        "`{}` is empty; write `unrouted: true` to expect no record",
                        m.path("records")
                    ),
                );
                return None;
            }
            every(
                items.iter().enumerate().map(|(i, item)| {
                    decode_record(cx, item, &format!("{}[{i}]", m.path("records")))
                }),
            )
            .map(Expect::Records)
        }
        (None, Some(u)) => match scalar(cx, u, &m.path("unrouted"))?.as_str() {
            "true" | "yes" => Some(Expect::Unrouted),
            other => {
                cx.error(
                    u,
                    format!(
                        "`{}` can only be true (to expect records, list them under `records`), found `{other}`",
                        m.path("unrouted")
                    ),
                );
                None
            }
        },
        (Some(_), Some(u)) => {
            cx.error(
                u,
                format!("`{what}` has both `records` and `unrouted`; give one"),
            );
            None
        }
        (None, None) => {
            cx.error(
                node,
                format!("`{what}` needs what it expects: `records` (a list) or `unrouted: true`"),
            );
            None
        }
    }
}

fn decode_record(cx: &mut Cx<'_>, node: &Node, what: &str) -> Option<Expected> {
    let mut m = Map::new(cx, node, what)?;
    let topic = m.required_string(cx, "topic");
    let key = m.string(cx, "key");
    let payload = match (m.get("payload"), m.get("payload_json")) {
        (Some(p), None) => scalar(cx, p, &m.path("payload")).map(|t| Some(Payload::Text(t))),
        (None, Some(p)) => {
            let text = scalar(cx, p, &m.path("payload_json"));
            text.and_then(|t| match serde_json::from_str(&t) {
                Ok(v) => Some(Some(Payload::Json(v))),
                Err(e) => {
                    cx.error(p, format!("`{}` is not JSON: {e}", m.path("payload_json")));
                    None
                }
            })
        }
        (Some(_), Some(p)) => {
            cx.error(
                p,
                format!("`{what}` has both `payload` and `payload_json`; give one"),
            );
            None
        }
        (None, None) => Some(None),
    };
    let headers = match m.get("headers") {
        None => Some(None),
        Some(h) => decode_headers(cx, h, &m.path("headers")).map(Some),
    };
    m.finish(cx);
    Some(Expected {
        topic: topic?,
        key,
        payload: payload?,
        headers: headers?,
    })
}

fn decode_headers(cx: &mut Cx<'_>, node: &Node, what: &str) -> Option<BTreeMap<String, String>> {
    let Some(map) = node.as_mapping() else {
        cx.error(
            node,
            format!("expected a mapping of header names to values for `{what}`"),
        );
        return None;
    };
    every(map.iter().map(|(k, v)| {
        let value = scalar(cx, v, &format!("{what}.{}", k.as_str()))?;
        Some((k.as_str().to_string(), value))
    }))
    .map(|pairs| pairs.into_iter().collect())
}
