//! TLS for the listeners (RFC 5425): loading certificates and keys, verifying client
//! certificates, reloading on SIGHUP, and reading who a verified client is.

use std::path::Path;
use std::sync::{Arc, RwLock};

use futures_rustls::TlsAcceptor;
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer};
use rustls::server::WebPkiClientVerifier;
use rustls::{RootCertStore, ServerConfig};

use hotdog_stages::config::{ClientAuth, Tls};

/// Who a client said it is, from its verified certificate.
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub struct ClientIdentity {
    /// The subject's common name.
    pub common_name: Option<String>,
    /// The subject alternative names of type DNS.
    pub dns_names: Vec<String>,
}

/// The longest certificate, key or CA file.
const MAX_FILE: u64 = 16 << 20;

/// A TLS file's bytes, read within the configuration's read timeout.
fn read(path: &Path, what: &str) -> Result<Vec<u8>, String> {
    hotdog_stages::config::read_bounded(path, MAX_FILE)
        .map_err(|e| format!("cannot read {what} from {}: {e}", path.display()))
}

fn read_certs(path: &Path) -> Result<Vec<CertificateDer<'static>>, String> {
    let pem = read(path, "certificates")?;
    let certs: Vec<_> = CertificateDer::pem_slice_iter(&pem)
        .collect::<Result<_, _>>()
        .map_err(|e| format!("bad certificate PEM in {}: {e}", path.display()))?;
    if certs.is_empty() {
        return Err(format!("no certificate found in {}", path.display()));
    }
    Ok(certs)
}

/// The private key in `path`: PKCS#8, PKCS#1 (RSA) and SEC1 (EC) keys are all recognized from
/// their PEM labels.
fn read_key(path: &Path) -> Result<PrivateKeyDer<'static>, String> {
    PrivateKeyDer::from_pem_slice(&read(path, "a private key")?)
        .map_err(|e| format!("cannot read a private key from {}: {e}", path.display()))
}

/// The CA certificates in `ca`, as the roots a peer's certificate is checked against.
fn read_roots(ca: &Path) -> Result<RootCertStore, String> {
    let mut roots = RootCertStore::empty();
    for cert in read_certs(ca)? {
        roots
            .add(cert)
            .map_err(|e| format!("bad CA certificate in {}: {e}", ca.display()))?;
    }
    Ok(roots)
}

fn unusable(cert: &Path, key: &Path, e: rustls::Error) -> String {
    format!(
        "{} and {} do not make a usable certificate: {e}",
        cert.display(),
        key.display()
    )
}

/// Builds a server configuration from the files `tls` names. Reads the files every time, so that
/// a reload sees new ones.
pub fn server_config(tls: &Tls) -> Result<Arc<ServerConfig>, String> {
    let certs = read_certs(&tls.cert)?;
    let key = read_key(&tls.key)?;
    let builder = ServerConfig::builder();
    let builder = match &tls.ca {
        None => builder.with_no_client_auth(),
        Some(ca) => {
            let verifier = WebPkiClientVerifier::builder(Arc::new(read_roots(ca)?));
            let verifier = match tls.client_auth {
                ClientAuth::Required => verifier,
                ClientAuth::Optional => verifier.allow_unauthenticated(),
            };
            let verifier = verifier
                .build()
                .map_err(|e| format!("cannot verify clients with {}: {e}", ca.display()))?;
            builder.with_client_cert_verifier(verifier)
        }
    };
    let mut config = builder
        .with_single_cert(certs, key)
        .map_err(|e| unusable(&tls.cert, &tls.key, e))?;
    // No TLS 1.3 session tickets: syslog senders do not resume sessions, and a ticket the sender
    // never reads makes its kernel answer a plain close with a reset, which throws away the
    // lines still waiting in our receive buffer.
    config.send_tls13_tickets = 0;
    Ok(Arc::new(config))
}

/// A client configuration for `hotdog tap` and `hotdog top` over HTTPS: it trusts the servers
/// whose certificate `ca` vouches for, and presents `identity` (certificate and key files) when
/// given.
pub fn client_config(
    ca: &Path,
    identity: Option<(&Path, &Path)>,
) -> Result<Arc<rustls::ClientConfig>, String> {
    let builder = rustls::ClientConfig::builder().with_root_certificates(read_roots(ca)?);
    let config = match identity {
        None => builder.with_no_client_auth(),
        Some((cert, key)) => builder
            .with_client_auth_cert(read_certs(cert)?, read_key(key)?)
            .map_err(|e| unusable(cert, key, e))?,
    };
    Ok(Arc::new(config))
}

/// Whether the files `tls` names make a usable server configuration; for
/// [`hotdog_stages::config::Config::load`], so that bad files are configuration errors with the others.
pub fn check(tls: &Tls) -> Result<(), String> {
    server_config(tls).map(|_| ())
}

