//! Decoding `global.status`: where the status server listens, its TLS and who may use it.

use std::path::PathBuf;

use marked_yaml::Node;

use super::tls::{check_files, decode_tls};
use super::yaml::{flag, Cx, Map};
use super::{Outside, Status};

pub(super) fn decode(cx: &mut Cx<'_>, node: &Node, outside: &Outside<'_>) -> Option<Status> {
    let mut m = Map::new(cx, node, "global.status")?;
    let address = m
        .string(cx, "address")
        .unwrap_or_else(|| "127.0.0.1".into());
    let port = m.number(cx, "port").unwrap_or(8585);
    let tls_at = m.key_position("tls");
    let tls = match m.get("tls") {
        None => Some(None),
        Some(n) => decode_tls(cx, n, "global.status.tls", tls_at).map(Some),
    };
    if let Some(Some(t)) = &tls {
        check_files(cx, outside, t, "global.status.tls");
    }
    let token_file = m.string(cx, "token_file").map(PathBuf::from);
    if let (Some(path), Some(n)) = (&token_file, m.get("token_file")) {
        if let Err(e) = super::secrets::read(path) {
            cx.error(n, format!("`global.status.token_file`: {e}"));
        }
    }
    let open = flag(cx, m.get("open"), "global.status.open", true);
    m.finish(cx);
    Some(Status {
        address,
        port,
        tls: tls?,
        token_file,
        open: open?,
    })
}
