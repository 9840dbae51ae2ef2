//! A toolkit for decoding a YAML tree that keeps every node's line and column (marked-yaml):
//! errors that name `file:line:column` and what was expected, and mappings that report every
//! key nobody asked for, with the closest known key suggested. Knows nothing of hotdog's keys.

use std::fmt;
use std::time::Duration;

use marked_yaml::Node;

/// One problem in the configuration, with where it is.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ConfigError {
    pub file: String,
    pub line: usize,
    pub column: usize,
    pub message: String,
}

impl fmt::Display for ConfigError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if self.line == 0 {
            write!(f, "{}: {}", self.file, self.message)
        } else {
            write!(
                f,
                "{}:{}:{}: {}",
                self.file, self.line, self.column, self.message
            )
        }
    }
}

/// Every problem found in a configuration file.
#[derive(Debug, thiserror::Error)]
pub struct ConfigErrors(pub Vec<ConfigError>);

impl fmt::Display for ConfigErrors {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        for (i, e) in self.0.iter().enumerate() {
            if i > 0 {
                writeln!(f)?;
            }
            write!(f, "{e}")?;
        }
        Ok(())
    }
}

/// The error of a file that is not YAML as expected; `top` says what the top-level mapping holds.
pub(super) fn load_error(file: &str, top: &str, e: marked_yaml::LoadError) -> ConfigError {
    use marked_yaml::LoadError::*;
    let at = |m: &marked_yaml::Marker, message: String| ConfigError {
        file: file.to_string(),
        line: m.line(),
        column: m.column(),
        message,
    };
    match &e {
        TopLevelMustBeMapping(m) => at(m, format!("expected a mapping with {top} at the top")),
        UnexpectedAnchor(m) => at(m, "YAML anchors are not supported here".into()),
        MappingKeyMustBeScalar(m) => at(m, "keys must be plain strings".into()),
        UnexpectedTag(m) => at(m, "YAML tags are not supported here".into()),
        ScanError(m, err) => at(m, format!("invalid YAML: {}", err.info())),
        DuplicateKey(inner) => {
            let key = &inner.key;
            let (line, column) = key
                .span()
                .start()
                .map(|m| (m.line(), m.column()))
                .unwrap_or((0, 0));
            ConfigError {
                file: file.to_string(),
                line,
                column,
                message: format!("the key `{}` is given twice", key.as_str()),
            }
        }
        _ => ConfigError {
            file: file.to_string(),
            line: 0,
            column: 0,
            message: format!("invalid YAML: {e}"),
        },
    }
}

/// The decoding context: the file name and the errors found so far.
pub(super) struct Cx<'f> {
    pub(super) file: &'f str,
    pub(super) errors: Vec<ConfigError>,
}

impl Cx<'_> {
    pub(super) fn error(&mut self, node: &Node, message: impl Into<String>) {
        let (line, column) = position(node);
        self.errors.push(ConfigError {
            file: self.file.to_string(),
            line,
            column,
            message: message.into(),
        });
    }
}

pub(super) fn position(node: &Node) -> (usize, usize) {
    node.span()
        .start()
        .map(|m| (m.line(), m.column()))
        .unwrap_or((0, 0))
}

/// A hash of what `node` says, not where: the same for the same text on other lines.
pub(super) fn fingerprint(node: &Node) -> u64 {
    use std::hash::{Hash, Hasher};
    fn feed(node: &Node, h: &mut std::collections::hash_map::DefaultHasher) {
        match node {
            Node::Scalar(s) => (0u8, s.as_str()).hash(h),
            Node::Sequence(items) => {
                (1u8, items.len()).hash(h);
                items.iter().for_each(|i| feed(i, h));
            }
            Node::Mapping(map) => {
                (2u8, map.len()).hash(h);
                for (k, v) in map.iter() {
                    k.as_str().hash(h);
                    feed(v, h);
                }
            }
        }
    }
    let mut h = std::collections::hash_map::DefaultHasher::new();
    feed(node, &mut h);
    h.finish()
}

pub(super) fn kind(node: &Node) -> &'static str {
    match node {
        Node::Scalar(_) => "a value",
        Node::Mapping(_) => "a mapping",
        Node::Sequence(_) => "a list",
    }
}

/// True for an empty value (`key:`), `~` or `null`.
pub(super) fn is_null(node: &Node) -> bool {
    match node {
        Node::Scalar(s) => {
            s.may_coerce() && matches!(s.as_str(), "" | "~" | "null" | "Null" | "NULL")
        }
        _ => false,
    }
}

