//! What templates see when a rule runs: the message's fields, the connection's facts, the
//! regex's captures or the JMESPath value, and the time.

use super::*;

/// The variables a matched rule's templates see.
pub(super) struct Vars<'a> {
    pub(super) msg: &'a Message<'a>,
    pub(super) origin: &'a Origin,
    /// What the rule matched against (capture locations index into it).
    pub(super) hay: &'a str,
    pub(super) captures: Option<&'a Captures>,
    pub(super) value: Option<String>,
    pub(super) now: OnceCell<String>,
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
    pub(super) fn builtin(&self, name: &str) -> Option<Cow<'_, str>> {
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
