//! Compiling `rules:`: matchers (regex, JMESPath), actions and their templates, each compiled
//! once, here.

use marked_yaml::Node;

use super::yaml::{
    every, fingerprint, is_null, kind, list, position, scalar, unknown_name, Cx, Map,
};
use crate::core::RecordFormat;
use crate::route::template::{Template, Templates};
use crate::route::{Action, Field, Matcher, MergeValue, Rule, Rules};

pub(super) fn decode(
    cx: &mut Cx<'_>,
    node: &Node,
    default_topic: &str,
    budget: usize,
) -> Option<Rules> {
    let mut c = Compiler {
        cx,
        templates: Templates::new(),
        memory: Memory {
            budget,
            used: 0,
            costs: Vec::new(),
        },
    };
    let rules = c.decode_rules(node);
    if c.memory.over() {
        let error = c.memory.error(true);
        c.cx.error(node, error);
        return None;
    }
    let rules = Rules::new(rules?, c.templates, default_topic);
    let used = rules.memory_usage();
    if used > budget {
        // The rules fit one by one; what finds them among many (their sets) did not.
        c.memory.used = used;
        let error = c.memory.error(false);
        c.cx.error(node, error);
        return None;
    }
    Some(rules)
}

/// What the compiled regexes hold, against `global.max_rules_memory`.
struct Memory {
    budget: usize,
    used: usize,
    /// Each regex's cost and where its rule is (`file:line`).
    costs: Vec<(usize, String)>,
}

impl Memory {
    /// Counts a compiled regex.
    fn take(&mut self, cost: usize, origin: String) {
        self.used += cost;
        self.costs.push((cost, origin));
    }

    /// The budget is passed: no more regexes are compiled (what would they cost?).
    fn over(&self) -> bool {
        self.used > self.budget
    }

    /// The error, once the budget is passed; `stopped`: compiling stopped there (else every
    /// regex was compiled, and what finds them among many passed it).
    fn error(&mut self, stopped: bool) -> String {
        self.costs.sort_by_key(|c| std::cmp::Reverse(c.0));
        let top: Vec<String> = self
            .costs
            .iter()
            .take(5)
            .map(|(cost, at)| format!("{at} ({})", mib(*cost)))
            .collect();
        let progress = if stopped {
            format!(
                "compiling stopped at {} after {} rules",
                mib(self.used),
                self.costs.len()
            )
        } else {
            format!(
                "compiled, with what finds them, they hold {}",
                mib(self.used)
            )
        };
        format!(
            "the rules need more memory than global.max_rules_memory allows ({}): {progress}; \
             the costliest: {}. A Unicode class (\\w, \\d, \\s) with a capture group costs \
             the most: an ASCII one ([a-z0-9_]+, or (?-u:\\w)) costs about a tenth; or raise \
             global.max_rules_memory",
            mib(self.budget),
            top.join(", ")
        )
    }
}

/// A rule's `name`: it labels the rule's counter in `/metrics` and `/stats`, so it is kept to
/// what both show as it is.
fn decode_name(cx: &mut Cx<'_>, node: &Node, what: &str) -> Option<String> {
    let name = scalar(cx, node, what)?;
    let legal = (1..=100).contains(&name.len())
        && name.starts_with(|c: char| c.is_ascii_alphabetic())
        && name
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'_' | b'-'));
    if !legal {
        cx.error(
            node,
            format!(
                "`{name}` is not a rule name: 1 to 100 of a-z A-Z 0-9 _ -, starting with a letter"
            ),
        );
        return None;
    }
    Some(name)
}

fn mib(bytes: usize) -> String {
    format!("{:.1} MiB", bytes as f64 / f64::from(1 << 20))
}

/// Compiles rules: the decoding context, the templates compiled so far (they share one
/// handlebars registry), and what the regexes cost.
struct Compiler<'c, 'f> {
    cx: &'c mut Cx<'f>,
    templates: Templates,
    memory: Memory,
}

const ACTION_TYPES: [&str; 4] = ["forward", "merge", "replace", "stop"];

