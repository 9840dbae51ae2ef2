//! The HTTP status server: `/stats` as JSON (hotdog 0.5's format), `/metrics` in the Prometheus
//! text format, `/health`, and `POST /reload` (reloads the configuration, answers with the
//! outcome).
//!
//! HTTP is hyper's (on smol through smol-hyper), on a thread and executor of its own so that a
//! busy pipeline never delays `/health`. Nothing a client sends can stop or stall it: headers are
//! limited to [`MAX_HEADER_BYTES`] (431), a request with a body is answered 413 without reading
//! it, a client gets [`HEADER_TIMEOUT`] to send its headers and [`CONNECTION_TIME`] in all, at most
//! [`MAX_CONNECTIONS`] are served at once (more are closed at once, counted in `status.refused`),
//! and an accept that fails (out of file descriptors) is retried, never fatal
//! ([`crate::listen::accept`], as for the syslog listeners).

use std::convert::Infallible;
use std::rc::Rc;
use std::sync::atomic::Ordering::Relaxed;
use std::sync::Arc;
use std::time::Duration;

use futures_lite::FutureExt;
use http_body_util::Full;
use hyper::body::{Body, Bytes, Incoming};
use hyper::header::{HeaderValue, CONNECTION, CONTENT_TYPE};
use hyper::{Method, Request, Response, StatusCode};
use serde::Serialize;
use smol::net::{TcpListener, TcpStream};
use smol::LocalExecutor;
use smol_hyper::rt::{FuturesIo, SmolTimer};

use crate::base::metrics::Metrics;
use crate::base::throttle;
use crate::publish::Health;

/// Connections served at once; more are closed as soon as they are accepted.
pub const MAX_CONNECTIONS: usize = 64;
/// Bytes of request line and headers (hyper's read buffer).
pub const MAX_HEADER_BYTES: usize = 16 * 1024;
/// Time a client has to send a request's headers, on a new or a kept-alive connection.
pub const HEADER_TIMEOUT: Duration = Duration::from_secs(5);
/// Time a connection may stay open in all, whatever it does.
pub const CONNECTION_TIME: Duration = Duration::from_secs(30);

/// What the status server reports on.
pub struct Sources {
    pub metrics: Arc<Metrics>,
    pub health: Arc<Health>,
    /// Where `POST /reload` asks for a reload.
    pub reload: crate::control::reload::Requests,
    pub last_reload_error: Arc<crate::control::reload::LastError>,
}

#[derive(Serialize)]
struct StatsBody {
    message: &'static str,
    version: &'static str,
    stats: std::collections::BTreeMap<String, i64>,
    /// Why the last reload changed nothing, until one succeeds.
    #[serde(skip_serializing_if = "Option::is_none")]
    last_reload_error: Option<String>,
}

/// The answer to `POST /reload`.
#[derive(Serialize)]
struct ReloadBody {
    ok: bool,
    /// The generation in use after the reload.
    generation: u64,
    #[serde(flatten)]
    report: Option<crate::control::reload::Report>,
    #[serde(skip_serializing_if = "Vec::is_empty")]
    errors: Vec<String>,
}

/// Binds `address` and serves until the process exits, on its own thread. Returns the address
/// bound (port 0 picks a free one).
pub fn serve(address: &str, sources: Sources) -> std::io::Result<String> {
    let listener = std::net::TcpListener::bind(address)?;
    let bound = listener.local_addr()?.to_string();
    let listener = TcpListener::try_from(listener)?;
    std::thread::Builder::new()
        .name("status".into())
        .spawn(move || {
            let sources = Rc::new(sources);
            let executor = Rc::new(LocalExecutor::new());
            smol::block_on(executor.run(accept_loop(listener, executor.clone(), sources)));
        })?;
    Ok(bound)
}

async fn accept_loop(
    listener: TcpListener,
    executor: Rc<LocalExecutor<'static>>,
    sources: Rc<Sources>,
) {
    let open = Rc::new(std::cell::Cell::new(0usize));
    loop {
        let (stream, peer) = crate::listen::accept(&listener, "status server").await;
        if open.get() >= MAX_CONNECTIONS {
            sources.metrics.status_refused.fetch_add(1, Relaxed);
            throttle::REFUSED.warn(format_args!(
                "status server: {MAX_CONNECTIONS} connections open, closed the one from {peer}"
            ));
            continue;
        }
        open.set(open.get() + 1);
        let open = open.clone();
        let sources = sources.clone();
        executor
            .spawn(async move {
                serve_connection(stream, sources).await;
                open.set(open.get() - 1);
            })
            .detach();
    }
}

