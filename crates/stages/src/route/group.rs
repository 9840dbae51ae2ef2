//! Rules matched as a group: the regex rules on one field, wherever they are in the rule set, are
//! looked for in one pass (by their required literals, or one regex set), and only the
//! candidates it finds are tried, in the rules' order. So are the JMESPath rules on one field
//! that name a path of fields (`meta.topic`): one walk of the line's JSON along their paths.

use super::matcher::parsed_json;
use super::*;

/// Regex rules on one field (at least [`GROUP_MIN`], other rules possibly between them) looked
/// for together, in one pass over the field, so that hundreds of rules a line does not match
/// cost about one. The rules keep their order and their own regexes, which decide (and find the
/// captures of) the first that matches.
pub(super) struct Group {
    /// Its rules' indexes, ascending: the group's `i`th rule is `members[i]`.
    pub(super) members: Vec<usize>,
    pub(super) finder: Finder,
}

/// How a [`Group`] tells which of its rules to try.
pub(super) enum Finder {
    /// Every rule has literals one of which must occur in anything it matches: one
    /// Aho-Corasick pass over the field finds the rules that can match (usually none); only
    /// their own regexes then run.
    Literals {
        ac: aho_corasick::AhoCorasick,
        /// For every literal, the group's rule it is from.
        rule_of: Vec<usize>,
        /// The group's regexes as one multi-pattern regex, for a line in which the literals of
        /// more than [`ONE_BY_ONE`] rules occur (literals the traffic carries): one pass then
        /// says which rules match, instead of every candidate's own regex. `None` for a group
        /// of no more rules than that, or one too large to build.
        set: Option<meta::Regex>,
    },
    /// One multi-pattern regex says which rules match (their patterns have no such literals).
    Set(meta::Regex),
    /// JMESPath rules that each name a path of fields: the paths as a tree, walked along the
    /// line's JSON, say which find a value (a line costs what its JSON holds, not the rules).
    Paths(Paths),
}

/// The field paths of JMESPath rules as a tree: node 0 is the document, each child one field
/// name further.
pub(super) struct Paths {
    nodes: Vec<PathNode>,
}

#[derive(Default)]
struct PathNode {
    children: std::collections::HashMap<String, usize>,
    /// The rules whose path ends here (indexes in the rule set).
    rules: Vec<usize>,
}

impl Paths {
    fn new(rules: &[(usize, &[String])]) -> Paths {
        let mut nodes = vec![PathNode::default()];
        for &(rule, path) in rules {
            let mut at = 0;
            for name in path {
                at = match nodes[at].children.get(name) {
                    Some(&child) => child,
                    None => {
                        nodes.push(PathNode::default());
                        let child = nodes.len() - 1;
                        nodes[at].children.insert(name.clone(), child);
                        child
                    }
                };
            }
            nodes[at].rules.push(rule);
        }
        Paths { nodes }
    }

    /// The rules whose path finds a value that is not null in `json`, ascending.
    fn found(&self, json: &Value) -> Vec<usize> {
        let mut out = Vec::new();
        self.walk(0, json, &mut out);
        out.sort_unstable();
        out
    }

    fn walk(&self, at: usize, value: &Value, out: &mut Vec<usize>) {
        let node = &self.nodes[at];
        if !value.is_null() {
            out.extend_from_slice(&node.rules);
        }
        let Value::Object(object) = value else {
            return;
        };
        // Whichever is smaller is looked through: the document's fields, or the paths'.
        if node.children.len() <= object.len() {
            for (name, &child) in &node.children {
                if let Some(v) = object.get(name) {
                    self.walk(child, v, out);
                }
            }
        } else {
            for (name, v) in object {
                if let Some(&child) = node.children.get(name) {
                    self.walk(child, v, out);
                }
            }
        }
    }

    pub(super) fn memory_usage(&self) -> usize {
        self.nodes
            .iter()
            .map(|n| {
                std::mem::size_of::<PathNode>()
                    + n.rules.len() * std::mem::size_of::<usize>()
                    + n.children
                        .keys()
                        .map(|k| k.len() + 2 * std::mem::size_of::<usize>() + 24)
                        .sum::<usize>()
            })
            .sum()
    }
}

