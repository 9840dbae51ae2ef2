//! The OpenTelemetry logs data model: the protobuf messages of
//! `opentelemetry/proto/collector/logs/v1` (and what they use) that hotdog fills, with the
//! official field numbers, and their OTLP/JSON form.

use super::*;

mod plain;
mod proto;

pub(crate) use plain::*;
pub(crate) use proto::*;

/// OTLP/JSON writes 64-bit integers as strings.
fn as_text<T: std::fmt::Display, S: serde::Serializer>(v: &T, s: S) -> Result<S::Ok, S::Error> {
    s.collect_str(v)
}

#[derive(Clone, PartialEq, prost::Message, serde::Serialize)]
#[serde(rename_all = "camelCase")]
pub struct ExportLogsServiceRequest {
    #[prost(message, repeated, tag = "1")]
    pub resource_logs: Vec<ResourceLogs>,
}

#[derive(Clone, PartialEq, prost::Message, serde::Serialize)]
#[serde(rename_all = "camelCase")]
pub struct ResourceLogs {
    #[prost(message, optional, tag = "1")]
    pub resource: Option<Resource>,
    #[prost(message, repeated, tag = "2")]
    pub scope_logs: Vec<ScopeLogs>,
}

#[derive(Clone, PartialEq, prost::Message, serde::Serialize)]
#[serde(rename_all = "camelCase")]
pub struct Resource {
    #[prost(message, repeated, tag = "1")]
    pub attributes: Vec<KeyValue>,
}

#[derive(Clone, PartialEq, prost::Message, serde::Serialize)]
#[serde(rename_all = "camelCase")]
pub struct ScopeLogs {
    #[prost(message, optional, tag = "1")]
    pub scope: Option<InstrumentationScope>,
    #[prost(message, repeated, tag = "2")]
    pub log_records: Vec<LogRecord>,
}

#[derive(Clone, PartialEq, prost::Message, serde::Serialize)]
#[serde(rename_all = "camelCase")]
pub struct InstrumentationScope {
    #[prost(string, tag = "1")]
    pub name: String,
    #[prost(string, tag = "2")]
    pub version: String,
}

#[derive(Clone, PartialEq, prost::Message, serde::Serialize)]
#[serde(rename_all = "camelCase")]
pub struct LogRecord {
    #[prost(fixed64, tag = "1")]
    #[serde(serialize_with = "as_text")]
    pub time_unix_nano: u64,
    #[prost(fixed64, tag = "11")]
    #[serde(serialize_with = "as_text")]
    pub observed_time_unix_nano: u64,
    #[prost(int32, tag = "2")]
    pub severity_number: i32,
    #[prost(string, tag = "3")]
    pub severity_text: String,
    #[prost(message, optional, tag = "5")]
    pub body: Option<AnyValue>,
    #[prost(message, repeated, tag = "6")]
    pub attributes: Vec<KeyValue>,
}

#[derive(Clone, PartialEq, prost::Message, serde::Serialize)]
#[serde(rename_all = "camelCase")]
pub struct KeyValue {
    #[prost(string, tag = "1")]
    pub key: String,
    #[prost(message, optional, tag = "2")]
    pub value: Option<AnyValue>,
}

#[derive(Clone, PartialEq, prost::Message, serde::Serialize)]
#[serde(rename_all = "camelCase")]
pub struct AnyValue {
    #[prost(oneof = "Value", tags = "1, 2, 3, 5, 6")]
    #[serde(flatten)]
    pub value: Option<Value>,
}

#[derive(Clone, PartialEq, prost::Oneof, serde::Serialize)]
#[serde(rename_all = "camelCase")]
pub enum Value {
    #[prost(string, tag = "1")]
    StringValue(String),
    #[prost(bool, tag = "2")]
    BoolValue(bool),
    #[prost(int64, tag = "3")]
    #[serde(serialize_with = "as_text")]
    IntValue(i64),
    #[prost(message, tag = "5")]
    ArrayValue(ArrayValue),
    #[prost(message, tag = "6")]
    KvlistValue(KeyValueList),
}

#[derive(Clone, PartialEq, prost::Message, serde::Serialize)]
#[serde(rename_all = "camelCase")]
pub struct ArrayValue {
    #[prost(message, repeated, tag = "1")]
    pub values: Vec<AnyValue>,
}

