//! The HTTP status server: `/stats` as JSON. Runs on its own thread (tiny_http).

use std::sync::Arc;

use serde::Serialize;
use tiny_http::{Header, Method, Response, Server};

use crate::metrics::Metrics;

#[derive(Serialize)]
struct StatsBody {
    message: &'static str,
    version: &'static str,
    stats: std::collections::BTreeMap<String, i64>,
}

/// Binds `address` and serves until the process exits.
pub fn serve(
    address: &str,
    metrics: Arc<Metrics>,
) -> Result<std::thread::JoinHandle<()>, Box<dyn std::error::Error + Send + Sync>> {
    let server = Server::http(address)?;
    let handle = std::thread::Builder::new()
        .name("status".into())
        .spawn(move || {
            for request in server.incoming_requests() {
                let path = request.url().split('?').next().unwrap_or("");
                let response = match (request.method(), path) {
                    (Method::Get, "/stats") => {
                        let body = StatsBody {
                            message: "hotdog is running",
                            version: env!("CARGO_PKG_VERSION"),
                            stats: metrics.snapshot(),
                        };
                        json(&body)
                    }
                    (Method::Get, "/") => Response::from_string("hotdog status server\n"),
                    _ => Response::from_string("not found\n").with_status_code(404),
                };
                if let Err(e) = request.respond(response) {
                    log::debug!("status response failed: {e}");
                }
            }
        })?;
    Ok(handle)
}

fn json<T: Serialize>(body: &T) -> Response<std::io::Cursor<Vec<u8>>> {
    let text = serde_json::to_vec(body).unwrap_or_default();
    let mut r = Response::from_data(text);
    if let Ok(h) = Header::from_bytes("Content-Type", "application/json") {
        r.add_header(h);
    }
    r
}
