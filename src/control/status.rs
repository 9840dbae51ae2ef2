//! The HTTP status server: `/stats` as JSON (hotdog 0.5's format), `/metrics` in the Prometheus
//! text format, `/health`, and `POST /reload` (reloads the configuration, answers with the
//! outcome).
//!
//! Who may ask what is [`crate::control::access`]'s: with `global.status.tls` the server speaks
//! TLS (client certificates verified like a listener's), with `token_file` a request may carry
//! `Authorization: Bearer TOKEN`; a request that needs either and has neither is answered 401
//! and changes nothing.
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
use hyper::header::{HeaderValue, AUTHORIZATION, CONNECTION, CONTENT_TYPE, WWW_AUTHENTICATE};
use hyper::{Method, Request, Response, StatusCode};
use serde::Serialize;
use smol::io::{AsyncRead, AsyncWrite};
use smol::net::{TcpListener, TcpStream};
use smol::LocalExecutor;
use smol_hyper::rt::{FuturesIo, SmolTimer};

use crate::base::metrics::Metrics;
use crate::base::throttle;
use crate::control::access::{Access, Asks, Verdict};
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
    /// Who may ask what, and the TLS to speak.
    pub access: Arc<Access>,
    /// What `GET /tap` streams.
    pub taps: Arc<crate::base::tap::Taps>,
}

/// A response's body: whole, or a tap's stream.
type Reply = http_body_util::Either<Full<Bytes>, crate::control::tap::TapBody>;

#[derive(Serialize)]
struct StatsBody {
    message: &'static str,
    version: &'static str,
    stats: std::collections::BTreeMap<String, i64>,
    /// The delivery latency histogram, as `/metrics` has it: `hotdog top` takes its
    /// percentiles from the difference between two readings.
    latency_ms: Latency,
    /// Why the last reload changed nothing, until one succeeds.
    #[serde(skip_serializing_if = "Option::is_none")]
    last_reload_error: Option<String>,
}

/// Line read → Kafka acknowledgement, in milliseconds, since start.
#[derive(Serialize, serde::Deserialize, Debug, Clone, Default, PartialEq)]
pub struct Latency {
    /// `[upper bound, records at most that slow]`, cumulative, the last bound's count lower
    /// than `count` by the records slower than every bound.
    pub buckets: Vec<(u64, u64)>,
    pub count: u64,
    pub sum: u64,
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
            // The accept loop is a task of its own, polled when a connection comes: as the
            // future `run` waits for, it was polled whenever any task woke the thread (each
            // write of a tap), and each poll cost an accept(2) that found nobody (for which
            // the kernel makes and frees a socket).
            executor
                .spawn(accept_loop(listener, executor.clone(), sources))
                .detach();
            smol::block_on(executor.run(std::future::pending::<()>()));
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
                match sources.access.tls().cloned() {
                    None => serve_connection(stream, sources, false).await,
                    Some(tls) => serve_tls(stream, &tls, sources, peer).await,
                }
                open.set(open.get() - 1);
            })
            .detach();
    }
}

/// Finishes a TLS handshake within the `tls` settings' handshake timeout, then serves the
/// connection; `verified` when the client presented a certificate the CA vouches for.
async fn serve_tls(
    stream: TcpStream,
    tls: &crate::listen::tls::Acceptor,
    sources: Rc<Sources>,
    peer: std::net::SocketAddr,
) {
    match tls.accept_within(stream).await {
        Some(Ok(stream)) => {
            let verified = stream
                .get_ref()
                .1
                .peer_certificates()
                .is_some_and(|c| !c.is_empty());
            serve_connection(stream, sources, verified).await;
        }
        Some(Err(e)) => log::debug!("status server: TLS handshake with {peer} failed: {e}"),
        None => log::debug!("status server: {peer} did not finish its TLS handshake in time"),
    }
}