/// Every key some action type takes: counted as known when the `type` itself is not valid, so
/// that only keys no action takes are reported beside it.
const ACTION_KEYS: [&str; 6] = ["topic", "key", "headers", "format", "json", "template"];

impl Compiler<'_, '_> {
    fn decode_rules(&mut self, node: &Node) -> Option<Vec<Rule>> {
        let seq = list(self.cx, node, "rules")?;
        let rules = every(
            seq.iter()
                .enumerate()
                .map(|(i, rule)| self.decode_rule(rule, i)),
        )?;
        // Each name counts one rule's matches: two rules cannot share one.
        let mut seen: std::collections::HashMap<&str, &str> = std::collections::HashMap::new();
        let mut unique = true;
        for (rule, node) in rules.iter().zip(seq.iter()) {
            let Some(name) = rule.name.as_deref() else {
                continue;
            };
            if let Some(first) = seen.insert(name, &rule.origin) {
                let at = match node {
                    Node::Mapping(m) => m.get("name").unwrap_or(node),
                    _ => node,
                };
                self.cx.error(
                    at,
                    format!("rule name `{name}` is already the name of the rule at {first}"),
                );
                unique = false;
            }
        }
        unique.then_some(rules)
    }

    fn decode_rule(&mut self, node: &Node, index: usize) -> Option<Rule> {
        let what = format!("rules[{index}]");
        let mut m = Map::new(self.cx, node, what.clone())?;
        let (line, _) = position(node);
        let origin = format!("{}:{line}", self.cx.file);
        let matcher = if self.memory.over() {
            // Past the budget: not compiled, the error says so once.
            m.get("regex");
            m.get("jmespath");
            None
        } else {
            decode_matcher(self.cx, &mut m, node, &what)
        };
        if let Some(Matcher::Regex(p)) = &matcher {
            self.memory.take(p.memory_usage(), origin.clone());
        }
        let name = match m.get("name") {
            None => Some(None),
            Some(n) => decode_name(self.cx, n, &m.path("name")).map(Some),
        };
        let field = match m.get("field") {
            None => Some(Field::Msg),
            Some(f) => decode_field(self.cx, f, &m.path("field")),
        };
        let actions = match m.get("actions") {
            Some(a) => self.decode_actions(a, &what),
            None => {
                self.cx.error(node, format!("`{what}` needs `actions`"));
                None
            }
        };
        m.finish(self.cx);
        Some(Rule {
            name: name?,
            field: field?,
            matcher: matcher?,
            actions: actions?,
            origin,
            fingerprint: fingerprint(node),
        })
    }

    fn decode_actions(&mut self, node: &Node, rule: &str) -> Option<Vec<Action>> {
        let seq = list(self.cx, node, &format!("{rule}.actions"))?;
        every(
            seq.iter()
                .enumerate()
                .map(|(i, a)| self.decode_action(a, &format!("{rule}.actions[{i}]"))),
        )
    }

