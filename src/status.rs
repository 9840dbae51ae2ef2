//! The HTTP status server (tiny_http, on its own thread): `/stats` as JSON (hotdog 0.5's
//! format), `/metrics` in the Prometheus text format, `/health`.

use std::sync::Arc;

use serde::Serialize;
use tiny_http::{Header, Method, Response, Server};

use crate::metrics::Metrics;
use crate::publisher::Health;

/// What the status server reports on.
pub struct Sources {
    pub metrics: Arc<Metrics>,
    pub health: Arc<Health>,
}

#[derive(Serialize)]
struct StatsBody {
    message: &'static str,
    version: &'static str,
    stats: std::collections::BTreeMap<String, i64>,
}

/// Binds `address` and serves until the process exits, on its own thread. Returns the address
/// bound (port 0 picks a free one).
pub fn serve(address: &str, sources: Sources) -> std::io::Result<String> {
    let server = Server::http(address).map_err(std::io::Error::other)?;
    let bound = server
        .server_addr()
        .to_ip()
        .map_or_else(|| address.to_string(), |a| a.to_string());
    std::thread::Builder::new()
        .name("status".into())
        .spawn(move || {
            for request in server.incoming_requests() {
                let path = request.url().split('?').next().unwrap_or("");
                let response = match (request.method(), path) {
                    (Method::Get, "/stats") => json(&StatsBody {
                        message: "hotdog is running",
                        version: env!("CARGO_PKG_VERSION"),
                        stats: sources.metrics.snapshot(),
                    }),
                    (Method::Get, "/metrics") => with_type(
                        text(crate::metrics::prometheus(&sources.metrics), 200),
                        "text/plain; version=0.0.4",
                    ),
                    (Method::Get, "/health") => match sources.health.get() {
                        Ok(()) => text("ok: a Kafka broker is reachable\n".into(), 200),
                        Err(reason) => text(format!("unavailable: {reason}\n"), 503),
                    },
                    (Method::Get, "/") => text(
                        "hotdog status server: /stats /metrics /health\n".into(),
                        200,
                    ),
                    _ => text("not found\n".into(), 404),
                };
                if let Err(e) = request.respond(response) {
                    log::debug!("status response failed: {e}");
                }
            }
        })?;
    Ok(bound)
}

fn with_type(
    r: Response<std::io::Cursor<Vec<u8>>>,
    content_type: &str,
) -> Response<std::io::Cursor<Vec<u8>>> {
    match Header::from_bytes("Content-Type", content_type) {
        Ok(h) => r.with_header(h),
        Err(()) => r,
    }
}

fn text(body: String, code: u16) -> Response<std::io::Cursor<Vec<u8>>> {
    Response::from_string(body).with_status_code(code)
}

fn json<T: Serialize>(body: &T) -> Response<std::io::Cursor<Vec<u8>>> {
    let text = serde_json::to_vec(body).unwrap_or_default();
    with_type(Response::from_data(text), "application/json")
}