impl Group {
    /// The indexes of the group's rules that may match `hay`, ascending, and whether they are
    /// known to match (a multi-pattern pass found them) rather than still to be confirmed by
    /// their own regexes.
    ///
    /// `parsed` is the line's field as JSON when a JMESPath rule parsed it already (for
    /// [`Finder::Paths`], which parses it when none did, and keeps it for the rules).
    pub(super) fn candidates(
        &self,
        hay: &str,
        field: Field,
        parsed: &mut Option<(Field, Option<Value>)>,
    ) -> (Vec<usize>, bool) {
        match &self.finder {
            Finder::Set(set) => (self.matching(set, hay), true),
            Finder::Paths(paths) => {
                let json = parsed_json(hay, field, parsed);
                (json.map_or_else(Vec::new, |json| paths.found(json)), true)
            }
            Finder::Literals { ac, rule_of, set } => {
                let mut found: Vec<usize> = Vec::new();
                for m in ac.find_overlapping_iter(hay) {
                    let rule = self.members[rule_of[m.pattern().as_usize()]];
                    if !found.contains(&rule) {
                        found.push(rule);
                    }
                    // More than a few: the group's regexes as one decide, and the literals
                    // need not be looked for any further.
                    if let Some(set) = set.as_ref().filter(|_| found.len() > ONE_BY_ONE) {
                        return (self.matching(set, hay), true);
                    }
                }
                found.sort_unstable();
                (found, false)
            }
        }
    }

    /// The group's rules that `set` (their regexes as one) finds in `hay`, ascending.
    fn matching(&self, set: &meta::Regex, hay: &str) -> Vec<usize> {
        let mut found = PatternSet::new(self.members.len());
        set.which_overlapping_matches(&Input::new(hay), &mut found);
        found.iter().map(|id| self.members[id.as_usize()]).collect()
    }
}

/// The most candidates whose own regexes are tried one by one; past that, one pass of the
/// group's regexes as one says which match.
pub(super) const ONE_BY_ONE: usize = 4;

/// Literals one of which occurs in anything a rule matches (`None`: it has none to look for).
type Literals = Option<Vec<Vec<u8>>>;

/// The shortest literal worth looking for first: shorter ones occur in too many lines.
pub(super) const MIN_LITERAL: usize = 3;

/// Literals one of which occurs in anything `p` matches (where its matches begin), when there is
/// a finite set of them, each at least [`MIN_LITERAL`] bytes long.
pub(super) fn required_literals(p: &Pattern) -> Option<Vec<Vec<u8>>> {
    let hir = regex_syntax::parse(p.as_str()).ok()?;
    let seq = regex_syntax::hir::literal::Extractor::new().extract(&hir);
    let literals = seq.literals()?;
    if literals.is_empty() || literals.iter().any(|l| l.as_bytes().len() < MIN_LITERAL) {
        return None;
    }
    Some(literals.iter().map(|l| l.as_bytes().to_vec()).collect())
}

/// The fewest consecutive regex rules matched as one [`Group`]; fewer are tried one by one.
pub(super) const GROUP_MIN: usize = 4;

/// The most rules in one [`Group`]: a longer run is cut into groups of this many, each with
/// automata of its own (5,000 rules with Unicode classes are past the regex engine's size limit
/// as one).
pub(super) const GROUP_MAX: usize = 1000;

/// The lazy DFA cache of a group's regexes as one, per thread that searches: 8 KiB per rule, at
/// least the regex engine's default 2 MiB, at most 8 MiB. Too small, and the lazy DFA gives up
/// and the search falls back to a far slower engine (1,000 rules with `\S+` and `\d+` needed more
/// than 4 MiB: 600 µs a line instead of 0.2).
pub(super) fn set_cache(rules: usize) -> usize {
    rules.saturating_mul(8 << 10).clamp(2 << 20, 8 << 20)
}

impl Matcher {
    /// Whether both are the same expression, as written.
    pub(super) fn same_as(&self, other: &Matcher) -> bool {
        match (self, other) {
            (Matcher::Regex(a), Matcher::Regex(b)) => a.as_str() == b.as_str(),
            (Matcher::JmesPath(a), Matcher::JmesPath(b)) => a.expr.as_str() == b.expr.as_str(),
            _ => false,
        }
    }
}

/// Whether every message that reaches `rule` stops there (it forwards or stops).
pub(super) fn ends_processing(rule: &Rule) -> bool {
    rule.actions
        .iter()
        .any(|a| matches!(a, Action::Forward { .. } | Action::Stop))
}