async fn serve_connection<S>(stream: S, sources: Rc<Sources>, verified: bool)
where
    S: AsyncRead + AsyncWrite + Unpin + 'static,
{
    // When the connection is cut off: CONNECTION_TIME from now, or later while a tap streams.
    let until = Rc::new(std::cell::Cell::new(
        std::time::Instant::now() + CONNECTION_TIME,
    ));
    let deadline = until.clone();
    let service = hyper::service::service_fn(move |request| {
        let (sources, until) = (sources.clone(), until.clone());
        async move { Ok::<_, Infallible>(respond(&request, &sources, verified, &until).await) }
    });
    let connection = hyper::server::conn::http1::Builder::new()
        .timer(SmolTimer::new())
        .header_read_timeout(HEADER_TIMEOUT)
        .max_buf_size(MAX_HEADER_BYTES)
        .serve_connection(FuturesIo::new(stream), service);
    let served = async { Some(connection.await) }
        .or(async {
            // The deadline may move while this waits (a tap began): wait again until it holds.
            while std::time::Instant::now() < deadline.get() {
                smol::Timer::at(deadline.get()).await;
            }
            None
        })
        .await;
    if let Some(Err(e)) = served {
        log::debug!("status connection: {e}");
    }
}

async fn respond(
    request: &Request<Incoming>,
    sources: &Sources,
    verified: bool,
    until: &std::cell::Cell<std::time::Instant>,
) -> Response<Reply> {
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
        return response.map(Reply::Left);
    }
    let asks = match (request.method(), request.uri().path()) {
        (&Method::POST, "/reload") | (&Method::GET, "/tap") => Asks::Control,
        _ => Asks::Read,
    };
    let authorization = request.headers().get(AUTHORIZATION).map(|v| v.as_bytes());
    match sources.access.judge(asks, authorization, verified) {
        Verdict::Allow => {}
        Verdict::Unauthorized => {
            let mut response = text(
                "authentication needed: a bearer token or a client certificate\n".into(),
                StatusCode::UNAUTHORIZED,
            );
            response.headers_mut().insert(
                WWW_AUTHENTICATE,
                HeaderValue::from_static("Bearer realm=\"hotdog\""),
            );
            return response.map(Reply::Left);
        }
        Verdict::Forbidden(why) => {
            return text(format!("{why}\n"), StatusCode::FORBIDDEN).map(Reply::Left)
        }
    }
    if (request.method(), request.uri().path()) == (&Method::GET, "/tap") {
        return tap(request, sources, until);
    }
    answer(request, sources).await.map(Reply::Left)
}

/// `GET /tap`: streams what the tap keeps, and lets the connection live as long as it does.
fn tap(
    request: &Request<Incoming>,
    sources: &Sources,
    until: &std::cell::Cell<std::time::Instant>,
) -> Response<Reply> {
    let opened = crate::control::tap::parse(request.uri().query())
        .map_err(|e| (e, StatusCode::BAD_REQUEST))
        .and_then(|r| {
            crate::control::tap::open(&sources.taps, r)
                .map_err(|e| (e, StatusCode::TOO_MANY_REQUESTS))
        });
    match opened {
        Ok((body, ends)) => {
            until.set(until.get().max(ends + Duration::from_secs(5)));
            let mut response = Response::new(Reply::Right(body));
            response.headers_mut().insert(
                CONTENT_TYPE,
                HeaderValue::from_static("application/x-ndjson"),
            );
            response
        }
        Err((e, code)) => text(format!("{e}\n"), code).map(Reply::Left),
    }
}

/// The answers that are whole: everything but `/tap`.
async fn answer(request: &Request<Incoming>, sources: &Sources) -> Response<Full<Bytes>> {
    match (request.method(), request.uri().path()) {
        (&Method::GET, "/stats") => json(&StatsBody {
            message: "hotdog is running",
            version: env!("CARGO_PKG_VERSION"),
            stats: sources.metrics.snapshot(),
            latency_ms: {
                let (buckets, count, sum) = sources.metrics.latency.read();
                Latency {
                    buckets,
                    count,
                    sum,
                }
            },
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
            "hotdog status server: /stats /metrics /health /tap; POST /reload\n".into(),
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
