//! The rules engine: compiled matchers and actions. A [`Message`] goes in; what to send comes
//! out ([`Routed`]: topic, key, headers, format and body), for [`crate::encode`] to turn into a
//! record. No I/O: everything that can go wrong per line is reported in the [`Outcome`], and the caller
//! counts it.
//!
//! Semantics, as in hotdog 0.5: rules are tried in order. A rule whose `field` matches runs its
//! actions in order, starting from an output that is the message body:
//! - `replace` renders its template into the output;
//! - `merge` merges its map (rendered) into the output, which must be a JSON object; when it is
//!   not, that is counted, the output is left as it was, and no later rule is tried;
//! - `forward` sends the output to its topic and ends processing of this message;
//! - `stop` ends processing of this message.

use std::borrow::Cow;
use std::cell::OnceCell;
use std::sync::Arc;

use regex_automata::util::captures::Captures;
use regex_automata::{meta, Input, PatternID, PatternSet};
use serde_json::Value;

use crate::core::{Name, Origin, RecordFormat};
use crate::parse::syslog::Message;
use template::{Lookup, Template, Templates};

pub mod template;

/// The part of a message a rule looks at.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Field {
    Msg,
    Hostname,
    Appname,
    Procid,
    Msgid,
    Severity,
    Facility,
    Timestamp,
    PeerAddr,
    TlsClientCn,
    /// `sd.ID.PARAM`: one param of the RFC 5424 structured data (the first element with that
    /// SD-ID, its first param with that name, unescaped). The SD-ID is everything up to the
    /// last dot, so it may hold dots and `@` (`sd.exampleSDID@32473.iut`).
    Sd(&'static str, &'static str),
}

impl Field {
    pub const NAMES: [&'static str; 10] = [
        "msg",
        "hostname",
        "appname",
        "procid",
        "msgid",
        "severity",
        "facility",
        "timestamp",
        "peer_addr",
        "tls_client_cn",
    ];

    pub fn from_name(name: &str) -> Option<Field> {
        Some(match name {
            "msg" => Field::Msg,
            "hostname" => Field::Hostname,
            "appname" => Field::Appname,
            "procid" => Field::Procid,
            "msgid" => Field::Msgid,
            "severity" => Field::Severity,
            "facility" => Field::Facility,
            "timestamp" => Field::Timestamp,
            "peer_addr" => Field::PeerAddr,
            "tls_client_cn" => Field::TlsClientCn,
            _ => {
                let (id, param) = name.strip_prefix("sd.")?.rsplit_once('.')?;
                if id.is_empty() || param.is_empty() {
                    return None;
                }
                Field::Sd(
                    crate::route::template::forever(id),
                    crate::route::template::forever(param),
                )
            }
        })
    }

    fn get<'a>(self, m: &Message<'a>, origin: &'a Origin) -> Option<Cow<'a, str>> {
        let plain = match self {
            Field::Msg => Some(m.msg),
            Field::Hostname => m.hostname,
            Field::Appname => m.appname,
            Field::Procid => m.procid,
            Field::Msgid => m.msgid,
            Field::Severity => m.severity_name(),
            Field::Facility => m.facility_name(),
            Field::Timestamp => m.timestamp,
            Field::PeerAddr => origin.peer_addr.as_deref(),
            Field::TlsClientCn => origin.tls_client_cn.as_deref(),
            Field::Sd(id, param) => {
                return crate::parse::syslog::sd_value(m.structured_data?, id, param);
            }
        };
        plain.map(Cow::Borrowed)
    }
}

/// A compiled regular expression, with the `regex` crate's syntax and semantics. Matching uses
/// the regex's own pool of caches (one per executor thread in practice), not one per
/// connection: a connection costs the same whatever the rules, and an idle one nothing.
pub struct Pattern {
    re: meta::Regex,
    source: String,
}

/// The longest regex taken. Compiling one holds memory in proportion to it before any size
/// limit can apply (a Unicode class such as `\w` costs kilobytes for every time it is written):
/// at this length, up to a few hundred MB for a moment, and one regex is compiled at a time.
pub const MAX_REGEX: usize = 256 * 1024;

impl Pattern {
    /// Compiles `source`; the error explains what is wrong with it and where.
    pub fn new(source: &str) -> Result<Pattern, String> {
        if source.len() > MAX_REGEX {
            return Err(format!(
                "a regex of {} bytes; the longest taken is {MAX_REGEX}",
                source.len()
            ));
        }
        match meta::Regex::new(source) {
            Ok(re) => Ok(Pattern {
                re,
                source: source.to_string(),
            }),
            Err(e) => Err(e
                .syntax_error()
                .map_or_else(|| e.to_string(), ToString::to_string)),
        }
    }