async fn serve_connection(stream: TcpStream, sources: Rc<Sources>) {
    let service = hyper::service::service_fn(move |request| {
        let sources = sources.clone();
        async move { Ok::<_, Infallible>(respond(&request, &sources).await) }
    });
    let connection = hyper::server::conn::http1::Builder::new()
        .timer(SmolTimer::new())
        .header_read_timeout(HEADER_TIMEOUT)
        .max_buf_size(MAX_HEADER_BYTES)
        .serve_connection(FuturesIo::new(stream), service);
    let served = async { Some(connection.await) }
        .or(async {
            smol::Timer::after(CONNECTION_TIME).await;
            None
        })
        .await;
    if let Some(Err(e)) = served {
        log::debug!("status connection: {e}");
    }
}

async fn respond(request: &Request<Incoming>, sources: &Sources) -> Response<Full<Bytes>> {
    // No request takes a body: one announced is refused unread, and the connection closed, so
    // a client cannot make the server read or wait for it.
    let body = request.body();
    if !body.is_end_stream() && body.size_hint().upper() != Some(0) {
        let mut response = text(
            "no request takes a body\n".into(),
            StatusCode::PAYLOAD_TOO_LARGE,
        );
        response
            .headers_mut()
            .insert(CONNECTION, HeaderValue::from_static("close"));
        return response;
    }
    match (request.method(), request.uri().path()) {
        (&Method::GET, "/stats") => json(&StatsBody {
            message: "hotdog is running",
            version: env!("CARGO_PKG_VERSION"),
            stats: sources.metrics.snapshot(),
            last_reload_error: sources.last_reload_error.get(),
        }),
        (&Method::GET, "/metrics") => with_type(
            text(
                crate::base::metrics::prometheus(&sources.metrics),
                StatusCode::OK,
            ),
            "text/plain; version=0.0.4",
        ),
        (&Method::GET, "/health") => {
            let (mut body, code) = match sources.health.get() {
                Ok(()) => (
                    "ok: a Kafka broker is reachable\n".to_string(),
                    StatusCode::OK,
                ),
                Err(reason) => (
                    format!("unavailable: {reason}\n"),
                    StatusCode::SERVICE_UNAVAILABLE,
                ),
            };
            // A failed reload leaves hotdog running on the configuration it had: worth
            // saying, not a reason to be taken out of service.
            if let Some(note) = sources.health.notes() {
                body.push_str(&format!("{note}\n"));
            }
            let generation = sources.metrics.config_generation.load(Relaxed);
            body.push_str(&format!("configuration generation {generation}\n"));
            if let Some(e) = sources.last_reload_error.get() {
                body.push_str(&format!("last reload failed:\n{e}\n"));
            }
            text(body, code)
        }
        (&Method::POST, "/reload") => reload(sources).await,
        (&Method::GET, "/") => text(
            "hotdog status server: /stats /metrics /health; POST /reload\n".into(),
            StatusCode::OK,
        ),
        _ => text("not found\n".into(), StatusCode::NOT_FOUND),
    }
}

/// Reloads the configuration and answers with what changed (200) or why nothing did (422).
async fn reload(sources: &Sources) -> Response<Full<Bytes>> {
    let outcome = sources.reload.reload().await;
    let generation = sources.metrics.config_generation.load(Relaxed);
    let (body, code) = match outcome {
        None => return text("shutting down\n".into(), StatusCode::SERVICE_UNAVAILABLE),
        Some(Ok(report)) => (
            ReloadBody {
                ok: true,
                generation,
                report: Some(report),
                errors: Vec::new(),
            },
            StatusCode::OK,
        ),
        Some(Err(errors)) => (
            ReloadBody {
                ok: false,
                generation,
                report: None,
                errors,
            },
            StatusCode::UNPROCESSABLE_ENTITY,
        ),
    };
    let mut response = json(&body);
    *response.status_mut() = code;
    response
}

fn with_type(mut r: Response<Full<Bytes>>, content_type: &'static str) -> Response<Full<Bytes>> {
    r.headers_mut()
        .insert(CONTENT_TYPE, HeaderValue::from_static(content_type));
    r
}

fn text(body: String, code: StatusCode) -> Response<Full<Bytes>> {
    let mut response = Response::new(Full::new(Bytes::from(body)));
    *response.status_mut() = code;
    response
}

fn json<T: Serialize>(body: &T) -> Response<Full<Bytes>> {
    let text = serde_json::to_vec(body).unwrap_or_default();
    with_type(
        Response::new(Full::new(Bytes::from(text))),
        "application/json",
    )
}