#[derive(Clone, PartialEq, prost::Message, serde::Serialize)]
#[serde(rename_all = "camelCase")]
pub struct KeyValueList {
    #[prost(message, repeated, tag = "1")]
    pub values: Vec<KeyValue>,
}

fn any(v: Value) -> Option<AnyValue> {
    Some(AnyValue { value: Some(v) })
}

fn kv(key: &str, v: Value) -> KeyValue {
    KeyValue {
        key: key.to_string(),
        value: any(v),
    }
}

/// Syslog severity 0..=7 as the Collector's syslog parser maps it onto
/// `SeverityNumber` (FATAL, ERROR3, ERROR2, ERROR, WARN, INFO2, INFO, DEBUG).
const SEVERITY_NUMBER: [i32; 8] = [21, 19, 18, 17, 13, 10, 9, 5];

fn nanos(t: SystemTime) -> u64 {
    t.duration_since(UNIX_EPOCH)
        .map(|d| u64::try_from(d.as_nanos()).unwrap_or(u64::MAX))
        .unwrap_or(0)
}

/// A JSON value read as an `AnyValue`'s value: objects as key-value lists, their members
/// in the order they came, a repeated name in its first place with its last value.
struct FromJson(Value);

impl<'de> serde::Deserialize<'de> for FromJson {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        d.deserialize_any(FromJsonVisitor)
    }
}

struct FromJsonVisitor;

impl<'de> serde::de::Visitor<'de> for FromJsonVisitor {
    type Value = FromJson;
    fn expecting(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("a JSON value")
    }
    fn visit_bool<E>(self, b: bool) -> Result<FromJson, E> {
        Ok(FromJson(Value::BoolValue(b)))
    }
    fn visit_i64<E>(self, i: i64) -> Result<FromJson, E> {
        Ok(FromJson(Value::IntValue(i)))
    }
    fn visit_u64<E>(self, u: u64) -> Result<FromJson, E> {
        Ok(FromJson(match i64::try_from(u) {
            Ok(i) => Value::IntValue(i),
            Err(_) => Value::StringValue(serde_json::Number::from(u).to_string()),
        }))
    }
    fn visit_f64<E>(self, f: f64) -> Result<FromJson, E> {
        let n = serde_json::Number::from_f64(f).map(|n| n.to_string());
        Ok(FromJson(Value::StringValue(n.unwrap_or_default())))
    }
    fn visit_str<E>(self, s: &str) -> Result<FromJson, E> {
        Ok(FromJson(Value::StringValue(s.to_string())))
    }
    fn visit_unit<E>(self) -> Result<FromJson, E> {
        Ok(FromJson(Value::StringValue(String::new())))
    }
    fn visit_seq<A: serde::de::SeqAccess<'de>>(self, mut seq: A) -> Result<FromJson, A::Error> {
        let mut values = Vec::new();
        while let Some(FromJson(v)) = seq.next_element()? {
            values.extend(any(v));
        }
        Ok(FromJson(Value::ArrayValue(ArrayValue { values })))
    }
    fn visit_map<A: serde::de::MapAccess<'de>>(self, mut map: A) -> Result<FromJson, A::Error> {
        let mut values: Vec<KeyValue> = Vec::new();
        let mut places = std::collections::HashMap::new();
        while let Some((key, FromJson(v))) = map.next_entry::<String, FromJson>()? {
            match places.get(&key) {
                Some(&at) => values[at] = kv(&key, v),
                None => {
                    places.insert(key.clone(), values.len());
                    values.push(kv(&key, v));
                }
            }
        }
        Ok(FromJson(Value::KvlistValue(KeyValueList { values })))
    }
}

/// A log record's attribute value, borrowed from the message.
enum Attr<'a> {
    Text(&'a str),
    Int(u64),
    True,
    /// Structured data (written as a key-value list of key-value lists).
    Sd(&'a str),
}

/// Where [`otlp_attributes`] puts each attribute.
trait Attributes<'a> {
    fn attribute(&mut self, key: &'static str, value: Attr<'a>);
}

/// As the messages of [`request`].
impl<'a> Attributes<'a> for Vec<KeyValue> {
    fn attribute(&mut self, key: &'static str, value: Attr<'a>) {
        let value = match value {
            Attr::Text(t) => Value::StringValue(t.to_string()),
            Attr::Int(i) => Value::IntValue(i as i64),
            Attr::True => Value::BoolValue(true),
            Attr::Sd(sd) => sd_value(sd),
        };
        self.push(kv(key, value));
    }
}