    pub fn as_str(&self) -> &str {
        &self.source
    }

    /// The heap memory the compiled regex holds (not the caches its searches fill).
    pub fn memory_usage(&self) -> usize {
        self.re.memory_usage() + self.source.len()
    }

    fn has_names(&self) -> bool {
        self.re
            .group_info()
            .pattern_names(PatternID::ZERO)
            .flatten()
            .next()
            .is_some()
    }
}

/// A compiled JMESPath expression. The common form, a chain of field names (`meta.topic`), is
/// looked up directly in the parsed JSON; any other expression is evaluated by the jmespath
/// crate, which first copies the whole document into its own representation.
pub struct Query {
    expr: jmespath::Expression<'static>,
    /// The field names, when the expression is nothing but a chain of them.
    fields: Option<Vec<String>>,
}

impl Query {
    pub fn new(expr: jmespath::Expression<'static>) -> Query {
        fn chain(ast: &jmespath::ast::Ast, out: &mut Vec<String>) -> bool {
            use jmespath::ast::Ast;
            match ast {
                Ast::Field { name, .. } => {
                    out.push(name.clone());
                    true
                }
                Ast::Subexpr { lhs, rhs, .. } => chain(lhs, out) && chain(rhs, out),
                _ => false,
            }
        }
        let mut fields = Vec::new();
        let fields = chain(expr.as_ast(), &mut fields).then_some(fields);
        Query { expr, fields }
    }

    /// What the expression finds in `json`: a string as it is, anything else as JSON; `None`
    /// for nothing (JMESPath's null).
    fn find(&self, json: &Value) -> Option<String> {
        let found;
        let v = match &self.fields {
            Some(fields) => fields
                .iter()
                .try_fold(json, |v, name| v.as_object()?.get(name))?,
            None => {
                found = serde_json::to_value(&*self.expr.search(json).ok()?).ok()?;
                &found
            }
        };
        match v {
            Value::Null => None,
            Value::String(s) => Some(s.clone()),
            other => serde_json::to_string(other).ok(),
        }
    }
}

/// How a rule decides that it matches.
pub enum Matcher {
    /// Named groups become template variables.
    Regex(Pattern),
    /// The field must be JSON; the rule matches when the expression finds a non-null value,
    /// which becomes the variable `value` (a string as it is, anything else as JSON).
    JmesPath(Query),
}

impl std::fmt::Debug for Matcher {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Matcher::Regex(r) => write!(f, "regex {:?}", r.as_str()),
            Matcher::JmesPath(q) => write!(f, "jmespath {:?}", q.expr.as_str()),
        }
    }
}

/// A `merge` map, with every string leaf a template.
#[derive(Debug, Clone)]
pub enum MergeValue {
    Object(Vec<(String, MergeValue)>),
    Array(Vec<MergeValue>),
    Template(Template),
    /// A number, boolean or null written in the config.
    Json(Value),
}

#[derive(Debug)]
pub enum Action {
    Forward {
        topic: Template,
        key: Option<Template>,
        /// Kafka headers: name and the template of the value.
        headers: Vec<(&'static str, Template)>,
        /// What the payload is: the output as it is, or a structured event around it.
        format: RecordFormat,
    },
    Merge(MergeValue),
    Replace(Template),
    Stop,
}

#[derive(Debug)]
pub struct Rule {
    pub field: Field,
    pub matcher: Matcher,
    pub actions: Vec<Action>,
    /// Where the rule is written (`file:line`), for `--test` output and logs.
    pub origin: String,
}

/// What a rule that forwards decided: where the record goes and what its payload is made of.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Routed {
    pub topic: Name,
    pub key: Option<String>,
    pub headers: Vec<(Name, String)>,
    /// What the payload is: the body as it is, or a structured event around it.
    pub format: RecordFormat,
    /// The output of the rule's `replace` and `merge` actions; `None`: the message body as it
    /// came.
    pub body: Option<String>,
}

/// What happened to one message, for the caller to count.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub struct Outcome {
    /// A record was produced.
    pub forwarded: bool,
    /// `merge` met an output that is not a JSON object.
    pub merge_errors: u32,
    /// A rendered topic was not a legal Kafka topic name; the default topic was used.
    pub invalid_topics: u32,
    /// A template failed to render (it rendered as nothing / the default topic).
    pub render_errors: u32,
}

