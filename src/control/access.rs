//! Who may use the status server: its TLS (with client certificates, like the listeners'), its
//! bearer token, and which requests need either. `POST /reload` changes state and needs
//! authentication when some is configured; with none, it is served only on a loopback address
//! (hotdog 0.5's configurations, which had no authentication, keep their `/stats`). The token
//! and the TLS files are read again on every reload.

use std::sync::{Arc, RwLock};

use hotdog_stages::config::{read_secret, Status};

use crate::listen::tls::Acceptor;

/// What a request asks for.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Asks {
    /// `/`, `/health`, `/metrics`, `/stats`: reading.
    Read,
    /// `POST /reload`, `GET /tap`: changing state, or seeing log records.
    Control,
}

/// What is done with a request.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Verdict {
    Allow,
    /// 401: no valid token and no verified client certificate.
    Unauthorized,
    /// 403: turned off, and why.
    Forbidden(String),
}

/// The status server's access rules, shared by its connections and the reloads.
pub struct Access {
    settings: Status,
    token: RwLock<Option<Arc<str>>>,
    tls: Option<Arc<Acceptor>>,
}

impl Access {
    /// Reads the token and the TLS files `settings` names.
    pub fn new(settings: &Status) -> Result<Access, String> {
        let token = match &settings.token_file {
            Some(path) => Some(read_secret(path)?.into()),
            None => None,
        };
        let tls = match &settings.tls {
            Some(t) => Some(Arc::new(Acceptor::new(t.clone())?)),
            None => None,
        };
        Ok(Access {
            settings: settings.clone(),
            token: RwLock::new(token),
            tls,
        })
    }

    /// The TLS acceptor, when the server speaks TLS.
    pub fn tls(&self) -> Option<&Arc<Acceptor>> {
        self.tls.as_ref()
    }

    /// Reads the token file and the TLS files again (blocks: call it off the executor). On an
    /// error the old ones stay in use, and the error is logged.
    pub fn reload(&self) {
        if let Some(path) = &self.settings.token_file {
            match read_secret(path) {
                Ok(t) => {
                    *self.token.write().unwrap_or_else(|p| p.into_inner()) = Some(t.into());
                    log::info!(
                        "status server: read its token from {} again",
                        path.display()
                    );
                }
                Err(e) => log::error!("status server: keeping its token: {e}"),
            }
        }
        if let Some(a) = &self.tls {
            match a.reload() {
                Ok(()) => log::info!("status server: reloaded {}", a.settings().cert.display()),
                Err(e) => {
                    log::error!("status server: TLS reload failed, keeping the old files: {e}")
                }
            }
        }
    }

    /// The verdict on a request asking `asks`, carrying `authorization` (the header's value),
    /// over a connection whose client certificate was verified or not.
    pub fn judge(&self, asks: Asks, authorization: Option<&[u8]>, verified: bool) -> Verdict {
        let authenticates = self.settings.authenticates();
        if !authenticates {
            return match (asks, self.settings.control_off()) {
                (Asks::Control, Some(why)) => Verdict::Forbidden(why),
                _ => Verdict::Allow,
            };
        }
        if asks == Asks::Read && self.settings.open {
            return Verdict::Allow;
        }
        if verified || self.token_matches(authorization) {
            Verdict::Allow
        } else {
            Verdict::Unauthorized
        }
    }

    /// Whether `authorization` is `Bearer <the token>`, compared in time that does not depend
    /// on where they differ.
    fn token_matches(&self, authorization: Option<&[u8]>) -> bool {
        let token = self.token.read().unwrap_or_else(|p| p.into_inner()).clone();
        let (Some(token), Some(given)) = (token, authorization) else {
            return false;
        };
        let Some(given) = strip_bearer(given) else {
            return false;
        };
        let want = token.as_bytes();
        given.len() == want.len()
            && given
                .iter()
                .zip(want)
                .fold(0u8, |diff, (a, b)| diff | (a ^ b))
                == 0
    }
}

/// The credentials of `Bearer <credentials>` (the scheme in any case, RFC 9110 11.1).
fn strip_bearer(value: &[u8]) -> Option<&[u8]> {
    let (scheme, rest) = value.split_at_checked(7)?;
    scheme
        .eq_ignore_ascii_case(b"bearer ")
        .then(|| rest.trim_ascii())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn access(
        address: &str,
        token: Option<&str>,
        open: bool,
    ) -> (Access, Option<tempfile::TempDir>) {
        let dir = token.map(|t| {
            let dir = tempfile::tempdir().expect("temp dir");
            std::fs::write(dir.path().join("token"), format!("{t}\n")).expect("write token");
            dir
        });
        let settings = Status {
            address: address.into(),
            port: 0,
            tls: None,
            token_file: dir.as_ref().map(|d| d.path().join("token")),
            open,
        };
        (Access::new(&settings).expect("access"), dir)
    }

    #[test]
    fn without_authentication_control_is_served_on_loopback_only() {
        for (address, control) in [
            ("127.0.0.1", true),
            ("::1", true),
            ("[::1]", true),
            ("localhost", true),
            ("0.0.0.0", false),
            ("10.1.2.3", false),
            ("status.example.com", false),
        ] {
            let (a, _dir) = access(address, None, true);
            assert_eq!(
                a.judge(Asks::Read, None, false),
                Verdict::Allow,
                "{address}"
            );
            let verdict = a.judge(Asks::Control, None, false);
            assert_eq!(verdict == Verdict::Allow, control, "{address}: {verdict:?}");
            if !control {
                assert!(matches!(verdict, Verdict::Forbidden(why) if why.contains("token_file")));
            }
        }
    }

    #[test]
    fn a_token_is_needed_for_control_and_for_reading_when_not_open() {
        for open in [true, false] {
            let (a, _dir) = access("0.0.0.0", Some("s3cret-token"), open);
            let good: &[u8] = b"Bearer s3cret-token";
            for (given, ok) in [
                (None, false),
                (Some(good), true),
                (Some(b"bearer s3cret-token".as_slice()), true),
                (Some(b"Bearer s3cret-tokem".as_slice()), false),
                (Some(b"Bearer s3cret-token-and-more".as_slice()), false),
                (Some(b"Basic s3cret-token".as_slice()), false),
                (Some(b"Bearer".as_slice()), false),
                (Some(b"s3cret-token".as_slice()), false),
            ] {
                let want = if ok {
                    Verdict::Allow
                } else {
                    Verdict::Unauthorized
                };
                assert_eq!(a.judge(Asks::Control, given, false), want, "{given:?}");
                let read = if open { Verdict::Allow } else { want.clone() };
                assert_eq!(
                    a.judge(Asks::Read, given, false),
                    read,
                    "{given:?} open {open}"
                );
            }
            // A verified client certificate is enough.
            assert_eq!(a.judge(Asks::Control, None, true), Verdict::Allow);
        }
    }

    #[test]
    fn a_reload_reads_the_token_again_and_keeps_it_when_the_file_is_bad() {
        let (a, dir) = access("127.0.0.1", Some("first"), false);
        let path = dir.as_ref().expect("dir").path().join("token");
        std::fs::write(&path, "second\n").expect("write");
        a.reload();
        assert_eq!(
            a.judge(Asks::Control, Some(b"Bearer first"), false),
            Verdict::Unauthorized
        );
        assert_eq!(
            a.judge(Asks::Control, Some(b"Bearer second"), false),
            Verdict::Allow
        );
        std::fs::write(&path, "\n").expect("write");
        a.reload();
        assert_eq!(
            a.judge(Asks::Control, Some(b"Bearer second"), false),
            Verdict::Allow
        );
    }
}
