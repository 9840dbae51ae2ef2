//! A listener's `quota:`: how many lines and bytes a second each sender (a source address, a
//! TLS client, or any key made of the connection's facts) may send, and what happens to the
//! rest.

use std::time::Duration;

use marked_yaml::Node;

use super::yaml::{scalar, size, unknown_name, Cx, Map};
use super::Protocol;
use crate::core::Origin;
use crate::route::template::{Segment, Template, Templates};

/// `global.listen[].quota`.
#[derive(Debug, Clone, PartialEq)]
pub struct Quota {
    /// `lines`: lines a second per key. Default: no limit on lines.
    pub lines: Option<u64>,
    /// `bytes`: bytes a second per key (a size: `1MB`, `512KiB`). Default: no limit on bytes.
    pub bytes: Option<u64>,
    /// `burst`: how far above the rate a key may go at once, as time at the rate. Default 1 s.
    pub burst: Duration,
    /// `key`: what a sender is: `source` (default), `tls_client_cn`, or a template of the
    /// connection's facts.
    pub key: QuotaKey,
    /// `over`: `wait` (default; UDP cannot) or `drop`.
    pub over: Over,
}

/// What is done with a line over the quota.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Over {
    /// The connection is read more slowly: TCP and RELP push back on that sender alone.
    Wait,
    /// The line is dropped and counted (`quota.dropped`), its key in the top list.
    Drop,
}

/// A quota's key: text and the connection's facts, joined.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct QuotaKey {
    /// As written.
    pub source: String,
    pub parts: Vec<KeyPart>,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum KeyPart {
    Text(String),
    Var(KeyVar),
}

/// A fact of the connection a key can name.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum KeyVar {
    /// The sender's IP address (the one a PROXY header names, behind a load balancer).
    Source,
    /// The sender's `address:port`.
    PeerAddr,
    /// The subject common name of a verified TLS client certificate.
    TlsClientCn,
    /// Its subject alternative DNS names.
    TlsClientSan,
    /// The `address:port` of the listener.
    Listener,
}

impl KeyVar {
    pub const NAMES: [&'static str; 5] = [
        "source",
        "peer_addr",
        "tls_client_cn",
        "tls_client_san",
        "listener",
    ];

    fn from_name(name: &str) -> Option<KeyVar> {
        Some(match name {
            "source" => KeyVar::Source,
            "peer_addr" => KeyVar::PeerAddr,
            "tls_client_cn" => KeyVar::TlsClientCn,
            "tls_client_san" => KeyVar::TlsClientSan,
            "listener" => KeyVar::Listener,
            _ => return None,
        })
    }
}

impl QuotaKey {
    /// The key of a connection (or a datagram's sender); a fact it lacks is empty.
    pub fn of(&self, origin: &Origin) -> String {
        let mut key = String::new();
        for part in &self.parts {
            match part {
                KeyPart::Text(t) => key.push_str(t),
                KeyPart::Var(v) => key.push_str(match v {
                    KeyVar::Source => origin.peer_addr.as_deref().map_or("", |a| source_of(a)),
                    KeyVar::PeerAddr => origin.peer_addr.as_deref().unwrap_or(""),
                    KeyVar::TlsClientCn => origin.tls_client_cn.as_deref().unwrap_or(""),
                    KeyVar::TlsClientSan => origin.tls_client_san.as_deref().unwrap_or(""),
                    KeyVar::Listener => origin.listener.as_deref().unwrap_or(""),
                }),
            }
        }
        key
    }

    /// Whether the key names the sender's address, which a UDP datagram changes.
    pub fn per_sender(&self) -> bool {
        self.parts.iter().any(|p| {
            matches!(
                p,
                KeyPart::Var(KeyVar::Source) | KeyPart::Var(KeyVar::PeerAddr)
            )
        })
    }
}

/// The IP address of `address:port` (`[v6]:port` too).
fn source_of(peer: &str) -> &str {
    let host = peer.rsplit_once(':').map_or(peer, |(h, _)| h);
    host.trim_start_matches('[').trim_end_matches(']')
}

/// The most a quota's rate may be (lines or bytes a second).
const MAX_RATE: u64 = 1 << 40;