    fn decode_action(&mut self, node: &Node, what: &str) -> Option<Action> {
        let mut m = Map::new(self.cx, node, what)?;
        let type_name = match m.get("type") {
            Some(t) => scalar(self.cx, t, &m.path("type")).map(|name| (t, name)),
            None => {
                self.cx.error(
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
            Some((_, "forward")) => self.decode_forward(&mut m, node, what),
            Some((_, "merge")) => self.decode_merge(&mut m, node, what),
            Some((_, "replace")) => match m.get("template") {
                Some(t) => self.template(t, &m.path("template")).map(Action::Replace),
                None => {
                    self.cx
                        .error(node, format!("`{what}` (replace) needs a `template`"));
                    None
                }
            },
            Some((_, "stop")) => Some(Action::Stop),
            Some((t, other)) => {
                self.cx
                    .error(t, unknown_name("action type", other, &ACTION_TYPES));
                m.allow(&ACTION_KEYS);
                None
            }
            None => {
                m.allow(&ACTION_KEYS);
                None
            }
        };
        m.finish(self.cx);
        action
    }

    /// `type: forward`: `topic`, and optionally `key` and `headers`.
    fn decode_forward(&mut self, m: &mut Map<'_>, node: &Node, what: &str) -> Option<Action> {
        let topic = match m.get("topic") {
            Some(t) => {
                let topic = self.template(t, &m.path("topic"));
                if let Some(lit) = topic.as_ref().and_then(Template::literal) {
                    if !crate::route::is_legal_topic(lit) {
                        self.cx.error(
                        t,
                        format!("`{lit}` is not a legal Kafka topic name (1 to 249 of a-z A-Z 0-9 . _ -)"),
                    );
                    }
                }
                topic
            }
            None => {
                self.cx
                    .error(node, format!("`{what}` (forward) needs a `topic`"));
                None
            }
        };
        let key = match m.get("key") {
            Some(k) => self.template(k, &m.path("key")).map(Some),
            None => Some(None),
        };
        let headers = match m.get("headers") {
            Some(h) => self.decode_headers(h, &m.path("headers")),
            None => Some(Vec::new()),
        };
        let format = match m.get("format") {
            None => Some(RecordFormat::Raw),
            Some(n) => {
                let name = scalar(self.cx, n, &m.path("format"));
                name.and_then(|name| {
                    let f = RecordFormat::from_name(&name);
                    if f.is_none() {
                        self.cx
                            .error(n, unknown_name("format", &name, &RecordFormat::NAMES));
                    }
                    f
                })
            }
        };
        Some(Action::Forward {
            topic: topic?,
            key: key?,
            headers: headers?,
            format: format?,
        })
    }

    /// `headers:` of a forward action: header names to templates of their values.
    fn decode_headers(&mut self, node: &Node, what: &str) -> Option<Vec<(&'static str, Template)>> {
        let Some(map) = node.as_mapping() else {
            self.cx.error(
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
            let t = self.template(value, &what)?;
            Some((crate::route::template::forever(name), t))
        }))
    }

    /// `type: merge`: a `json` mapping.
    fn decode_merge(&mut self, m: &mut Map<'_>, node: &Node, what: &str) -> Option<Action> {
        match m.get("json") {
            Some(j) if j.as_mapping().is_some() => {
                self.merge_value(j, &m.path("json")).map(Action::Merge)
            }
            Some(j) => {
                self.cx.error(
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
                self.cx
                    .error(node, format!("`{what}` (merge) needs a `json` mapping"));
                None
            }
        }
    }

    fn template(&mut self, node: &Node, what: &str) -> Option<Template> {
        let src = scalar(self.cx, node, what)?;
        if block_depth(&src) > MAX_DEPTH {
            self.cx.error(
                node,
                format!("invalid template in `{what}`: blocks nested deeper than {MAX_DEPTH}"),
            );
            return None;
        }
        match self.templates.compile(&src) {
            Ok(t) => Some(t),
            Err(e) => {
                self.cx
                    .error(node, format!("invalid template in `{what}`: {e}"));
                None
            }
        }
    }

    fn merge_value(&mut self, node: &Node, what: &str) -> Option<MergeValue> {
        match node {
            Node::Mapping(map) => every(map.iter().map(|(k, v)| {
                let v = self.merge_value(v, &format!("{what}.{}", k.as_str()))?;
                Some((k.as_str().to_string(), v))
            }))
            .map(MergeValue::Object),
            Node::Sequence(items) => every(
                items
                    .iter()
                    .enumerate()
                    .map(|(i, v)| self.merge_value(v, &format!("{what}[{i}]"))),
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
                self.template(node, what).map(MergeValue::Template)
            }
        }
    }
}

/// The rule's `regex` or `jmespath`, compiled.
fn decode_matcher(cx: &mut Cx<'_>, m: &mut Map<'_>, node: &Node, what: &str) -> Option<Matcher> {
    match (m.get("regex"), m.get("jmespath")) {
        (Some(r), None) => {
            let src = scalar(cx, r, &m.path("regex"))?;
            match crate::route::Pattern::new(&src) {
                Ok(re) => Some(Matcher::Regex(re)),
                Err(e) => {
                    cx.error(r, format!("invalid regex in `{}`: {e}", m.path("regex")));
                    None
                }
            }
        }
        (None, Some(j)) => {
            let src = scalar(cx, j, &m.path("jmespath"))?;
            if let Err(e) = check_jmespath(&src) {
                cx.error(
                    j,
                    format!(
                        "invalid JMESPath expression in `{}`: {e}",
                        m.path("jmespath")
                    ),
                );
                return None;
            }
            // The jmespath crate panics on some input it should refuse: contained, as an error.
            let compiled =
                std::panic::catch_unwind(|| jmespath::compile(&src)).unwrap_or_else(|_| {
                    Err(jmespath::JmespathError::new(
                        &src,
                        0,
                        jmespath::ErrorReason::Parse("not a valid expression".into()),
                    ))
                });
            match compiled {
                Ok(expr) => Some(Matcher::JmesPath(crate::route::Query::new(expr))),
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
        cx.error(
            node,
            format!(
                "{}, or `sd.SD-ID.PARAM` (a structured data parameter)",
                unknown_name("field", &name, &Field::NAMES)
            ),
        );
    }
    field
}

/// How deep expressions and template blocks may nest: deeper ones would take the compilers
/// seconds or their whole stack.
const MAX_DEPTH: usize = 64;

/// What the jmespath crate would panic or recurse without bound on: numbers too large for it,
/// and brackets nested too deep. Brackets and digits inside quotes and literals do not count.
fn check_jmespath(src: &str) -> Result<(), String> {
    let (mut depth, mut deepest, mut digits) = (0usize, 0usize, 0usize);
    let mut quote: Option<char> = None;
    let mut escaped = false;
    for c in src.chars() {
        if let Some(q) = quote {
            if escaped {
                escaped = false;
            } else if c == '\\' {
                escaped = true;
            } else if c == q {
                quote = None;
            }
            continue;
        }
        match c {
            '\'' | '"' | '`' => quote = Some(c),
            '(' | '[' | '{' => depth += 1,
            ')' | ']' | '}' => depth = depth.saturating_sub(1),
            _ => {}
        }
        deepest = deepest.max(depth);
        digits = if c.is_ascii_digit() { digits + 1 } else { 0 };
        if digits > 9 {
            return Err("a number with more than 9 digits".into());
        }
    }
    if deepest > MAX_DEPTH {
        return Err(format!("brackets nested deeper than {MAX_DEPTH}"));
    }
    Ok(())
}

/// How deep the `{{#block}}`s of a template nest.
fn block_depth(src: &str) -> usize {
    let (mut depth, mut deepest) = (0usize, 0usize);
    let mut rest = src;
    while let Some(at) = rest.find("{{") {
        rest = &rest[at + 2..];
        let inner = rest.trim_start_matches('~');
        if inner.starts_with('#') {
            depth += 1;
            deepest = deepest.max(depth);
        } else if inner.starts_with('/') {
            depth = depth.saturating_sub(1);
        }
    }
    deepest
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn jmespath_that_the_crate_cannot_take_is_refused_before_it() {
        assert!(check_jmespath("meta.topic").is_ok());
        assert!(
            check_jmespath("a[0].b[?c == `12345678901234`]").is_ok(),
            "inside a literal"
        );
        assert!(check_jmespath(
            "'((((((((((((((((((((((((((((((((((((((((((((((((((((((((((((((((((((((('"
        )
        .is_ok());
        assert!(check_jmespath("[99999999999999999999999]").is_err());
        assert!(check_jmespath(&format!("{}a{}", "(".repeat(20_000), ")".repeat(20_000))).is_err());
        assert!(check_jmespath(&format!("{}a{}", "(".repeat(64), ")".repeat(64))).is_ok());
    }

    #[test]
    fn template_blocks_are_counted_by_depth() {
        assert_eq!(
            block_depth("{{a}} {{#if a}}{{#if b}}x{{/if}}{{/if}}{{#if c}}{{/if}}"),
            2
        );
        assert_eq!(block_depth(&"{{#if a}}".repeat(20_000)), 20_000);
    }
}
