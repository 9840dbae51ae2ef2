//! Templates used by the rules: topics, keys, `replace` templates and the leaves of `merge` maps.
//!
//! Every template is compiled once, when the configuration is loaded. Three kinds, chosen at
//! compile time so that the common cases cost next to nothing per line:
//! - a literal (no `{{`): handed out as it is, never rendered;
//! - only plain variables (`{{name}}`): rendered here, by looking the names up;
//! - anything else (helpers, blocks, `{{{raw}}}`): rendered by handlebars.
//!
//! HTML escaping is off everywhere: `&` stays `&`. The `json` helper writes a value as a JSON
//! string literal (`{{json msg}}` gives `"a \"quoted\" line"`), for templates that build JSON.

use std::borrow::Cow;

use handlebars::{
    Context, Handlebars, Helper, HelperResult, JsonRender, Output, RenderContext, RenderError,
};

/// Where template variables come from; see `rules::Vars`.
pub trait Lookup {
    /// The value of one variable, `None` when it is not set (it renders as nothing).
    fn get(&self, name: &str) -> Option<Cow<'_, str>>;
    /// Every variable, for handlebars.
    fn to_json(&self) -> serde_json::Value;
}

/// A name or text from the configuration, kept until the process ends. The same text is kept
/// once however often the configuration is loaded (it is reloaded live), so what is kept is
/// bounded by the distinct names ever configured; in exchange, the records that carry such a
/// name (a topic, a header name) carry a plain reference, with no reference count to update on
/// the connection's thread and again on the publisher's for every record.
pub fn forever(text: &str) -> &'static str {
    static KEPT: std::sync::Mutex<Option<std::collections::HashSet<&'static str>>> =
        std::sync::Mutex::new(None);
    let mut kept = KEPT.lock().unwrap_or_else(|p| p.into_inner());
    let kept = kept.get_or_insert_with(Default::default);
    if let Some(k) = kept.get(text) {
        return k;
    }
    let k: &'static str = Box::leak(text.to_string().into_boxed_str());
    kept.insert(k);
    k
}

/// The longest literal kept for good: a Kafka topic name is at most 249 bytes.
const MAX_NAME: usize = 249;

/// A compiled template.
#[derive(Debug, Clone)]
pub enum Template {
    /// Text without a placeholder as short as a name (a topic, a header name), kept for the life
    /// of the process (see [`forever`]).
    Literal(&'static str),
    /// Longer text without a placeholder (a payload), dropped with its rules.
    Text(Box<str>),
    Simple(Vec<Segment>),
    /// The name it is registered under in [`Templates`].
    Handlebars(String),
}

#[derive(Debug, Clone)]
pub enum Segment {
    Text(String),
    Var(String),
}

impl Template {
    /// The text, when the template is a literal.
    pub fn literal(&self) -> Option<&'static str> {
        match self {
            Template::Literal(s) => Some(*s),
            _ => None,
        }
    }
}

/// The registry every template is compiled into; shared, read-only, by every connection.
pub struct Templates {
    hb: Handlebars<'static>,
    next: usize,
}

impl Default for Templates {
    fn default() -> Self {
        Self::new()
    }
}

impl std::fmt::Debug for Templates {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Templates")
            .field("count", &self.next)
            .finish()
    }
}

fn json_helper(
    h: &Helper<'_>,
    _: &Handlebars<'_>,
    _: &Context,
    _: &mut RenderContext<'_, '_>,
    out: &mut dyn Output,
) -> HelperResult {
    let value = h.param(0).map(|p| p.value().clone());
    let text = match value {
        Some(serde_json::Value::String(s)) => serde_json::Value::String(s).to_string(),
        Some(serde_json::Value::Null) | None => "null".to_string(),
        Some(other) => serde_json::Value::String(other.render()).to_string(),
    };
    out.write(&text)?;
    Ok(())
}

impl Templates {
    pub fn new() -> Self {
        let mut hb = Handlebars::new();
        hb.register_escape_fn(handlebars::no_escape);
        hb.register_helper("json", Box::new(json_helper));
        Templates { hb, next: 0 }
    }

    /// Compiles `source`; the error says what is wrong and where inside the template
    /// (`line:column`, counted from the template's start).
    pub fn compile(&mut self, source: &str) -> Result<Template, String> {
        if !source.contains("{{") {
            // Only names are kept for good: what is kept stays bounded by the distinct names
            // ever configured, however often long texts are reloaded.
            if source.len() <= MAX_NAME {
                return Ok(Template::Literal(forever(source)));
            }
            return Ok(Template::Text(source.into()));
        }
        // Compile with handlebars in every case: it is the reference for what is valid.
        let name = format!("t{}", self.next);
        self.next += 1;
        self.hb
            .register_template_string(&name, source)
            .map_err(|e| match e.pos() {
                Some((line, col)) => format!("{} (template line {line}, column {col})", e.reason()),
                None => e.reason().to_string(),
            })?;
        match simple_segments(source) {
            Some(segs) => {
                self.hb.unregister_template(&name);
                Ok(Template::Simple(segs))
            }
            None => Ok(Template::Handlebars(name)),
        }
    }