pub(super) fn decode(
    cx: &mut Cx<'_>,
    node: &Node,
    what: &str,
    protocol: Option<&Protocol>,
) -> Option<Quota> {
    let mut m = Map::new(cx, node, what)?;
    let lines = match m.get("lines") {
        None => Some(None),
        Some(_) => rate(cx, &mut m, "lines").map(Some),
    };
    let bytes = match m.get("bytes") {
        None => Some(None),
        Some(n) => {
            let at = m.path("bytes");
            size(cx, n, &at)
                .and_then(|b| in_range(cx, n, &at, b))
                .map(Some)
        }
    };
    let burst = m
        .duration_at_most(
            cx,
            "burst",
            Duration::from_secs(3600),
            Duration::from_secs(1),
        )
        .and_then(|d| {
            if d < Duration::from_millis(1) {
                if let Some(n) = m.get("burst") {
                    cx.error(n, format!("`{}` must be at least 1ms", m.path("burst")));
                }
                return None;
            }
            Some(d)
        });
    let key = match m.get("key") {
        None => Some(QuotaKey {
            source: "source".into(),
            parts: vec![KeyPart::Var(KeyVar::Source)],
        }),
        Some(n) => decode_key(cx, n, &m.path("key")),
    };
    let over = match m.get("over") {
        None => Some(Over::Wait),
        Some(n) => match scalar(cx, n, &m.path("over"))?.as_str() {
            "wait" => Some(Over::Wait),
            "drop" => Some(Over::Drop),
            other => {
                cx.error(n, unknown_name("over", other, &["wait", "drop"]));
                None
            }
        },
    };
    if matches!(over, Some(Over::Wait)) && matches!(protocol, Some(Protocol::Udp)) {
        let at = m.path("over");
        cx.error(
            m.get("over").unwrap_or(node),
            format!(
                "`{at}` must be `drop` on a UDP listener (a datagram cannot be made to wait; \
                 the default, `wait`, is for TCP, TLS and RELP)"
            ),
        );
    }
    if m.get("lines").is_none() && m.get("bytes").is_none() {
        cx.error(
            node,
            format!("`{what}` needs `lines`, `bytes` or both (per second, per key)"),
        );
    }
    m.finish(cx);
    Some(Quota {
        lines: lines?,
        bytes: bytes?,
        burst: burst?,
        key: key?,
        over: over?,
    })
}

fn rate(cx: &mut Cx<'_>, m: &mut Map<'_>, key: &'static str) -> Option<u64> {
    let n: u64 = m.number(cx, key)?;
    let node = m.get(key)?;
    in_range(cx, node, &m.path(key), n)
}

fn in_range(cx: &mut Cx<'_>, node: &Node, what: &str, n: u64) -> Option<u64> {
    if !(1..=MAX_RATE).contains(&n) {
        cx.error(
            node,
            format!("`{what}` must be from 1 to {MAX_RATE} a second, found {n}"),
        );
        return None;
    }
    Some(n)
}

/// `source`, `tls_client_cn` (a fact's name alone), or a template such as
/// `{{tls_client_cn}}@{{source}}`.
fn decode_key(cx: &mut Cx<'_>, node: &Node, what: &str) -> Option<QuotaKey> {
    let text = scalar(cx, node, what)?;
    if let Some(v) = KeyVar::from_name(text.trim()) {
        return Some(QuotaKey {
            source: text,
            parts: vec![KeyPart::Var(v)],
        });
    }
    // The rules' template syntax, compiled by the rules' compiler; a key takes plain
    // `{{name}}` placeholders only (no helpers: it is made for every connection).
    let segments = match Templates::new().compile(&text) {
        Ok(Template::Simple(segments)) => segments,
        Ok(Template::Literal(_) | Template::Text(_)) => Vec::new(),
        Ok(Template::Handlebars(_)) => {
            cx.error(
                node,
                format!(
                    "`{what}` may hold only `{{{{name}}}}` placeholders, not helpers or blocks"
                ),
            );
            return None;
        }
        Err(e) => {
            cx.error(node, format!("`{what}`: {e}"));
            return None;
        }
    };
    let mut parts = Vec::new();
    for segment in segments {
        match segment {
            Segment::Text(t) => parts.push(KeyPart::Text(t)),
            Segment::Var(name) => match KeyVar::from_name(&name) {
                Some(v) => parts.push(KeyPart::Var(v)),
                None => {
                    cx.error(
                        node,
                        format!(
                            "`{what}`: {}",
                            unknown_name("key variable", &name, &KeyVar::NAMES)
                        ),
                    );
                    return None;
                }
            },
        }
    }
    if !parts.iter().any(|p| matches!(p, KeyPart::Var(_))) {
        cx.error(
            node,
            format!(
                "`{what}` names no fact of the connection, so every sender would share one \
                 quota; expected one of {} or a template such as `{{{{tls_client_cn}}}}`",
                KeyVar::NAMES.join(", ")
            ),
        );
        return None;
    }
    Some(QuotaKey {
        source: text,
        parts,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn origin(peer: &str) -> Origin {
        Origin {
            peer_addr: Some(peer.into()),
            tls_client_cn: Some("web-1".into()),
            listener: Some("0.0.0.0:6514".into()),
            ..Origin::default()
        }
    }

    #[test]
    fn a_key_is_made_of_the_connections_facts() {
        let key = |parts: Vec<KeyPart>| QuotaKey {
            source: String::new(),
            parts,
        };
        let o = origin("10.1.2.3:5514");
        assert_eq!(key(vec![KeyPart::Var(KeyVar::Source)]).of(&o), "10.1.2.3");
        assert_eq!(
            key(vec![KeyPart::Var(KeyVar::Source)]).of(&origin("[2001:db8::1]:514")),
            "2001:db8::1"
        );
        let k = key(vec![
            KeyPart::Var(KeyVar::TlsClientCn),
            KeyPart::Text("@".into()),
            KeyPart::Var(KeyVar::Listener),
        ]);
        assert_eq!(k.of(&o), "web-1@0.0.0.0:6514");
        assert!(!k.per_sender());
        assert!(key(vec![KeyPart::Var(KeyVar::PeerAddr)]).per_sender());
        assert_eq!(k.of(&Origin::default()), "@");
    }
}
