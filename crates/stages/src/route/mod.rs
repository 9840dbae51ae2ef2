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
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;

use regex_automata::util::captures::Captures;
use regex_automata::{meta, Input, PatternID, PatternSet};
use serde_json::Value;

use crate::core::{Name, Origin, RecordFormat};
use crate::parse::syslog::Message;
use template::{Lookup, Template, Templates};

mod group;
mod matcher;
mod vars;

use group::*;
pub use matcher::{Field, Matcher, Pattern, Query, MAX_REGEX};
pub use vars::VARIABLES;
use vars::*;

#[cfg(test)]
mod tests;

pub mod template;

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
    /// The operator's name for the rule (`name`), which labels its counter.
    pub name: Option<String>,
    pub field: Field,
    pub matcher: Matcher,
    pub actions: Vec<Action>,
    /// Where the rule is written (`file:line`), for `--test` output and logs.
    pub origin: String,
    /// A hash of what the rule says (not where): a reloaded rule with the same label and the
    /// same fingerprint stayed the same, and keeps its counter.
    pub fingerprint: u64,
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
    /// Regex rules on the same field, each group matched in one pass.
    groups: Vec<Group>,
    /// For every rule, the group it is in.
    group_of: Vec<Option<usize>>,
    /// For every rule index `i` (and the end), the first rule at or after `i` in no group.
    next_alone: Vec<usize>,
    /// For every rule, how many messages it matched: shared with the rule set before a
    /// reload when the rule stayed the same ([`Rules::keep_counts`]).
    matched: Vec<Arc<AtomicU64>>,
}

/// A group's candidates for one line (rule indexes, ascending) not yet reached, and whether a
/// multi-pattern pass found that they match.
struct Candidates {
    rules: std::iter::Peekable<std::vec::IntoIter<usize>>,
    confirmed: bool,
}