/// Whether `rule` matches every message: a regex on `msg` (always present) that can match the
/// empty string and has no anchor or word boundary, so it matches at the start of anything.
pub(super) fn matches_everything(rule: &Rule) -> bool {
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
pub(super) fn groupable(rule: &Rule) -> bool {
    match &rule.matcher {
        Matcher::Regex(p) => !p.re.is_match(""),
        Matcher::JmesPath(q) => q.fields.is_some(),
    }
}

/// How a gathering's rules are looked for together.
#[derive(Clone, Copy, PartialEq, Eq)]
enum Kind {
    /// Regexes, by their literals.
    Literals,
    /// Regexes without literals to look for: as one regex.
    Set,
    /// JMESPath paths of fields.
    Paths,
}

/// Gathers the groupable regex rules by field and by whether they have literals to look for,
/// wherever they are in the rule set, and compiles each gathering of at least `min` rules into
/// [`Group`]s of at most [`GROUP_MAX`]; for every rule, the group it is in.
pub(super) fn group_rules(rules: &[Rule], min: usize) -> (Vec<Group>, Vec<Option<usize>>) {
    struct Gathering {
        field: Field,
        kind: Kind,
        members: Vec<usize>,
        literals: Vec<Literals>,
    }
    let mut gatherings: Vec<Gathering> = Vec::new();
    for (i, rule) in rules.iter().enumerate() {
        if !groupable(rule) {
            continue;
        }
        let literals = match &rule.matcher {
            Matcher::Regex(p) => required_literals(p),
            Matcher::JmesPath(_) => None,
        };
        let kind = match (&rule.matcher, &literals) {
            (Matcher::JmesPath(_), _) => Kind::Paths,
            (_, Some(_)) => Kind::Literals,
            (_, None) => Kind::Set,
        };
        match gatherings
            .iter_mut()
            .find(|g| g.field == rule.field && g.kind == kind)
        {
            Some(g) => {
                g.members.push(i);
                g.literals.push(literals);
            }
            None => gatherings.push(Gathering {
                field: rule.field,
                kind,
                members: vec![i],
                literals: vec![literals],
            }),
        }
    }
    let mut groups = Vec::new();
    let mut group_of = vec![None; rules.len()];
    for g in gatherings.iter().filter(|g| g.members.len() >= min) {
        let mut chunks: Vec<(&[usize], &[Literals])> = g
            .members
            .chunks(GROUP_MAX)
            .zip(g.literals.chunks(GROUP_MAX))
            .collect();
        chunks.reverse();
        while let Some((members, literals)) = chunks.pop() {
            let of: Vec<&Rule> = members.iter().map(|&i| &rules[i]).collect();
            let finder = match g.kind {
                Kind::Literals => literal_finder(literals, &of),
                Kind::Set => set_finder(&of),
                Kind::Paths => paths_finder(members, &of),
            };
            match finder {
                Some(finder) => {
                    for &i in members {
                        group_of[i] = Some(groups.len());
                    }
                    groups.push(Group {
                        members: members.to_vec(),
                        finder,
                    });
                }
                // Too large to build (the regex engine's size limit: long counted
                // repetitions): halves, each built by itself; the rules of a part too small
                // to be a group are tried one by one.
                None if members.len() / 2 >= min => {
                    let half = members.len() / 2;
                    chunks.push((&members[half..], &literals[half..]));
                    chunks.push((&members[..half], &literals[..half]));
                }
                None => {}
            }
        }
    }
    (groups, group_of)
}

pub(super) fn literal_finder(literals: &[Literals], rules: &[&Rule]) -> Option<Finder> {
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
    let set = if rules.len() > ONE_BY_ONE {
        regex_set(rules)
    } else {
        None
    };
    Some(Finder::Literals { ac, rule_of, set })
}

/// The paths of JMESPath `rules` (at `members` in the rule set), each a path of fields.
fn paths_finder(members: &[usize], rules: &[&Rule]) -> Option<Finder> {
    let paths: Vec<(usize, &[String])> = members
        .iter()
        .zip(rules)
        .map(|(&i, r)| match &r.matcher {
            Matcher::JmesPath(q) => q.fields.as_deref().map(|f| (i, f)),
            Matcher::Regex(_) => None,
        })
        .collect::<Option<_>>()?;
    Some(Finder::Paths(Paths::new(&paths)))
}

pub(super) fn set_finder(rules: &[&Rule]) -> Option<Finder> {
    regex_set(rules).map(Finder::Set)
}

/// The regexes of `rules` (all regex rules) as one, which says which of them match a line.
fn regex_set(rules: &[&Rule]) -> Option<meta::Regex> {
    let sources: Vec<&str> = rules
        .iter()
        .filter_map(|r| match &r.matcher {
            Matcher::Regex(p) => Some(p.as_str()),
            Matcher::JmesPath(_) => None,
        })
        .collect();
    meta::Builder::new()
        .configure(
            meta::Config::new()
                .match_kind(regex_automata::MatchKind::All)
                .hybrid_cache_capacity(set_cache(sources.len())),
        )
        .build_many(&sources)
        .ok()
}