/// The compiled rule set; shared read-only by every connection.
pub struct Rules {
    rules: Vec<Rule>,
    templates: Templates,
    default_topic: &'static str,
    /// Runs of consecutive regex rules on the same field, each matched in one pass.
    groups: Vec<Group>,
    /// For every rule, the group it is in.
    group_of: Vec<Option<usize>>,
}

/// The rule set in use, replaced whole when the configuration is reloaded. A connection keeps
/// the [`Rules`] it took and asks for the current ones before each frame (one atomic load when
/// nothing changed), so no frame is handled half with old and half with new rules.
pub struct Current {
    rules: std::sync::Mutex<Arc<Rules>>,
    /// Counts replacements; 1 for the rules loaded at start.
    generation: std::sync::atomic::AtomicU64,
}

impl Current {
    pub fn new(rules: Rules) -> Current {
        Current {
            rules: std::sync::Mutex::new(Arc::new(rules)),
            generation: std::sync::atomic::AtomicU64::new(1),
        }
    }

    pub fn generation(&self) -> u64 {
        self.generation.load(std::sync::atomic::Ordering::Acquire)
    }

    /// The rules in use and their generation.
    pub fn get(&self) -> (u64, Arc<Rules>) {
        let rules = self.rules.lock().unwrap_or_else(|p| p.into_inner());
        (self.generation(), rules.clone())
    }

    /// Puts `rules` in use; returns their generation.
    pub fn replace(&self, rules: Rules) -> u64 {
        let mut current = self.rules.lock().unwrap_or_else(|p| p.into_inner());
        *current = Arc::new(rules);
        // Under the lock: `get` never pairs new rules with an old generation or the reverse.
        self.generation
            .fetch_add(1, std::sync::atomic::Ordering::AcqRel)
            + 1
    }
}

/// Consecutive regex rules on one field (at least [`GROUP_MIN`]) looked for together, in one
/// pass over the field, so that hundreds of rules a line does not match cost about one. The
/// rules keep their order and their own regexes, which decide (and find the captures of) the
/// first that matches.
struct Group {
    /// The index of its first rule; rule `first + i` is the group's `i`th.
    first: usize,
    finder: Finder,
    /// How many rules it has.
    len: usize,
}

/// How a [`Group`] tells which of its rules to try.
enum Finder {
    /// Every rule has literals one of which must occur in anything it matches: one
    /// Aho-Corasick pass over the field finds the rules that can match (usually none); only
    /// their own regexes then run.
    Literals {
        ac: aho_corasick::AhoCorasick,
        /// For every literal, the group's rule it is from.
        rule_of: Vec<usize>,
    },
    /// One multi-pattern regex says which rules match (their patterns have no such literals).
    Set(meta::Regex),
}

impl Group {
    /// The indexes of the group's rules that may match `hay` (`Set`: that do match),
    /// ascending.
    fn candidates(&self, hay: &str) -> Vec<usize> {
        match &self.finder {
            Finder::Set(set) => {
                let mut found = PatternSet::new(self.len);
                set.which_overlapping_matches(&Input::new(hay), &mut found);
                found.iter().map(|id| self.first + id.as_usize()).collect()
            }
            Finder::Literals { ac, rule_of } => {
                let mut found: Vec<usize> = ac
                    .find_overlapping_iter(hay)
                    .map(|m| self.first + rule_of[m.pattern().as_usize()])
                    .collect();
                found.sort_unstable();
                found.dedup();
                found
            }
        }
    }

    /// Whether a candidate must still be confirmed by the rule's own regex.
    fn confirms(&self) -> bool {
        matches!(self.finder, Finder::Literals { .. })
    }
}

/// The shortest literal worth looking for first: shorter ones occur in too many lines.
const MIN_LITERAL: usize = 3;

/// Literals one of which occurs in anything `p` matches (where its matches begin), when there is
/// a finite set of them, each at least [`MIN_LITERAL`] bytes long.
fn required_literals(p: &Pattern) -> Option<Vec<Vec<u8>>> {
    let hir = regex_syntax::parse(p.as_str()).ok()?;
    let seq = regex_syntax::hir::literal::Extractor::new().extract(&hir);
    let literals = seq.literals()?;
    if literals.is_empty() || literals.iter().any(|l| l.as_bytes().len() < MIN_LITERAL) {
        return None;
    }
    Some(literals.iter().map(|l| l.as_bytes().to_vec()).collect())
}

/// The fewest consecutive regex rules matched as one [`Group`]; fewer are tried one by one.
const GROUP_MIN: usize = 4;

