//! What a rule looks at and how: the message [`Field`]s, compiled regexes ([`Pattern`], with
//! their memory) and JMESPath queries ([`Query`], with a fast path for plain field chains).

use super::*;

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

    pub(super) fn get<'a>(self, m: &Message<'a>, origin: &'a Origin) -> Option<Cow<'a, str>> {
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
    pub(super) re: meta::Regex,
    pub(super) source: String,
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

    /// Matches `hay` as a rule does (its captures looked for when it has named groups): what
    /// `--check` times to find the regexes that cost far more than the others.
    pub fn matches(&self, hay: &str) -> bool {
        let input = Input::new(hay);
        if !self.re.is_match(input.clone()) {
            return false;
        }
        if self.has_names() {
            let mut c = self.re.create_captures();
            self.re.search_captures(&input, &mut c);
        }
        true
    }

    pub(super) fn has_names(&self) -> bool {
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
    pub(super) expr: jmespath::Expression<'static>,
    /// The field names, when the expression is nothing but a chain of them.
    pub(super) fields: Option<Vec<String>>,
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
    #[inline]
    pub(super) fn find(&self, json: &Value) -> Option<String> {
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

/// What a matcher found in the field it matched.
pub(super) struct Found {
    /// A regex's captures, looked for only when it has named groups.
    pub(super) captures: Option<Captures>,
    /// A JMESPath expression's result.
    pub(super) value: Option<String>,
    /// The field parsed as JSON by a JMESPath matcher.
    pub(super) json: Option<Value>,
}

impl Matcher {
    /// What the matcher finds in `hay`; `None` when it does not match. `confirmed`: a group's
    /// pass found already that this regex matches. `parsed`: the line's field parsed as JSON
    /// by an earlier JMESPath rule on the same field (`field`), kept for the next one: a line
    /// is parsed once however many JMESPath rules look at it.
    pub(super) fn find(
        &self,
        hay: &str,
        confirmed: bool,
        field: Field,
        parsed: &mut Option<(Field, Option<Value>)>,
    ) -> Option<Found> {
        match self {
            Matcher::Regex(p) => {
                let input = Input::new(hay);
                if !confirmed && !p.re.is_match(input.clone()) {
                    return None;
                }
                // Captures are only looked for in the one rule that matched.
                let captures = p.has_names().then(|| {
                    let mut c = p.re.create_captures();
                    p.re.search_captures(&input, &mut c);
                    c
                });
                Some(Found {
                    captures,
                    value: None,
                    json: None,
                })
            }
            Matcher::JmesPath(query) => {
                let json = parsed_json(hay, field, parsed)?;
                let value = query.find(json)?;
                Some(Found {
                    captures: None,
                    value: Some(value),
                    json: Some(json.clone()),
                })
            }
        }
    }
}

/// `hay` (the line's `field`) as JSON: the one `parsed` holds for that field, or parsed now
/// and kept there for the next rule that asks.
pub(super) fn parsed_json<'p>(
    hay: &str,
    field: Field,
    parsed: &'p mut Option<(Field, Option<Value>)>,
) -> Option<&'p Value> {
    if parsed.as_ref().is_none_or(|(f, _)| *f != field) {
        *parsed = Some((field, parse_json(hay)));
    }
    parsed.as_ref().and_then(|(_, json)| json.as_ref())
}

/// `hay` parsed as JSON, when it is an object or an array: only those can hold what an
/// expression looks for, so the rest is not parsed.
fn parse_json(hay: &str) -> Option<Value> {
    if !matches!(hay.trim_start().as_bytes().first(), Some(b'{' | b'[')) {
        return None;
    }
    serde_json::from_str(hay).ok()
}
