//! The commands that ask a running hotdog (`hotdog tap`, `hotdog top`): one `GET` to its status
//! server over HTTP or HTTPS, with the bearer token where it has one.

use std::sync::Arc;

use futures_lite::{AsyncRead, AsyncWrite};
use http_body_util::BodyExt;
use hyper::body::{Bytes, Incoming};
use rustls::pki_types::ServerName;

use crate::base::runtime;

/// A status server: where it is, and the TLS to speak to it (HTTPS).
pub struct Server {
    /// `HOST:PORT`.
    pub address: String,
    pub tls: Option<Arc<rustls::ClientConfig>>,
}

impl Server {
    /// The server of `url`, `http://HOST:PORT` or `https://HOST:PORT`; `tls` makes the client
    /// configuration an `https` URL needs.
    pub fn of(
        url: &str,
        tls: impl FnOnce() -> Result<Arc<rustls::ClientConfig>, String>,
    ) -> Result<Server, String> {
        let (address, secure) = match (url.strip_prefix("http://"), url.strip_prefix("https://")) {
            (Some(a), _) => (a, false),
            (_, Some(a)) => (a, true),
            _ => {
                return Err(format!(
                    "the status server's URL must be http://HOST:PORT or https://HOST:PORT, \
                     found {url}"
                ))
            }
        };
        Ok(Server {
            address: address.trim_end_matches('/').to_string(),
            tls: if secure { Some(tls()?) } else { None },
        })
    }

    /// The host part of the address, without the brackets of an IPv6 address: the name its
    /// certificate must have.
    fn host(&self) -> &str {
        let host = self
            .address
            .rsplit_once(':')
            .map_or(self.address.as_str(), |(h, _)| h);
        host.trim_start_matches('[').trim_end_matches(']')
    }
}

/// A connection to the status server, plain or TLS.
trait Io: AsyncRead + AsyncWrite + Unpin + Send {}
impl<T: AsyncRead + AsyncWrite + Unpin + Send> Io for T {}

/// An answer whose body is still to be read; the connection is driven until it is dropped.
pub struct Answer {
    pub status: hyper::StatusCode,
    pub body: Incoming,
    _driving: smol::Task<()>,
}

impl Answer {
    /// The whole body, read.
    pub async fn bytes(self) -> Result<Bytes, String> {
        read_body(self.body).await
    }

    /// `Ok` when the server said yes; otherwise what it answered, as an error.
    pub async fn success(self) -> Result<Answer, String> {
        if self.status.is_success() {
            return Ok(self);
        }
        let status = self.status;
        let body = self.bytes().await.unwrap_or_default();
        Err(refused(status, &body))
    }
}

/// What a status server that said no answered, as an error.
pub fn refused(status: hyper::StatusCode, body: &[u8]) -> String {
    let text = String::from_utf8_lossy(body);
    format!("the status server answered {status}: {}", text.trim())
}

async fn read_body(body: Incoming) -> Result<Bytes, String> {
    body.collect()
        .await
        .map(|b| b.to_bytes())
        .map_err(|e| format!("the answer broke off: {e}"))
}

/// An HTTP/1.1 connection to `server`, and the task that drives it (it ends when dropped).
async fn connect(server: &Server) -> Result<(Sender, smol::Task<()>), String> {
    let address = server.address.as_str();
    let stream = smol::net::TcpStream::connect(address)
        .await
        .map_err(|e| format!("cannot connect to the status server at {address}: {e}"))?;
    let io: Box<dyn Io> = match &server.tls {
        None => Box::new(stream),
        Some(config) => {
            let name = ServerName::try_from(server.host().to_string())
                .map_err(|e| format!("{}: not a name to verify: {e}", server.host()))?;
            let tls = futures_rustls::TlsConnector::from(config.clone())
                .connect(name, stream)
                .await
                .map_err(|e| format!("TLS with the status server at {address}: {e}"))?;
            Box::new(tls)
        }
    };
    let (sender, connection) =
        hyper::client::conn::http1::handshake(smol_hyper::rt::FuturesIo::new(io))
            .await
            .map_err(|e| format!("status server at {address}: {e}"))?;
    let driving = runtime::spawn(async move {
        let _ = connection.await;
    });
    Ok((sender, driving))
}

type Sender = hyper::client::conn::http1::SendRequest<http_body_util::Empty<Bytes>>;

/// `GET path` on `sender`'s connection: the status and the body, still to be read.
async fn request(
    sender: &mut Sender,
    server: &Server,
    token: Option<&str>,
    path: &str,
) -> Result<(hyper::StatusCode, Incoming), String> {
    let address = server.address.as_str();
    let mut request = hyper::Request::get(path).header(hyper::header::HOST, address);
    if let Some(t) = token {
        request = request.header(hyper::header::AUTHORIZATION, format!("Bearer {t}"));
    }
    let request = request
        .body(http_body_util::Empty::<Bytes>::new())
        .map_err(|e| e.to_string())?;
    let response = sender
        .send_request(request)
        .await
        .map_err(|e| format!("status server at {address}: {e}"))?;
    Ok((response.status(), response.into_body()))
}

/// `GET path` (with its query) from `server`, on a connection of its own (a tap's answer
/// lasts as long as the tap).
pub async fn get(server: &Server, token: Option<&str>, path: &str) -> Result<Answer, String> {
    let (mut sender, driving) = connect(server).await?;
    let (status, body) = request(&mut sender, server, token, path).await?;
    Ok(Answer {
        status,
        body,
        _driving: driving,
    })
}

/// Requests to one status server over one kept connection (`hotdog top` asks every second),
/// made again when the server has closed it.
pub struct Client<'s> {
    server: &'s Server,
    token: Option<&'s str>,
    open: Option<(Sender, smol::Task<()>)>,
}

impl<'s> Client<'s> {
    pub fn new(server: &'s Server, token: Option<&'s str>) -> Self {
        Client {
            server,
            token,
            open: None,
        }
    }

    /// `GET path`: the status and the whole body.
    pub async fn get(&mut self, path: &str) -> Result<(hyper::StatusCode, Bytes), String> {
        // A kept connection the server closed meanwhile fails at once: once more on a new one.
        for fresh in [false, true] {
            let open = match self.open.take() {
                Some(open) if !fresh && !open.0.is_closed() => open,
                _ => connect(self.server).await?,
            };
            let (mut sender, driving) = open;
            match request(&mut sender, self.server, self.token, path).await {
                Ok((status, body)) => {
                    let body = read_body(body).await?;
                    self.open = Some((sender, driving));
                    return Ok((status, body));
                }
                Err(e) if fresh => return Err(e),
                Err(_) => {}
            }
        }
        Err("the status server closed the connection".into())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_url_names_the_server_and_whether_it_speaks_tls() {
        let none = || Err("no TLS asked for".to_string());
        let plain = Server::of("http://127.0.0.1:8585/", none).expect("http");
        assert_eq!(
            (plain.address.as_str(), plain.tls.is_none()),
            ("127.0.0.1:8585", true)
        );
        let e = Server::of("https://[::1]:8585", none).err();
        assert_eq!(e.as_deref(), Some("no TLS asked for"));
        let v6 = Server::of("http://[::1]:8585", none).expect("v6");
        assert_eq!(v6.host(), "::1");
        let e = Server::of("ftp://x:1", none).err().unwrap_or_default();
        assert!(e.contains("http://HOST:PORT or https://HOST:PORT"), "{e}");
    }
}
