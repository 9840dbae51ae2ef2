//! Secrets kept out of the configuration file. In `global.kafka.conf`, `${NAME}` in a value is
//! the environment variable `NAME` (`$${` is a literal `${`), and a key ending in `_file` takes
//! its value from that file: `sasl.password_file: ${CREDENTIALS_DIRECTORY}/kafka` sets
//! `sasl.password` to what systemd's `LoadCredential=` put there. The status server's
//! `token_file` is read the same way. No error message here shows a secret's value.

use std::path::Path;

use marked_yaml::Node;

use super::yaml::Cx;
use super::Outside;

/// The longest secret file.
const MAX_SECRET: u64 = 64 * 1024;

/// The suffix of a `global.kafka.conf` key whose value is read from a file.
pub const FILE_SUFFIX: &str = "_file";

/// A secret file's content without its trailing line break and spaces; an error when it cannot
/// be read, is not UTF-8 or is empty.
pub fn read(path: &Path) -> Result<String, String> {
    let bytes = super::read_bounded(path, MAX_SECRET)
        .map_err(|e| format!("cannot read {}: {e}", path.display()))?;
    let text =
        String::from_utf8(bytes).map_err(|_| format!("{} is not UTF-8 text", path.display()))?;
    let secret = text.trim_end();
    if secret.is_empty() {
        return Err(format!("{} is empty", path.display()));
    }
    Ok(secret.to_string())
}

/// `value` with every `${NAME}` replaced by the environment variable `NAME` (`$${` stays a
/// literal `${`); an error names a variable that is not set or a `${` that is not closed.
pub fn expand(value: &str, var: &dyn Fn(&str) -> Option<String>) -> Result<String, String> {
    let mut out = String::with_capacity(value.len());
    let mut rest = value;
    while let Some(at) = rest.find("${") {
        if rest[..at].ends_with('$') {
            out.push_str(&rest[..at - 1]);
            out.push_str("${");
            rest = &rest[at + 2..];
            continue;
        }
        out.push_str(&rest[..at]);
        let after = &rest[at + 2..];
        let Some(end) = after.find('}') else {
            return Err("has a `${` without its `}`".into());
        };
        let name = &after[..end];
        let legal = name.starts_with(|c: char| c.is_ascii_alphabetic() || c == '_')
            && name.chars().all(|c| c.is_ascii_alphanumeric() || c == '_');
        if !legal {
            return Err(format!(
                "`${{{name}}}` is not an environment variable's name (letters, digits and _)"
            ));
        }
        match var(name) {
            Some(v) => out.push_str(&v),
            None => {
                return Err(format!(
                    "names the environment variable {name}, which is not set"
                ))
            }
        }
        rest = &after[end + 1..];
    }
    out.push_str(rest);
    Ok(out)
}

/// One `global.kafka.conf` setting with its secrets resolved: the key librdkafka is given and
/// its value. Errors are located at the value and never show it.
pub(super) fn setting(
    cx: &mut Cx<'_>,
    key: &Node,
    node: &Node,
    value: String,
    outside: &Outside<'_>,
) -> Option<(String, String)> {
    let key = key.as_scalar().map(|k| k.as_str()).unwrap_or_default();
    let what = format!("global.kafka.conf.{key}");
    let value = match expand(&value, outside.var) {
        Ok(v) => v,
        Err(e) => {
            cx.error(node, format!("`{what}` {e}"));
            return None;
        }
    };
    match key.strip_suffix(FILE_SUFFIX) {
        Some(name) if !name.is_empty() => match read(Path::new(&value)) {
            Ok(secret) => Some((name.to_string(), secret)),
            Err(e) => {
                cx.error(node, format!("`{what}`: {e}"));
                None
            }
        },
        _ => Some((key.to_string(), value)),
    }
}