impl Matcher {
    /// Whether both are the same expression, as written.
    fn same_as(&self, other: &Matcher) -> bool {
        match (self, other) {
            (Matcher::Regex(a), Matcher::Regex(b)) => a.as_str() == b.as_str(),
            (Matcher::JmesPath(a), Matcher::JmesPath(b)) => a.expr.as_str() == b.expr.as_str(),
            _ => false,
        }
    }
}

/// Whether every message that reaches `rule` stops there (it forwards or stops).
fn ends_processing(rule: &Rule) -> bool {
    rule.actions
        .iter()
        .any(|a| matches!(a, Action::Forward { .. } | Action::Stop))
}

/// Whether `rule` matches every message: a regex on `msg` (always present) that can match the
/// empty string and has no anchor or word boundary, so it matches at the start of anything.
fn matches_everything(rule: &Rule) -> bool {
    let Matcher::Regex(p) = &rule.matcher else {
        return false;
    };
    rule.field == Field::Msg
        && regex_syntax::parse(p.as_str()).is_ok_and(|hir| {
            hir.properties().minimum_len() == Some(0) && hir.properties().look_set().is_empty()
        })
}

/// Whether a rule can be in a [`Group`]: a regex that cannot match the empty string. One that
/// can (`.*`, a catch-all) matches nearly every line by itself, and in a group it would keep the
/// others from being looked for by their literals first.
fn groupable(rule: &Rule) -> bool {
    match &rule.matcher {
        Matcher::Regex(p) => !p.re.is_match(""),
        Matcher::JmesPath(_) => false,
    }
}

/// Finds the runs of at least `min` consecutive regex rules on one field and compiles each into
/// a [`Group`]; for every rule, the group it is in.
fn group_runs(rules: &[Rule], min: usize) -> (Vec<Group>, Vec<Option<usize>>) {
    let mut groups = Vec::new();
    let mut group_of = vec![None; rules.len()];
    let mut i = 0;
    while i < rules.len() {
        if !groupable(&rules[i]) {
            i += 1;
            continue;
        }
        let field = rules[i].field;
        let end = rules[i..]
            .iter()
            .position(|r| r.field != field || !groupable(r))
            .map_or(rules.len(), |n| i + n);
        // Within the run, rules with literals and rules without them form groups apart.
        let literals: Vec<Option<Vec<Vec<u8>>>> = rules[i..end]
            .iter()
            .map(|r| match &r.matcher {
                Matcher::Regex(p) => required_literals(p),
                Matcher::JmesPath(_) => None,
            })
            .collect();
        let mut a = 0;
        while a < literals.len() {
            let kind = literals[a].is_some();
            let b = literals[a..]
                .iter()
                .position(|l| l.is_some() != kind)
                .map_or(literals.len(), |n| a + n);
            if b - a >= min {
                let (first, rules) = (i + a, &rules[i + a..i + b]);
                let finder = if kind {
                    literal_finder(&literals[a..b])
                } else {
                    set_finder(rules)
                };
                // Too large to build (a size limit): the rules are tried one by one.
                if let Some(finder) = finder {
                    for g in &mut group_of[first..i + b] {
                        *g = Some(groups.len());
                    }
                    groups.push(Group {
                        first,
                        finder,
                        len: b - a,
                    });
                }
            }
            a = b;
        }
        i = end;
    }
    (groups, group_of)
}

fn literal_finder(literals: &[Option<Vec<Vec<u8>>>]) -> Option<Finder> {
    let mut all = Vec::new();
    let mut rule_of = Vec::new();
    for (r, lits) in literals.iter().enumerate() {
        for l in lits.iter().flatten() {
            all.push(l.as_slice());
            rule_of.push(r);
        }
    }
    let ac = aho_corasick::AhoCorasick::builder()
        .match_kind(aho_corasick::MatchKind::Standard)
        .build(all)
        .ok()?;
    Some(Finder::Literals { ac, rule_of })
}

fn set_finder(rules: &[Rule]) -> Option<Finder> {
    let sources: Vec<&str> = rules
        .iter()
        .filter_map(|r| match &r.matcher {
            Matcher::Regex(p) => Some(p.as_str()),
            Matcher::JmesPath(_) => None,
        })
        .collect();
    meta::Builder::new()
        .configure(meta::Config::new().match_kind(regex_automata::MatchKind::All))
        .build_many(&sources)
        .ok()
        .map(Finder::Set)
}

impl std::fmt::Debug for Rules {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Rules")
            .field("rules", &self.rules)
            .field("default_topic", &self.default_topic)
            .finish()
    }
}

/// True for a name Kafka accepts as a topic.
pub fn is_legal_topic(name: &str) -> bool {
    (1..=249).contains(&name.len())
        && name != "."
        && name != ".."
        && name
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'.' | b'_' | b'-'))
}