/// A mapping being decoded: remembers which keys were asked for, so the rest can be reported as
/// unknown, with the closest known key suggested. Decoders ask for every key and report what is
/// wrong with each before [`Map::finish`], never returning early, so that one bad value does not
/// hide an unknown key beside it.
pub(super) struct Map<'n> {
    node: &'n Node,
    what: String,
    known: Vec<&'static str>,
}

impl<'n> Map<'n> {
    pub(super) fn new(cx: &mut Cx<'_>, node: &'n Node, what: impl Into<String>) -> Option<Map<'n>> {
        let what = what.into();
        if node.as_mapping().is_none() {
            cx.error(
                node,
                format!("expected a mapping for `{what}`, found {}", kind(node)),
            );
            return None;
        }
        Some(Map {
            node,
            what,
            known: Vec::new(),
        })
    }

    /// The value of `key`; `None` when absent or null.
    pub(super) fn get(&mut self, key: &'static str) -> Option<&'n Node> {
        self.allow(&[key]);
        self.node
            .as_mapping()
            .and_then(|m| m.get_node(key))
            .filter(|n| !is_null(n))
    }

    /// Where `key` itself is written (not its value); the mapping's position when it is absent.
    pub(super) fn key_position(&self, key: &str) -> (usize, usize) {
        self.node
            .as_mapping()
            .and_then(|m| m.keys().find(|k| k.as_str() == key))
            .and_then(|k| k.span().start().map(|m| (m.line(), m.column())))
            .unwrap_or_else(|| position(self.node))
    }

    /// Counts `keys` as known without decoding them (when what they mean cannot be told, for
    /// example beside an action `type` that is not valid), so they are not reported as unknown.
    pub(super) fn allow(&mut self, keys: &[&'static str]) {
        for key in keys {
            if !self.known.contains(key) {
                self.known.push(key);
            }
        }
    }

    pub(super) fn path(&self, key: &str) -> String {
        format!("{}.{key}", self.what)
    }

    pub(super) fn string(&mut self, cx: &mut Cx<'_>, key: &'static str) -> Option<String> {
        let node = self.get(key)?;
        scalar(cx, node, &self.path(key))
    }

    pub(super) fn required_string(&mut self, cx: &mut Cx<'_>, key: &'static str) -> Option<String> {
        let v = self.string(cx, key);
        if v.is_none() && self.get(key).is_none() {
            cx.error(self.node, format!("`{}` is required", self.path(key)));
        }
        v
    }

    pub(super) fn number<T: std::str::FromStr>(
        &mut self,
        cx: &mut Cx<'_>,
        key: &'static str,
    ) -> Option<T> {
        let node = self.get(key)?;
        let text = scalar(cx, node, &self.path(key))?;
        match text.parse() {
            Ok(v) => Some(v),
            Err(_) => {
                cx.error(
                    node,
                    format!(
                        "expected a whole number in range for `{}`, found `{text}`",
                        self.path(key)
                    ),
                );
                None
            }
        }
    }

    /// A whole number in `range` (`default` when absent); out of range is an error that says
    /// the range.
    pub(super) fn number_in(
        &mut self,
        cx: &mut Cx<'_>,
        key: &'static str,
        range: std::ops::RangeInclusive<usize>,
        default: usize,
    ) -> usize {
        let Some(v) = self.number::<usize>(cx, key) else {
            return default;
        };
        if !range.contains(&v) {
            if let Some(n) = self.get(key) {
                cx.error(
                    n,
                    format!(
                        "`{}` must be from {} to {}, found {v}",
                        self.path(key),
                        range.start(),
                        range.end()
                    ),
                );
            }
        }
        v
    }

    /// A duration of at most `max` (`default` when absent).
    pub(super) fn duration_at_most(
        &mut self,
        cx: &mut Cx<'_>,
        key: &'static str,
        max: Duration,
        default: Duration,
    ) -> Option<Duration> {
        let Some(node) = self.get(key) else {
            return Some(default);
        };
        let d = duration(cx, node, &self.path(key))?;
        if d > max {
            cx.error(
                node,
                format!(
                    "`{}` must be at most {}, found {}",
                    self.path(key),
                    humantime::format_duration(max),
                    humantime::format_duration(d)
                ),
            );
            return None;
        }
        Some(d)
    }

    /// Reports every key that was not asked for.
    pub(super) fn finish(self, cx: &mut Cx<'_>) {
        let Some(map) = self.node.as_mapping() else {
            return;
        };
        for key in map.keys() {
            let name = key.as_str();
            if self.known.contains(&name) {
                continue;
            }
            let suggestion = closest(name, &self.known)
                .map(|k| format!("; did you mean `{k}`?"))
                .unwrap_or_else(|| format!("; expected one of: {}", self.known.join(", ")));
            let node = Node::Scalar(key.clone());
            cx.error(
                &node,
                format!("unknown key `{name}` in `{}`{suggestion}", self.what),
            );
        }
    }
}

/// The known name closest to `name`, when it is close enough to be a likely typo.
pub(super) fn closest<'k>(name: &str, known: &[&'k str]) -> Option<&'k str> {
    known
        .iter()
        .map(|k| (strsim::damerau_levenshtein(name, k), *k))
        .filter(|(d, k)| *d <= 2.max(k.len() / 3))
        .min_by_key(|(d, _)| *d)
        .map(|(_, k)| k)
}

