//! Compiling `rules:`: matchers (regex, JMESPath), actions and their templates, each compiled
//! once, here.

use marked_yaml::Node;

use super::yaml::{every, is_null, kind, position, scalar, unknown_name, Cx, Map};
use crate::rules::{Action, Field, Matcher, MergeValue, Rule, Rules};
use crate::template::{Template, Templates};

pub(super) fn decode(cx: &mut Cx<'_>, node: &Node, default_topic: &str) -> Option<Rules> {
    let Some(seq) = node.as_sequence() else {
        cx.error(
            node,
            format!("expected a list of rules for `rules`, found {}", kind(node)),
        );
        return None;
    };
    let mut templates = Templates::new();
    let rules = every(
        seq.iter()
            .enumerate()
            .map(|(i, rule)| decode_rule(cx, rule, i, &mut templates)),
    )?;
    Some(Rules::new(rules, templates, default_topic))
}

fn decode_rule(
    cx: &mut Cx<'_>,
    node: &Node,
    index: usize,
    templates: &mut Templates,
) -> Option<Rule> {
    let what = format!("rules[{index}]");
    let mut m = Map::new(cx, node, what.clone())?;
    let matcher = decode_matcher(cx, &mut m, node, &what);
    let field = match m.get("field") {
        None => Some(Field::Msg),
        Some(f) => decode_field(cx, f, &m.path("field")),
    };
    let actions = match m.get("actions") {
        Some(a) => decode_actions(cx, a, &what, templates),
        None => {
            cx.error(node, format!("`{what}` needs `actions`"));
            None
        }
    };
    m.finish(cx);
    let (line, _) = position(node);
    Some(Rule {
        field: field?,
        matcher: matcher?,
        actions: actions?,
        origin: format!("{}:{line}", cx.file),
    })
}

/// The rule's `regex` or `jmespath`, compiled.
fn decode_matcher(cx: &mut Cx<'_>, m: &mut Map<'_>, node: &Node, what: &str) -> Option<Matcher> {
    match (m.get("regex"), m.get("jmespath")) {
        (Some(r), None) => {
            let src = scalar(cx, r, &m.path("regex"))?;
            match crate::rules::Pattern::new(&src) {
                Ok(re) => Some(Matcher::Regex(re)),
                Err(e) => {
                    cx.error(r, format!("invalid regex in `{}`: {e}", m.path("regex")));
                    None
                }
            }
        }
        (None, Some(j)) => {
            let src = scalar(cx, j, &m.path("jmespath"))?;
            match jmespath::compile(&src) {
                Ok(expr) => Some(Matcher::JmesPath(crate::rules::Query::new(expr))),
                Err(e) => {
                    cx.error(
                        j,
                        format!(
                            "invalid JMESPath expression in `{}`: {e}",
                            m.path("jmespath")
                        ),
                    );
                    None
                }
            }
        }
        (Some(_), Some(j)) => {
            cx.error(
                j,
                format!("`{what}` has both `regex` and `jmespath`; give one"),
            );
            None
        }
        (None, None) => {
            cx.error(
                node,
                format!("`{what}` needs a `regex` or a `jmespath` to match with"),
            );
            None
        }
    }
}

/// The rule's `field`: which part of the message it matches.
fn decode_field(cx: &mut Cx<'_>, node: &Node, what: &str) -> Option<Field> {
    let name = scalar(cx, node, what)?;
    let field = Field::from_name(&name);
    if field.is_none() {
        cx.error(node, unknown_name("field", &name, &Field::NAMES));
    }
    field
}

const ACTION_TYPES: [&str; 4] = ["forward", "merge", "replace", "stop"];

/// Every key some action type takes: counted as known when the `type` itself is not valid, so
/// that only keys no action takes are reported beside it.
const ACTION_KEYS: [&str; 5] = ["topic", "key", "headers", "json", "template"];

fn decode_actions(
    cx: &mut Cx<'_>,
    node: &Node,
    rule: &str,
    templates: &mut Templates,
) -> Option<Vec<Action>> {
    let Some(seq) = node.as_sequence() else {
        cx.error(
            node,
            format!("expected a list for `{rule}.actions`, found {}", kind(node)),
        );
        return None;
    };
    every(
        seq.iter()
            .enumerate()
            .map(|(i, a)| decode_action(cx, a, &format!("{rule}.actions[{i}]"), templates)),
    )
}

fn decode_action(
    cx: &mut Cx<'_>,
    node: &Node,
    what: &str,
    templates: &mut Templates,
) -> Option<Action> {
    let mut m = Map::new(cx, node, what)?;
    let type_name = match m.get("type") {
        Some(t) => scalar(cx, t, &m.path("type")).map(|name| (t, name)),
        None => {
            cx.error(
                node,
                format!(
                    "`{what}` needs a `type`: one of {}",
                    ACTION_TYPES.join(", ")
                ),
            );
            None
        }
    };
    let action = match type_name.as_ref().map(|(t, name)| (*t, name.as_str())) {
        Some((_, "forward")) => decode_forward(cx, &mut m, node, what, templates),
        Some((_, "merge")) => decode_merge(cx, &mut m, node, what, templates),
        Some((_, "replace")) => match m.get("template") {
            Some(t) => template(cx, t, &m.path("template"), templates).map(Action::Replace),
            None => {
                cx.error(node, format!("`{what}` (replace) needs a `template`"));
                None
            }
        },
        Some((_, "stop")) => Some(Action::Stop),
        Some((t, other)) => {
            cx.error(t, unknown_name("action type", other, &ACTION_TYPES));
            m.allow(&ACTION_KEYS);
            None
        }
        None => {
            m.allow(&ACTION_KEYS);
            None
        }
    };
    m.finish(cx);
    action
}