impl Rules {
    pub fn new(rules: Vec<Rule>, templates: Templates, default_topic: &str) -> Self {
        Self::grouped(rules, templates, default_topic, GROUP_MIN)
    }

    /// With runs of `group_min` or more regex rules matched together (`usize::MAX`: never).
    fn grouped(
        rules: Vec<Rule>,
        templates: Templates,
        default_topic: &str,
        group_min: usize,
    ) -> Self {
        let (groups, group_of) = group_runs(&rules, group_min);
        Rules {
            rules,
            templates,
            default_topic: crate::route::template::forever(default_topic),
            groups,
            group_of,
        }
    }

    /// The topic for records whose rendered topic is not a legal name (`global.kafka.topic`).
    pub fn set_default_topic(&mut self, topic: &str) {
        self.default_topic = crate::route::template::forever(topic);
    }

    pub fn rules(&self) -> &[Rule] {
        &self.rules
    }

    /// The heap memory the compiled regexes and what finds them among many hold.
    pub fn memory_usage(&self) -> usize {
        let patterns: usize = self
            .rules
            .iter()
            .map(|r| match &r.matcher {
                Matcher::Regex(p) => p.memory_usage(),
                Matcher::JmesPath(_) => 0,
            })
            .sum();
        let finders: usize = self
            .groups
            .iter()
            .map(|g| match &g.finder {
                Finder::Set(set) => set.memory_usage(),
                Finder::Literals { ac, rule_of } => {
                    ac.memory_usage() + rule_of.len() * std::mem::size_of::<usize>()
                }
            })
            .sum();
        patterns + finders
    }

    /// The rules that can never run, each with why: it comes after a rule that matches every
    /// message and ends processing, or it matches exactly what an earlier rule that ends
    /// processing matches (same field, same expression).
    pub fn never_run(&self) -> Vec<(&Rule, String)> {
        let mut out = Vec::new();
        let mut catch_all: Option<&Rule> = None;
        for (i, rule) in self.rules.iter().enumerate() {
            if let Some(first) = catch_all {
                out.push((
                    rule,
                    format!(
                        "rule can never run: the rule at {} before it matches every message and ends processing",
                        first.origin
                    ),
                ));
                continue;
            }
            let earlier = self.rules[..i].iter().find(|e| {
                e.field == rule.field && ends_processing(e) && e.matcher.same_as(&rule.matcher)
            });
            if let Some(e) = earlier {
                out.push((
                    rule,
                    format!(
                        "rule can never run: the rule at {} matches the same and ends processing",
                        e.origin
                    ),
                ));
            }
            if ends_processing(rule) && matches_everything(rule) {
                catch_all = Some(rule);
            }
        }
        out
    }