/// The acceptor of one TLS listener; [`Acceptor::reload`] swaps in new files for new connections.
pub struct Acceptor {
    settings: Tls,
    current: RwLock<TlsAcceptor>,
}

impl Acceptor {
    pub fn new(settings: Tls) -> Result<Acceptor, String> {
        let config = server_config(&settings)?;
        Ok(Acceptor {
            settings,
            current: RwLock::new(TlsAcceptor::from(config)),
        })
    }

    /// The acceptor for a new connection.
    pub fn get(&self) -> TlsAcceptor {
        match self.current.read() {
            Ok(a) => a.clone(),
            Err(p) => p.into_inner().clone(),
        }
    }

    /// Re-reads the certificate, key and CA. On error the old ones stay in use.
    pub fn reload(&self) -> Result<(), String> {
        let config = server_config(&self.settings)?;
        let mut current = self.current.write().unwrap_or_else(|p| p.into_inner());
        *current = TlsAcceptor::from(config);
        Ok(())
    }

    pub fn settings(&self) -> &Tls {
        &self.settings
    }

    /// The server side of a TLS handshake on `stream`, given `handshake_timeout` to finish:
    /// `None` when it did not.
    pub async fn accept_within<S>(
        &self,
        stream: S,
    ) -> Option<std::io::Result<futures_rustls::server::TlsStream<S>>>
    where
        S: futures_lite::AsyncRead + futures_lite::AsyncWrite + Unpin,
    {
        use futures_lite::FutureExt;
        let timeout = self.settings.handshake_timeout;
        async { Some(self.get().accept(stream).await) }
            .or(async {
                smol::Timer::after(timeout).await;
                None
            })
            .await
    }
}

/// Reads the subject CN and SAN DNS names of the client's (verified) leaf certificate.
pub fn client_identity(certs: Option<&[CertificateDer<'_>]>) -> ClientIdentity {
    let Some(leaf) = certs.and_then(|c| c.first()) else {
        return ClientIdentity::default();
    };
    let Ok((_, cert)) = x509_parser::parse_x509_certificate(leaf.as_ref()) else {
        return ClientIdentity::default();
    };
    let common_name = cert
        .subject()
        .iter_common_name()
        .next()
        .and_then(|cn| cn.as_str().ok())
        .map(str::to_string);
    let dns_names = match cert.subject_alternative_name() {
        Ok(Some(san)) => san
            .value
            .general_names
            .iter()
            .filter_map(|n| match n {
                x509_parser::extensions::GeneralName::DNSName(d) => Some(d.to_string()),
                _ => None,
            })
            .collect(),
        _ => Vec::new(),
    };
    ClientIdentity {
        common_name,
        dns_names,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::path::PathBuf;
    use std::time::Duration;

    fn certs(name: &str) -> PathBuf {
        PathBuf::from(env!("CARGO_MANIFEST_DIR"))
            .join("certs")
            .join(name)
    }

    fn settings(cert: &str, key: &str, ca: Option<&str>) -> Tls {
        Tls {
            cert: certs(cert),
            key: certs(key),
            ca: ca.map(certs),
            client_auth: ClientAuth::Required,
            handshake_timeout: Duration::from_secs(10),
            at: (0, 0),
        }
    }

    #[test]
    fn every_key_format_loads() {
        // SEC1 EC, PKCS#8 EC, PKCS#1 RSA.
        for (cert, key) in [
            ("server.pem", "server.key"),
            ("server2.pem", "server2.key"),
            ("client-rsa.pem", "client-rsa.key"),
        ] {
            let r = server_config(&settings(cert, key, Some("ca.pem")));
            assert!(r.is_ok(), "{key}: {:?}", r.err());
        }
    }

    #[test]
    fn bad_files_say_which_and_why() {
        let e = server_config(&settings("server.pem", "nope.key", None)).unwrap_err();
        assert!(e.contains("nope.key"), "{e}");
        let e = server_config(&settings("server.pem", "client.key", None)).unwrap_err();
        assert!(e.contains("do not make a usable certificate"), "{e}");
        let e = server_config(&settings("generate.sh", "server.key", None)).unwrap_err();
        assert!(e.contains("no certificate found"), "{e}");
    }

    #[test]
    fn identity_of_a_client_certificate() {
        let cert = CertificateDer::pem_file_iter(certs("client.pem"))
            .unwrap()
            .next()
            .unwrap()
            .unwrap();
        let id = client_identity(Some(&[cert]));
        assert_eq!(id.common_name.as_deref(), Some("tenant-a"));
        assert_eq!(id.dns_names, ["tenant-a.example.com", "a.example.net"]);
        assert_eq!(client_identity(None), ClientIdentity::default());
    }
}