    /// Renders `t` into `out` (appending).
    pub fn render_into(
        &self,
        t: &Template,
        vars: &dyn Lookup,
        out: &mut String,
    ) -> Result<(), RenderError> {
        match t {
            Template::Literal(s) => out.push_str(s),
            Template::Text(s) => out.push_str(s),
            Template::Simple(segs) => {
                for seg in segs {
                    match seg {
                        Segment::Text(s) => out.push_str(s),
                        Segment::Var(v) => {
                            if let Some(val) = vars.get(v) {
                                out.push_str(&val);
                            }
                        }
                    }
                }
            }
            Template::Handlebars(name) => {
                let rendered = self.hb.render(name, &vars.to_json())?;
                out.push_str(&rendered);
            }
        }
        Ok(())
    }

    /// Renders `t` into a new string.
    pub fn render(&self, t: &Template, vars: &dyn Lookup) -> Result<String, RenderError> {
        let mut out = String::new();
        self.render_into(t, vars, &mut out)?;
        Ok(out)
    }
}

/// `Some` when the template is only text and `{{ name }}` placeholders with plain names.
fn simple_segments(source: &str) -> Option<Vec<Segment>> {
    let mut segs = Vec::new();
    let mut rest = source;
    while let Some(open) = rest.find("{{") {
        if open > 0 {
            segs.push(Segment::Text(rest[..open].to_string()));
        }
        let after = &rest[open + 2..];
        let close = after.find("}}")?;
        let name = after[..close].trim();
        let plain = !name.is_empty()
            && name.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'_')
            && !name.bytes().all(|b| b.is_ascii_digit())
            && !matches!(name, "this" | "true" | "false" | "null" | "else");
        if !plain || after[..close].contains('{') {
            return None;
        }
        segs.push(Segment::Var(name.to_string()));
        rest = &after[close + 2..];
    }
    if rest.contains("}}") {
        return None;
    }
    if !rest.is_empty() {
        segs.push(Segment::Text(rest.to_string()));
    }
    Some(segs)
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::collections::HashMap;

    struct Map(HashMap<&'static str, &'static str>);
    impl Lookup for Map {
        fn get(&self, name: &str) -> Option<Cow<'_, str>> {
            self.0.get(name).map(|v| Cow::Borrowed(*v))
        }
        fn to_json(&self) -> serde_json::Value {
            serde_json::to_value(&self.0).unwrap_or_default()
        }
    }

    fn vars() -> Map {
        Map(HashMap::from([("name", "a&b \"q\""), ("host", "web1")]))
    }

    #[test]
    fn kinds_are_chosen_at_compile_time() {
        let mut t = Templates::new();
        assert!(matches!(t.compile("logs").unwrap(), Template::Literal(_)));
        // A literal longer than any name is not kept for good (reloads would pile them up).
        let long = "x".repeat(MAX_NAME + 1);
        let text = t.compile(&long).unwrap();
        assert!(matches!(text, Template::Text(_)));
        assert_eq!(text.literal(), None);
        assert_eq!(t.render(&text, &vars()).unwrap(), long);
        assert!(matches!(
            t.compile("logs-{{ host }}").unwrap(),
            Template::Simple(_)
        ));
        assert!(matches!(
            t.compile("{{#if host}}x{{/if}}").unwrap(),
            Template::Handlebars(_)
        ));
        assert!(matches!(
            t.compile("{{{name}}}").unwrap(),
            Template::Handlebars(_)
        ));
    }

    #[test]
    fn simple_and_handlebars_render_alike_without_escaping() {
        let mut t = Templates::new();
        let simple = t.compile("{{name}} on {{host}}{{missing}}!").unwrap();
        let hb = t
            .compile("{{name}} on {{host}}{{missing}}!{{#if x}}{{/if}}")
            .unwrap();
        assert!(matches!(hb, Template::Handlebars(_)));
        let v = vars();
        assert_eq!(t.render(&simple, &v).unwrap(), "a&b \"q\" on web1!");
        assert_eq!(t.render(&hb, &v).unwrap(), "a&b \"q\" on web1!");
    }

    #[test]
    fn json_helper_escapes() {
        let mut t = Templates::new();
        let tpl = t
            .compile(r#"{"n": {{json name}}, "m": {{json missing}}}"#)
            .unwrap();
        let out = t.render(&tpl, &vars()).unwrap();
        let parsed: serde_json::Value = serde_json::from_str(&out).unwrap();
        assert_eq!(parsed["n"], "a&b \"q\"");
        assert!(parsed["m"].is_null());
    }

    #[test]
    fn broken_template_is_an_error_with_position() {
        let mut t = Templates::new();
        let err = t.compile("ok\n{{#if x}}never closed").unwrap_err();
        assert!(err.contains("template line"), "{err}");
    }
}