    /// Runs `msg` through the rules, pushing what it forwards onto `out`. When `matched` is given,
    /// the index of every rule that matched is pushed onto it.
    pub fn apply<'m>(
        &self,
        msg: &Message<'m>,
        origin: &'m Origin,
        mut matched: Option<&mut Vec<usize>>,
    ) -> (Option<Routed>, Outcome) {
        let mut outcome = Outcome::default();
        // The group being gone through, and its candidates (rule indexes, ascending) not yet
        // reached: the rules of a group between two candidates are skipped without a look.
        let mut group: Option<(usize, std::vec::IntoIter<usize>)> = None;
        let mut next = 0;
        while next < self.rules.len() {
            let mut index = next;
            next += 1;
            let Some(field) = self.rules[index].field.get(msg, origin) else {
                continue;
            };
            let hay: &str = &field;
            // In a group: on to its next candidate, or past its end.
            let mut confirmed = false;
            if let Some(g) = self.group_of[index] {
                let this = &self.groups[g];
                if group.as_ref().is_none_or(|(at, _)| *at != g) {
                    group = Some((g, this.candidates(hay).into_iter()));
                }
                match group.as_mut().and_then(|(_, c)| c.find(|&r| r >= index)) {
                    Some(r) => index = r,
                    None => {
                        next = this.first + this.len;
                        continue;
                    }
                }
                next = index + 1;
                confirmed = !this.confirms();
            }
            let rule = &self.rules[index];
            let mut value = None;
            let mut parsed = None;
            let caps;
            let captures = match &rule.matcher {
                Matcher::Regex(p) => {
                    let input = Input::new(hay);
                    if !confirmed && !p.re.is_match(input.clone()) {
                        continue;
                    }
                    // Captures are only looked for in the one rule that matched.
                    if p.has_names() {
                        let mut c = p.re.create_captures();
                        p.re.search_captures(&input, &mut c);
                        caps = c;
                        Some(&caps)
                    } else {
                        None
                    }
                }
                Matcher::JmesPath(query) => match jmespath_value(query, hay) {
                    Some((v, json)) => {
                        value = Some(v);
                        // The message body, parsed once: a `merge` on it starts from this.
                        parsed = (rule.field == Field::Msg).then_some(json);
                        None
                    }
                    None => continue,
                },
            };
            if let Some(m) = matched.as_deref_mut() {
                m.push(index);
            }
            let vars = Vars {
                msg,
                origin,
                hay,
                captures,
                value,
                now: OnceCell::new(),
            };
            match self.run_actions(rule, &vars, parsed, &mut outcome) {
                Flow::Forward(routed) => {
                    outcome.forwarded = true;
                    return (Some(routed), outcome);
                }
                Flow::Stop => return (None, outcome),
                Flow::Next => {}
            }
        }
        (None, outcome)
    }

    /// `parsed` is the message body as JSON when the matcher already parsed it.
    fn run_actions(
        &self,
        rule: &Rule,
        vars: &Vars<'_>,
        mut parsed: Option<Value>,
        outcome: &mut Outcome,
    ) -> Flow {
        let mut output: Option<String> = None;
        let mut stop = false;
        for action in &rule.actions {
            match action {
                Action::Replace(t) => match self.templates.render(t, vars) {
                    Ok(s) => output = Some(s),
                    Err(_) => outcome.render_errors += 1,
                },
                Action::Merge(m) => {
                    let base = match (&output, parsed.take()) {
                        (None, Some(json)) => Ok(json),
                        (Some(out), _) => serde_json::from_str::<Value>(out),
                        (None, None) => serde_json::from_str::<Value>(vars.msg.msg),
                    };
                    match base {
                        Ok(Value::Object(mut obj)) => {
                            if let MergeValue::Object(fields) = m {
                                self.merge_rendered(&mut obj, fields, vars, outcome);
                            }
                            // Straight into bytes: much faster than through `Display`.
                            match serde_json::to_string(&Value::Object(obj)) {
                                Ok(s) => output = Some(s),
                                Err(_) => {
                                    outcome.merge_errors += 1;
                                    stop = true;
                                }
                            }
                        }
                        _ => {
                            outcome.merge_errors += 1;
                            stop = true;
                        }
                    }
                }
                Action::Forward {
                    topic,
                    key,
                    headers,
                    format,
                } => {
                    let topic = self.topic(topic, vars, outcome);
                    let mut render = |t: &Template| match self.templates.render(t, vars) {
                        Ok(v) => Some(v),
                        Err(_) => {
                            outcome.render_errors += 1;
                            None
                        }
                    };
                    let key = key.as_ref().and_then(&mut render);
                    let headers = headers
                        .iter()
                        .filter_map(|(name, t)| Some((Cow::Borrowed(*name), render(t)?)))
                        .collect();
                    return Flow::Forward(Routed {
                        topic,
                        key,
                        headers,
                        format: *format,
                        body: output,
                    });
                }
                Action::Stop => return Flow::Stop,
            }
        }
        if stop {
            Flow::Stop
        } else {
            Flow::Next
        }
    }

    fn topic(&self, t: &Template, vars: &Vars<'_>, outcome: &mut Outcome) -> Name {
        if let Some(lit) = t.literal() {
            return Cow::Borrowed(lit);
        }
        match self.templates.render(t, vars) {
            Ok(name) if is_legal_topic(&name) => Cow::Owned(name),
            Ok(_) => {
                outcome.invalid_topics += 1;
                Cow::Borrowed(self.default_topic)
            }
            Err(_) => {
                outcome.render_errors += 1;
                Cow::Borrowed(self.default_topic)
            }
        }
    }

    /// Renders `fields` into `base`: objects merge key by key, anything else replaces what was
    /// there. Renders in place, without building the object to merge first.
    fn merge_rendered(
        &self,
        base: &mut serde_json::Map<String, Value>,
        fields: &[(String, MergeValue)],
        vars: &Vars<'_>,
        outcome: &mut Outcome,
    ) {
        for (k, v) in fields {
            match (base.get_mut(k), v) {
                (Some(Value::Object(existing)), MergeValue::Object(more)) => {
                    self.merge_rendered(existing, more, vars, outcome);
                }
                (_, v) => {
                    let v = self.render_merge(v, vars, outcome);
                    base.insert(k.clone(), v);
                }
            }
        }
    }

    fn render_merge(&self, m: &MergeValue, vars: &Vars<'_>, outcome: &mut Outcome) -> Value {
        match m {
            MergeValue::Object(fields) => {
                let mut object = serde_json::Map::new();
                self.merge_rendered(&mut object, fields, vars, outcome);
                Value::Object(object)
            }
            MergeValue::Array(items) => Value::Array(
                items
                    .iter()
                    .map(|v| self.render_merge(v, vars, outcome))
                    .collect(),
            ),
            MergeValue::Template(t) => match self.templates.render(t, vars) {
                Ok(s) => Value::String(s),
                Err(_) => {
                    outcome.render_errors += 1;
                    Value::Null
                }
            },
            MergeValue::Json(v) => v.clone(),
        }
    }
}

