//! Decoding `tls:` settings, a listener's or the status server's.

use std::path::PathBuf;
use std::time::Duration;

use marked_yaml::Node;

use super::yaml::{scalar, Cx, Map};
use super::{ClientAuth, Outside, Tls};

/// `tls:` settings; `at` is where the `tls` key is, for errors about the files it names.
pub(super) fn decode_tls(
    cx: &mut Cx<'_>,
    node: &Node,
    what: &str,
    at: (usize, usize),
) -> Option<Tls> {
    let mut m = Map::new(cx, node, what)?;
    let cert = m.required_string(cx, "cert");
    let key = m.required_string(cx, "key");
    let ca = m.string(cx, "ca").map(PathBuf::from);
    let client_auth = match m.get("client_auth") {
        None => Some(ClientAuth::Required),
        Some(n) => match scalar(cx, n, &m.path("client_auth")).as_deref() {
            Some("required") => Some(ClientAuth::Required),
            Some("optional") => Some(ClientAuth::Optional),
            Some(other) => {
                cx.error(
                    n,
                    format!("unknown client_auth `{other}`; expected `required` or `optional`"),
                );
                None
            }
            None => None,
        },
    };
    if ca.is_none() {
        if let Some(n) = m.get("client_auth") {
            cx.error(
                n,
                format!("`{what}.client_auth` needs a `ca` to verify clients against"),
            );
        }
    }
    let handshake_timeout = m.duration_at_most(
        cx,
        "handshake_timeout",
        super::MAX_TIMEOUT,
        Duration::from_secs(10),
    );
    m.finish(cx);
    Some(Tls {
        cert: cert?.into(),
        key: key?.into(),
        ca,
        client_auth: client_auth?,
        handshake_timeout: handshake_timeout?,
        at,
    })
}

/// Whether the files `tls` names load (asked of `outside`); an error is located at its `tls`
/// key and named `what`.
pub(super) fn check_files(cx: &mut Cx<'_>, outside: &Outside<'_>, tls: &Tls, what: &str) {
    if let Err(e) = (outside.check_tls)(tls) {
        cx.errors.push(super::ConfigError {
            file: cx.file.to_string(),
            line: tls.at.0,
            column: tls.at.1,
            message: format!("{what}: {e}"),
        });
    }
}
