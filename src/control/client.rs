//! The commands that ask a running hotdog (`hotdog tap`, `hotdog top`): one `GET` to its status
//! server over plain HTTP, with the bearer token where it has one.

use http_body_util::BodyExt;
use hyper::body::{Bytes, Incoming};

use crate::base::runtime;

/// An answer whose body is still to be read; the connection is driven until it is dropped.
pub struct Answer {
    pub status: hyper::StatusCode,
    pub body: Incoming,
    _driving: smol::Task<()>,
}

impl Answer {
    /// The whole body, read.
    pub async fn bytes(self) -> Result<Bytes, String> {
        self.body
            .collect()
            .await
            .map(|b| b.to_bytes())
            .map_err(|e| format!("the answer broke off: {e}"))
    }

    /// `Ok` when the server said yes; otherwise what it answered, as an error.
    pub async fn success(self) -> Result<Answer, String> {
        if self.status.is_success() {
            return Ok(self);
        }
        let status = self.status;
        let text = self
            .bytes()
            .await
            .map(|b| String::from_utf8_lossy(&b).trim().to_string())
            .unwrap_or_default();
        Err(format!("the status server answered {status}: {text}"))
    }
}

/// `GET path` (with its query) from the status server at `address` (`HOST:PORT`).
pub async fn get(address: &str, token: Option<&str>, path: &str) -> Result<Answer, String> {
    let stream = smol::net::TcpStream::connect(address)
        .await
        .map_err(|e| format!("cannot connect to the status server at {address}: {e}"))?;
    let (mut sender, connection) =
        hyper::client::conn::http1::handshake(smol_hyper::rt::FuturesIo::new(stream))
            .await
            .map_err(|e| format!("status server at {address}: {e}"))?;
    let driving = runtime::spawn(async move {
        let _ = connection.await;
    });
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
    let status = response.status();
    Ok(Answer {
        status,
        body: response.into_body(),
        _driving: driving,
    })
}