enum Flow {
    Forward(Routed),
    Stop,
    Next,
}

/// The expression's result on `hay` (a string as it is, anything else as JSON) and `hay` parsed.
fn jmespath_value(query: &Query, hay: &str) -> Option<(String, Value)> {
    // Only an object or an array can hold what an expression looks for; skip parsing the rest.
    if !matches!(hay.trim_start().as_bytes().first(), Some(b'{' | b'[')) {
        return None;
    }
    let json: Value = serde_json::from_str(hay).ok()?;
    let value = query.find(&json)?;
    Some((value, json))
}

/// The variables a matched rule's templates see.
struct Vars<'a> {
    msg: &'a Message<'a>,
    origin: &'a Origin,
    /// What the rule matched against (capture locations index into it).
    hay: &'a str,
    captures: Option<&'a Captures>,
    value: Option<String>,
    now: OnceCell<String>,
}

/// Every built-in variable name, in the order `to_json` writes them.
pub const VARIABLES: [&str; 18] = [
    "msg",
    "version",
    "iso8601",
    "value",
    "hostname",
    "appname",
    "procid",
    "msgid",
    "severity",
    "facility",
    "timestamp",
    "timestamp_rfc3339",
    "structured_data",
    "format",
    "peer_addr",
    "priority",
    "tls_client_cn",
    "tls_client_san",
];

impl Vars<'_> {
    fn builtin(&self, name: &str) -> Option<Cow<'_, str>> {
        let m = self.msg;
        match name {
            "msg" => Some(Cow::Borrowed(m.msg)),
            "version" => Some(Cow::Borrowed(env!("CARGO_PKG_VERSION"))),
            "iso8601" => Some(Cow::Borrowed(self.now.get_or_init(|| {
                let now = self.origin.clock.unwrap_or_else(std::time::SystemTime::now);
                humantime::format_rfc3339_millis(now).to_string()
            }))),
            "value" => self.value.as_deref().map(Cow::Borrowed),
            "hostname" => m.hostname.map(Cow::Borrowed),
            "appname" => m.appname.map(Cow::Borrowed),
            "procid" => m.procid.map(Cow::Borrowed),
            "msgid" => m.msgid.map(Cow::Borrowed),
            "severity" => m.severity_name().map(Cow::Borrowed),
            "facility" => m.facility_name().map(Cow::Borrowed),
            "timestamp" => m.timestamp.map(Cow::Borrowed),
            "timestamp_rfc3339" => crate::parse::time::normalised_time(m, self.origin),
            "structured_data" => m.structured_data.map(Cow::Borrowed),
            "format" => Some(Cow::Borrowed(m.format.as_str())),
            "peer_addr" => self.origin.peer_addr.as_deref().map(Cow::Borrowed),
            "tls_client_cn" => self.origin.tls_client_cn.as_deref().map(Cow::Borrowed),
            "tls_client_san" => self.origin.tls_client_san.as_deref().map(Cow::Borrowed),
            "priority" => m
                .facility
                .zip(m.severity)
                .map(|(f, s)| Cow::Owned((u16::from(f) * 8 + u16::from(s)).to_string())),
            _ => None,
        }
    }
}