impl Candidates {
    fn none() -> Self {
        Candidates {
            rules: Vec::new().into_iter().peekable(),
            confirmed: false,
        }
    }
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
    /// The rules that stayed the same keep their counters.
    pub fn replace(&self, mut rules: Rules) -> u64 {
        let mut current = self.rules.lock().unwrap_or_else(|p| p.into_inner());
        rules.keep_counts(&current);
        *current = Arc::new(rules);
        // Under the lock: `get` never pairs new rules with an old generation or the reverse.
        self.generation
            .fetch_add(1, std::sync::atomic::Ordering::AcqRel)
            + 1
    }
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
        let (groups, group_of) = group_rules(&rules, group_min);
        let mut next_alone = vec![rules.len(); rules.len() + 1];
        for i in (0..rules.len()).rev() {
            next_alone[i] = if group_of[i].is_none() {
                i
            } else {
                next_alone[i + 1]
            };
        }
        Rules {
            matched: rules.iter().map(|_| Arc::default()).collect(),
            rules,
            templates,
            default_topic: crate::route::template::forever(default_topic),
            groups,
            group_of,
            next_alone,
        }
    }

    /// Rule `i`'s label for its counter: its `name`, or its index in the rule set.
    pub fn label(&self, i: usize) -> Cow<'_, str> {
        match self.name(i) {
            Some(name) => Cow::Borrowed(name),
            None => Cow::Owned(i.to_string()),
        }
    }

    /// True when rule `i`'s [label](Rules::label) is `label`, with no label made for it.
    pub fn is_labelled(&self, i: usize, label: &str) -> bool {
        match self.name(i) {
            Some(name) => name == label,
            // The index as `label` writes it: digits, no leading zero.
            None => {
                i < self.rules.len()
                    && label.bytes().all(|b| b.is_ascii_digit())
                    && (label == "0" || !label.starts_with('0'))
                    && label.parse::<usize>() == Ok(i)
            }
        }
    }

    /// Rule `i`'s `name`, if it has one.
    fn name(&self, i: usize) -> Option<&str> {
        self.rules.get(i).and_then(|r| r.name.as_deref())
    }

    /// Adds `n` to the count of messages rule `i` matched.
    pub fn count_matches(&self, i: usize, n: u64) {
        if let Some(c) = self.matched.get(i) {
            c.fetch_add(n, Ordering::Relaxed);
        }
    }

    /// Every rule's label and how many messages it matched, in rule order.
    pub fn matches(&self) -> Vec<(String, u64)> {
        self.matched
            .iter()
            .enumerate()
            .map(|(i, c)| (self.label(i).into_owned(), c.load(Ordering::Relaxed)))
            .collect()
    }

    /// Takes over the counters of `old`'s rules that stayed the same: same label (name, or
    /// index for a rule without one) and the same text.
    pub fn keep_counts(&mut self, old: &Rules) {
        let before: std::collections::HashMap<(Cow<'_, str>, u64), &Arc<AtomicU64>> =
            (0..old.rules.len())
                .map(|i| ((old.label(i), old.rules[i].fingerprint), &old.matched[i]))
                .collect();
        let kept: Vec<Option<Arc<AtomicU64>>> = (0..self.rules.len())
            .map(|i| {
                before
                    .get(&(self.label(i), self.rules[i].fingerprint))
                    .map(|c| Arc::clone(c))
            })
            .collect();
        for (slot, kept) in self.matched.iter_mut().zip(kept) {
            if let Some(c) = kept {
                *slot = c;
            }
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
                Finder::Literals { ac, rule_of, set } => {
                    ac.memory_usage()
                        + rule_of.len() * std::mem::size_of::<usize>()
                        + set.as_ref().map_or(0, |s| s.memory_usage())
                }
                Finder::Paths(paths) => paths.memory_usage(),
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
        // For every group, its candidates (rule indexes, ascending) not yet reached, once the
        // walk has reached its first rule: the group's other rules are skipped without a look.
        let mut pending: Vec<Option<Candidates>> = Vec::new();
        pending.resize_with(self.groups.len(), || None);
        // The field the last JMESPath rule parsed, as JSON (`None`: it is not JSON).
        let mut parsed: Option<(Field, Option<Value>)> = None;
        let mut at = 0;
        loop {
            // The next rule to look at: one in no group, a group's first rule, or a group's
            // next candidate, whichever comes first.
            let mut next = self.next_alone[at];
            for (g, c) in pending.iter_mut().enumerate() {
                let event = match c {
                    None => self.groups[g].members[0],
                    Some(c) => {
                        while c.rules.peek().is_some_and(|&r| r < at) {
                            c.rules.next();
                        }
                        c.rules.peek().copied().unwrap_or(usize::MAX)
                    }
                };
                next = next.min(event);
            }
            if next >= self.rules.len() {
                break;
            }
            at = next;
            let rule = &self.rules[at];
            let Some(field) = rule.field.get(msg, origin) else {
                if let Some(g) = self.group_of[at] {
                    // The group's rules all look at this field, which the message lacks.
                    pending[g].get_or_insert_with(Candidates::none);
                }
                at += 1;
                continue;
            };
            let hay: &str = &field;
            let mut confirmed = false;
            if let Some(g) = self.group_of[at] {
                let c = pending[g].get_or_insert_with(|| {
                    let (rules, confirmed) =
                        self.groups[g].candidates(hay, rule.field, &mut parsed);
                    Candidates {
                        rules: rules.into_iter().peekable(),
                        confirmed,
                    }
                });
                if c.rules.peek() != Some(&at) {
                    // Not a candidate: the walk goes on from the next thing to look at.
                    continue;
                }
                c.rules.next();
                confirmed = c.confirmed;
            }
            at += 1;
            let Some(found) = rule.matcher.find(hay, confirmed, rule.field, &mut parsed) else {
                continue;
            };
            if let Some(m) = matched.as_deref_mut() {
                m.push(at - 1);
            }
            let vars = Vars {
                msg,
                origin,
                hay,
                captures: found.captures.as_ref(),
                value: found.value,
                now: OnceCell::new(),
            };
            // The message body, parsed once by the matcher: a `merge` on it starts from this.
            let body = found.json.filter(|_| rule.field == Field::Msg);
            match self.run_actions(rule, &vars, body, &mut outcome) {
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
                    let merged = self.merge(m, vars, output.as_deref(), parsed.take(), outcome);
                    match merged {
                        Some(merged) => output = Some(merged),
                        None => {
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

    /// `merge`: the output (or the message body, or the body the matcher parsed) as a JSON
    /// object with `m` merged into it, as JSON text; `None` when it is not a JSON object.
    fn merge(
        &self,
        m: &MergeValue,
        vars: &Vars<'_>,
        output: Option<&str>,
        parsed: Option<Value>,
        outcome: &mut Outcome,
    ) -> Option<String> {
        let base = match (output, parsed) {
            (None, Some(json)) => json,
            (Some(out), _) => serde_json::from_str::<Value>(out).ok()?,
            (None, None) => serde_json::from_str::<Value>(vars.msg.msg).ok()?,
        };
        let Value::Object(mut obj) = base else {
            return None;
        };
        if let MergeValue::Object(fields) = m {
            self.merge_rendered(&mut obj, fields, vars, outcome);
        }
        // Straight into bytes: much faster than through `Display`.
        serde_json::to_string(&Value::Object(obj)).ok()
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
