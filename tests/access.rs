//! Who may use the status server: a bearer token, client certificates over TLS, and `POST
//! /reload` turned off where other hosts reach it without either.

use std::net::TcpStream;
use std::time::Duration;

use crate::util::{cert_path, config_yaml, http_over, run_hotdog, tls_connect, Hotdog, Proxy};

/// hotdog (no broker: the status server needs none) whose `global.status` is `status`.
fn start(status: &str) -> (Proxy, Hotdog) {
    let nowhere = Proxy::bind();
    let yaml = config_yaml(&nowhere.addr(), "", "")
        .replace("  status:\n    address: '127.0.0.1'\n    port: 0\n", status);
    (nowhere, Hotdog::start_config(&yaml))
}

/// A plain HTTP request with `headers`: (code, head, body).
fn plain(hotdog: &Hotdog, method: &str, path: &str, headers: &str) -> (u16, String, String) {
    let mut s = TcpStream::connect(("127.0.0.1", hotdog.status_port)).expect("connect");
    s.set_read_timeout(Some(Duration::from_secs(10)))
        .expect("timeout");
    http_over(&mut s, method, path, headers)
}

/// The configuration generation, read with `headers` (the token, where one is needed).
fn generation(hotdog: &Hotdog, headers: &str) -> i64 {
    let (code, _, body) = plain(hotdog, "GET", "/stats", headers);
    assert_eq!(code, 200, "{body}");
    let v: serde_json::Value = serde_json::from_str(&body).expect("stats JSON");
    v["stats"]["config.generation"]
        .as_i64()
        .expect("config.generation")
}

#[test]
fn a_request_without_the_token_gets_401_and_changes_nothing() {
    let dir = tempfile::tempdir().expect("temp dir");
    let token = dir.path().join("token");
    std::fs::write(&token, "first-secret-token\n").expect("write token");
    let status = format!(
        "  status:\n    address: '0.0.0.0'\n    port: 0\n    token_file: '{}'\n    open: false\n",
        token.display()
    );
    let (_nowhere, hotdog) = start(&status);
    let good = "Authorization: Bearer first-secret-token\r\n";
    assert_eq!(generation(&hotdog, good), 1);

    for (headers, what) in [
        ("", "no token"),
        (
            "Authorization: Bearer first-secret-tokem\r\n",
            "a wrong token",
        ),
        (
            "Authorization: Basic Zmlyc3Qtc2VjcmV0LXRva2Vu\r\n",
            "another scheme",
        ),
    ] {
        let (code, head, _) = plain(&hotdog, "POST", "/reload", headers);
        assert_eq!(code, 401, "POST /reload with {what}: {head}");
        assert!(
            head.contains("WWW-Authenticate: Bearer") || head.contains("www-authenticate: Bearer"),
            "{head}"
        );
        let (code, _, _) = plain(&hotdog, "GET", "/stats", headers);
        assert_eq!(code, 401, "GET /stats with {what} (open: false)");
    }
    assert_eq!(
        generation(&hotdog, good),
        1,
        "a refused reload changed nothing"
    );
    assert!(
        !hotdog.stderr().contains("reloaded "),
        "{}",
        hotdog.stderr()
    );

    let (code, _, body) = plain(&hotdog, "POST", "/reload", good);
    assert_eq!(code, 200, "{body}");
    assert_eq!(generation(&hotdog, good), 2);

    // A SIGHUP reads the token file again: the new token works, the old one no longer does.
    std::fs::write(&token, "second-secret-token\n").expect("write token");
    hotdog.signal("HUP");
    let new = "Authorization: Bearer second-secret-token\r\n";
    let health = |headers| plain(&hotdog, "GET", "/health", headers).0;
    assert!(crate::util::wait_until(Duration::from_secs(10), || health(
        new
    )
        != 401));
    assert_eq!(health(good), 401);
    assert_eq!(plain(&hotdog, "POST", "/reload", good).0, 401);
    // 1 at start, the POST /reload, the SIGHUP.
    assert!(crate::util::wait_until(
        Duration::from_secs(10),
        || generation(&hotdog, new) == 3
    ));
    assert!(
        !hotdog.stderr().contains("second-secret-token"),
        "the log never shows the token"
    );
}

#[test]
fn without_authentication_reload_is_off_where_other_hosts_can_reach_it() {
    let (_nowhere, hotdog) = start("  status:\n    address: '0.0.0.0'\n    port: 0\n");
    let (code, _, body) = plain(&hotdog, "POST", "/reload", "");
    assert_eq!(code, 403, "{body}");
    assert!(body.contains("token_file"), "{body}");
    // Reading stays open, as in hotdog 0.5.
    assert_eq!(generation(&hotdog, ""), 1);
    assert!(
        hotdog.stderr().contains("POST /reload is off"),
        "{}",
        hotdog.stderr()
    );
    // A SIGHUP still reloads.
    hotdog.signal("HUP");
    assert!(hotdog.wait_log("reloaded ", Duration::from_secs(10)));
    assert_eq!(generation(&hotdog, ""), 2);

    // --check says so, and --strict refuses it.
    let config = hotdog.config.display().to_string();
    let (code, _, err) = run_hotdog(&["--check", "-c", &config]);
    assert_eq!(code, 0, "{err}");
    assert!(err.contains("warning: POST /reload is off"), "{err}");
    let (code, _, err) = run_hotdog(&["--check", "--strict", "-c", &config]);
    assert_eq!(code, 2, "{err}");

    // On loopback it is served without authentication, as before.
    let (_nowhere, local) = start("  status:\n    address: '127.0.0.1'\n    port: 0\n");
    assert_eq!(plain(&local, "POST", "/reload", "").0, 200);
}

#[test]
fn over_tls_a_verified_client_certificate_authenticates() {
    let status = format!(
        "  status:\n    address: '0.0.0.0'\n    port: 0\n    tls:\n      cert: '{}'\n      key: '{}'\n      ca: '{}'\n      client_auth: optional\n",
        cert_path("server.pem"),
        cert_path("server.key"),
        cert_path("ca.pem")
    );
    let (_nowhere, hotdog) = start(&status);
    assert!(
        hotdog.stderr().contains("status server on https://"),
        "{}",
        hotdog.stderr()
    );
    let addr = format!("127.0.0.1:{}", hotdog.status_port);
    let over_tls = |client: Option<&str>, method: &str, path: &str| {
        let mut s = tls_connect(&addr, client).expect("TLS handshake");
        http_over(&mut s, method, path, "").0
    };
    assert_eq!(
        over_tls(None, "GET", "/stats"),
        200,
        "reading is open by default"
    );
    assert_eq!(over_tls(None, "POST", "/reload"), 401);
    assert_eq!(over_tls(Some("client"), "POST", "/reload"), 200);
    // A certificate from another CA is refused at the handshake or by the first read.
    let refused = tls_connect(&addr, Some("untrusted"))
        .map(|mut s| http_over(&mut s, "POST", "/reload", "").0)
        .unwrap_or(0);
    assert_ne!(refused, 200);
    // Plain HTTP to the TLS port gets no answer.
    let (code, _, _) = plain(&hotdog, "GET", "/stats", "");
    assert_eq!(code, 0);
}