/// `type: forward`: `topic`, and optionally `key` and `headers`.
fn decode_forward(
    cx: &mut Cx<'_>,
    m: &mut Map<'_>,
    node: &Node,
    what: &str,
    templates: &mut Templates,
) -> Option<Action> {
    let topic = match m.get("topic") {
        Some(t) => {
            let topic = template(cx, t, &m.path("topic"), templates);
            if let Some(lit) = topic.as_ref().and_then(Template::literal) {
                if !crate::rules::is_legal_topic(lit) {
                    cx.error(
                        t,
                        format!("`{lit}` is not a legal Kafka topic name (1 to 249 of a-z A-Z 0-9 . _ -)"),
                    );
                }
            }
            topic
        }
        None => {
            cx.error(node, format!("`{what}` (forward) needs a `topic`"));
            None
        }
    };
    let key = match m.get("key") {
        Some(k) => template(cx, k, &m.path("key"), templates).map(Some),
        None => Some(None),
    };
    let headers = match m.get("headers") {
        Some(h) => decode_headers(cx, h, &m.path("headers"), templates),
        None => Some(Vec::new()),
    };
    Some(Action::Forward {
        topic: topic?,
        key: key?,
        headers: headers?,
    })
}

/// `headers:` of a forward action: header names to templates of their values.
fn decode_headers(
    cx: &mut Cx<'_>,
    node: &Node,
    what: &str,
    templates: &mut Templates,
) -> Option<Vec<(&'static str, Template)>> {
    let Some(map) = node.as_mapping() else {
        cx.error(
            node,
            format!(
                "expected a mapping of header names to templates for `{what}`, found {}",
                kind(node)
            ),
        );
        return None;
    };
    every(map.iter().map(|(name, value)| {
        let what = format!("{what}.{}", name.as_str());
        let t = template(cx, value, &what, templates)?;
        Some((crate::template::forever(name), t))
    }))
}

/// `type: merge`: a `json` mapping.
fn decode_merge(
    cx: &mut Cx<'_>,
    m: &mut Map<'_>,
    node: &Node,
    what: &str,
    templates: &mut Templates,
) -> Option<Action> {
    match m.get("json") {
        Some(j) if j.as_mapping().is_some() => {
            merge_value(cx, j, &m.path("json"), templates).map(Action::Merge)
        }
        Some(j) => {
            cx.error(
                j,
                format!(
                    "expected a mapping for `{}`, found {}",
                    m.path("json"),
                    kind(j)
                ),
            );
            None
        }
        None => {
            cx.error(node, format!("`{what}` (merge) needs a `json` mapping"));
            None
        }
    }
}

fn template(
    cx: &mut Cx<'_>,
    node: &Node,
    what: &str,
    templates: &mut Templates,
) -> Option<Template> {
    let src = scalar(cx, node, what)?;
    match templates.compile(&src) {
        Ok(t) => Some(t),
        Err(e) => {
            cx.error(node, format!("invalid template in `{what}`: {e}"));
            None
        }
    }
}

fn merge_value(
    cx: &mut Cx<'_>,
    node: &Node,
    what: &str,
    templates: &mut Templates,
) -> Option<MergeValue> {
    match node {
        Node::Mapping(map) => every(map.iter().map(|(k, v)| {
            let v = merge_value(cx, v, &format!("{what}.{}", k.as_str()), templates)?;
            Some((k.as_str().to_string(), v))
        }))
        .map(MergeValue::Object),
        Node::Sequence(items) => every(
            items
                .iter()
                .enumerate()
                .map(|(i, v)| merge_value(cx, v, &format!("{what}[{i}]"), templates)),
        )
        .map(MergeValue::Array),
        Node::Scalar(s) => {
            if s.may_coerce() {
                let text = s.as_str();
                if is_null(node) {
                    return Some(MergeValue::Json(serde_json::Value::Null));
                }
                if let Some(b) = s.as_bool() {
                    return Some(MergeValue::Json(b.into()));
                }
                if let Ok(n) = text.parse::<i64>() {
                    return Some(MergeValue::Json(n.into()));
                }
                if let Some(n) = text
                    .parse::<f64>()
                    .ok()
                    .and_then(serde_json::Number::from_f64)
                    .filter(|_| text.bytes().any(|b| b.is_ascii_digit()))
                {
                    return Some(MergeValue::Json(n.into()));
                }
            }
            template(cx, node, what, templates).map(MergeValue::Template)
        }
    }
}