impl Lookup for Vars<'_> {
    fn get(&self, name: &str) -> Option<Cow<'_, str>> {
        if let Some(caps) = self.captures {
            // Named captures shadow the built-ins, as in hotdog 0.5.
            if let Some(i) = caps.group_info().to_index(PatternID::ZERO, name) {
                return caps
                    .get_group(i)
                    .and_then(|span| self.hay.get(span.range()))
                    .map(Cow::Borrowed);
            }
        }
        self.builtin(name)
    }

    fn to_json(&self) -> Value {
        let mut map = serde_json::Map::new();
        for name in VARIABLES {
            if let Some(v) = self.builtin(name) {
                map.insert(name.to_string(), Value::String(v.into_owned()));
            }
        }
        // `{{sd.ID.PARAM}}` (`{{sd.[exampleSDID@32473].iut}}` for an SD-ID with `@`).
        if let Some(sd) = self.msg.structured_data {
            let mut elements = serde_json::Map::new();
            for (id, params) in crate::parse::syslog::sd_elements(sd) {
                let element = elements
                    .entry(id.to_string())
                    .or_insert_with(|| Value::Object(serde_json::Map::new()));
                if let Value::Object(e) = element {
                    for (name, value) in params {
                        e.entry(name.to_string())
                            .or_insert_with(|| Value::String(value.into_owned()));
                    }
                }
            }
            map.insert("sd".into(), Value::Object(elements));
        }
        if let Some(caps) = self.captures {
            for name in caps.group_info().pattern_names(PatternID::ZERO).flatten() {
                let v = self.get(name).map(|v| Value::String(v.into_owned()));
                map.insert(name.to_string(), v.unwrap_or(Value::Null));
            }
        }
        Value::Object(map)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::parse::syslog;

    fn rules(defs: Vec<(Field, Matcher, Vec<Action>)>, t: Templates) -> Rules {
        let rules = defs
            .into_iter()
            .enumerate()
            .map(|(i, (field, matcher, actions))| Rule {
                field,
                matcher,
                actions,
                origin: format!("test:{i}"),
            })
            .collect();
        Rules::new(rules, t, "default")
    }

    /// Rules where rule `i` forwards to topic `t{i}` (with `{{word}}` when it has that capture)
    /// and matches `patterns[i]` on `fields[i % fields.len()]`.
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
                    field: fields[i % fields.len()],
                    matcher: Matcher::Regex(Pattern::new(p).unwrap()),
                    actions: vec![Action::Forward {
                        topic: t.compile(&topic).unwrap(),
                        key: None,
                        headers: Vec::new(),
                        format: RecordFormat::Raw,
                    }],
                    origin: format!("test:{i}"),
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
        ];
        // Every pattern's own match decides, in order, with the others before it skipped: drop
        // the first k patterns so that each one gets to be the first that matches somewhere.
        for k in 0..patterns.len() {
            for fields in [&[Field::Msg][..], &[Field::Msg, Field::Hostname]] {
                let one_by_one = numbered(&patterns[k..], fields, usize::MAX);
                let grouped = numbered(&patterns[k..], fields, 2);
                if fields.len() == 1 {
                    assert!(!grouped.groups.is_empty() || patterns.len() - k < 2);
                }
                assert!(one_by_one.groups.is_empty());
                for line in lines {
                    assert_eq!(
                        run(&grouped, line),
                        run(&one_by_one, line),
                        "patterns from {k}, fields {fields:?}, line {line:?}"
                    );
                }
            }
        }
    }

    #[test]
    fn groups_are_runs_of_regex_rules_on_one_field() {
        let r = numbered(&["a", "b", "c", "d", "e"], &[Field::Msg], 4);
        assert_eq!(r.groups.len(), 1);
        assert_eq!(r.group_of, [Some(0); 5]);
        // Alternating fields: no run is long enough.
        let r = numbered(&["a", "b", "c", "d"], &[Field::Msg, Field::Hostname], 2);
        assert!(r.groups.is_empty());
        // Two runs of two on one field each, then one by one.
        let r = numbered(
            &["a", "b", "c", "d", "e"],
            &[
                Field::Msg,
                Field::Msg,
                Field::Hostname,
                Field::Hostname,
                Field::Msg,
            ],
            2,
        );
        assert_eq!(r.group_of, [Some(0), Some(0), Some(1), Some(1), None]);
        assert_eq!(r.groups[1].first, 2);
        // A regex that matches the empty string (a catch-all) is tried by itself.
        let r = numbered(&["a", "b", ".*", "c", "d"], &[Field::Msg], 2);
        assert_eq!(r.group_of, [Some(0), Some(0), None, Some(1), Some(1)]);
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
        assert!(r.groups[0].confirms() && !r.groups[1].confirms());
        // Literals found say which rules to try: the one whose literal occurs.
        assert_eq!(
            r.groups[0].candidates("a service-2 stopped, code=3xy"),
            [1, 2]
        );
        // ... and its regex decides: `code=3xy` has no word boundary after the x.
        assert_eq!(
            run(&r, "<13>a service-2 stopped, code=3xy").0[0].topic,
            "t1"
        );
        assert_eq!(run(&r, "<13>code=3xy took 12ms").0[0].topic, "t5");
        assert_eq!(run(&r, "<13>an ERROR").0[0].topic, "t3");
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
}