/// A log record's attributes, in order: the names the Collector's syslog receiver gives
/// them, then hotdog's own.
#[inline(always)]
fn otlp_attributes<'a>(e: &'a Event<'a>, out: &mut impl Attributes<'a>) {
    let m = e.msg;
    for (key, value) in [
        ("hostname", m.hostname),
        ("appname", m.appname),
        ("proc_id", m.procid),
        ("msg_id", m.msgid),
        ("hotdog.peer_addr", e.origin.peer_addr.as_deref()),
        ("hotdog.tls_client_cn", e.origin.tls_client_cn.as_deref()),
    ] {
        if let Some(v) = value {
            out.attribute(key, Attr::Text(v));
        }
    }
    if let Some((f, s)) = m.facility.zip(m.severity) {
        out.attribute("priority", Attr::Int(u64::from(f) * 8 + u64::from(s)));
        out.attribute("facility", Attr::Int(u64::from(f)));
    }
    if let Some(v) = m.version {
        out.attribute("version", Attr::Int(u64::from(v)));
    }
    if let Some(sd) = m.structured_data {
        out.attribute("structured_data", Attr::Sd(sd));
    }
    if e.invalid_utf8 {
        out.attribute("hotdog.invalid_utf8", Attr::True);
    }
}

/// The message's time in nanoseconds since the epoch; 0 when it has none.
fn time_nanos(e: &Event<'_>) -> u64 {
    // An RFC 5424 time is RFC 3339 (the parser checked it): its instant needs no zone.
    match (e.msg.format, e.msg.timestamp) {
        (syslog::Format::Rfc5424, Some(text)) => rfc5424_nanos(text)
            .and_then(|n| u64::try_from(n).ok())
            .unwrap_or(0),
        _ => reference_time_nanos(e),
    }
}

/// [`time_nanos`] by way of [`message_time`], as the request that `otlp_json` writes and
/// the protobuf is tested against has it.
fn reference_time_nanos(e: &Event<'_>) -> u64 {
    with_message_time(e.msg, e.origin, |z| z.timestamp().as_nanosecond())
        .and_then(|n| u64::try_from(n).ok())
        .unwrap_or(0)
}

fn severity_number(m: &Message<'_>) -> i32 {
    m.severity.map_or(0, |s| SEVERITY_NUMBER[usize::from(s)])
}

/// Structured data as the `Value` [`write_sd`] writes.
fn sd_value(sd: &str) -> Value {
    let elements = grouped_sd(sd)
        .into_iter()
        .map(|(id, params)| {
            let params = params
                .into_iter()
                .map(|(name, mut values)| {
                    let value = if values.len() == 1 {
                        Value::StringValue(values.remove(0).into_owned())
                    } else {
                        Value::ArrayValue(ArrayValue {
                            values: values
                                .into_iter()
                                .filter_map(|v| any(Value::StringValue(v.into_owned())))
                                .collect(),
                        })
                    };
                    kv(name, value)
                })
                .collect();
            kv(id, Value::KvlistValue(KeyValueList { values: params }))
        })
        .collect();
    Value::KvlistValue(KeyValueList { values: elements })
}

/// One log record, in one scope (`hotdog`), in one resource (`host.name`: the hostname).
pub fn request(e: &Event<'_>) -> ExportLogsServiceRequest {
    let m = e.msg;
    let mut attributes = Vec::new();
    otlp_attributes(e, &mut attributes);
    let object = json_object(e.body).and_then(|raw| serde_json::from_str(raw).ok());
    let body = match object {
        Some(FromJson(object)) => object,
        None => Value::StringValue(e.body.to_string()),
    };
    let record = LogRecord {
        time_unix_nano: reference_time_nanos(e),
        observed_time_unix_nano: nanos(read_at(e.origin)),
        severity_number: severity_number(m),
        severity_text: m.severity_name().unwrap_or_default().to_string(),
        body: any(body),
        attributes,
    };
    let resource = Resource {
        attributes: m
            .hostname
            .map(|h| vec![kv("host.name", Value::StringValue(h.to_string()))])
            .unwrap_or_default(),
    };
    ExportLogsServiceRequest {
        resource_logs: vec![ResourceLogs {
            resource: Some(resource),
            scope_logs: vec![ScopeLogs {
                scope: Some(InstrumentationScope {
                    name: SCOPE_NAME.into(),
                    version: SCOPE_VERSION.into(),
                }),
                log_records: vec![record],
            }],
        }],
    }
}