pub(super) fn scalar(cx: &mut Cx<'_>, node: &Node, what: &str) -> Option<String> {
    match node {
        Node::Scalar(s) => Some(s.as_str().to_string()),
        other => {
            cx.error(
                other,
                format!("expected a value for `{what}`, found {}", kind(other)),
            );
            None
        }
    }
}

/// The message for a name that is not one of `names`: `unknown <kind> `x`; did you mean `y`?
/// expected one of: ...`.
pub(super) fn unknown_name(kind: &str, name: &str, names: &[&str]) -> String {
    let hint = closest(name, names)
        .map(|k| format!("did you mean `{k}`? "))
        .unwrap_or_default();
    format!(
        "unknown {kind} `{name}`; {hint}expected one of: {}",
        names.join(", ")
    )
}

/// The items of a list, or an error saying `what` should have been one.
pub(super) fn list<'n>(cx: &mut Cx<'_>, node: &'n Node, what: &str) -> Option<&'n [Node]> {
    match node.as_sequence() {
        Some(seq) => Some(seq),
        None => {
            cx.error(
                node,
                format!("expected a list for `{what}`, found {}", kind(node)),
            );
            None
        }
    }
}

/// Every item decoded, or `None` when any one failed. Every item is decoded either way (no
/// early return), so each reports its own errors.
pub(super) fn every<T>(items: impl Iterator<Item = Option<T>>) -> Option<Vec<T>> {
    let mut out = Vec::new();
    let mut ok = true;
    for item in items {
        match item {
            Some(v) => out.push(v),
            None => ok = false,
        }
    }
    ok.then_some(out)
}

/// Seconds (`30`) or a duration (`30s`, `2m`).
pub(super) fn duration(cx: &mut Cx<'_>, node: &Node, what: &str) -> Option<Duration> {
    let text = scalar(cx, node, what)?;
    if let Ok(secs) = text.parse::<u64>() {
        return Some(Duration::from_secs(secs));
    }
    match humantime::parse_duration(&text) {
        Ok(d) => Some(d),
        Err(e) => {
            cx.error(
                node,
                format!("expected seconds or a duration like `30s` for `{what}`: {e}"),
            );
            None
        }
    }
}

/// A true-or-false setting (`true`/`yes`/`on`, `false`/`no`/`off`), `default` when absent.
pub(super) fn flag(
    cx: &mut Cx<'_>,
    node: Option<&Node>,
    what: &str,
    default: bool,
) -> Option<bool> {
    let Some(n) = node else {
        return Some(default);
    };
    match scalar(cx, n, what)?.as_str() {
        "true" | "yes" | "on" => Some(true),
        "false" | "no" | "off" => Some(false),
        other => {
            cx.error(
                n,
                format!("expected true or false for `{what}`, found `{other}`"),
            );
            None
        }
    }
}

/// A size in bytes: a whole number, or one with a unit (`KB`, `MB`, `GB`, `TB` in powers of
/// 1000; `KiB`, `MiB`, `GiB`, `TiB` in powers of 1024).
pub(super) fn size(cx: &mut Cx<'_>, node: &Node, what: &str) -> Option<u64> {
    let text = scalar(cx, node, what)?;
    let t = text.trim();
    let digits = t.find(|c: char| !c.is_ascii_digit()).unwrap_or(t.len());
    let (number, unit) = t.split_at(digits);
    let factor: Option<u64> = match unit.trim() {
        "" | "B" => Some(1),
        "KB" | "kB" => Some(1_000),
        "MB" => Some(1_000_000),
        "GB" => Some(1_000_000_000),
        "TB" => Some(1_000_000_000_000),
        "KiB" => Some(1 << 10),
        "MiB" => Some(1 << 20),
        "GiB" => Some(1 << 30),
        "TiB" => Some(1 << 40),
        _ => None,
    };
    match (number.parse::<u64>().ok(), factor) {
        (Some(n), Some(f)) if n.checked_mul(f).is_some() => n.checked_mul(f),
        _ => {
            cx.error(
                node,
                format!(
                    "expected a size for `{what}`: bytes, or a number with KB, MB, GB, TB, KiB, \
                     MiB, GiB or TiB; found `{text}`"
                ),
            );
            None
        }
    }
}
