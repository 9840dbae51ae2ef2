//! Running as a systemd service: hotdog tells systemd (`Type=notify`) when it is ready and when
//! it stops. The packaging itself is tested by dev/package-test.sh (it installs the package).

use std::os::unix::net::UnixDatagram;
use std::time::Duration;

use crate::util::{config_yaml, Hotdog, Proxy};

#[test]
fn tells_systemd_when_it_is_ready_and_when_it_stops() {
    let dir = tempfile::tempdir().expect("temp dir");
    let path = dir.path().join("notify.sock");
    let socket = UnixDatagram::bind(&path).expect("bind the notify socket");
    socket
        .set_read_timeout(Some(Duration::from_secs(20)))
        .expect("timeout");
    // No broker is needed to be ready: hotdog starts without one.
    let nowhere = Proxy::bind();
    let yaml = config_yaml(&nowhere.addr(), "", "");
    let notify = path.to_string_lossy().into_owned();
    let hotdog = Hotdog::start_config_env(&yaml, &[("NOTIFY_SOCKET", &notify)]);
    let mut buf = [0u8; 256];
    let n = socket.recv(&mut buf).expect("READY=1 from hotdog");
    assert_eq!(&buf[..n], b"READY=1\n");
    // Ready means listening: the listener is there to connect to.
    std::net::TcpStream::connect(hotdog.addr()).expect("listening once ready");
    let (status, err) = hotdog.stop();
    assert!(status.success(), "{err}");
    let n = socket.recv(&mut buf).expect("STOPPING=1 from hotdog");
    assert_eq!(&buf[..n], b"STOPPING=1\n");
}
