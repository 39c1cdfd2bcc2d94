//! The application's side of the pod: blocking TCP and HTTP/1.1 clients run
//! inside the pod's namespace (not as UID 1337, so iptables captures them),
//! and the retry loop the checks use.

use std::io::{Read, Write};
use std::net::{SocketAddr, TcpStream as StdStream};
use std::time::{Duration, Instant};

use crate::netns::in_netns;

/// Blocking round trip from the current namespace: write, half-close, read
/// to the end.
fn roundtrip_std(to: SocketAddr, msg: &str) -> std::io::Result<String> {
    let mut s = StdStream::connect_timeout(&to, Duration::from_secs(3))?;
    s.set_read_timeout(Some(Duration::from_secs(5)))?;
    s.write_all(msg.as_bytes())?;
    s.shutdown(std::net::Shutdown::Write)?;
    let mut out = String::new();
    s.read_to_string(&mut out)?;
    Ok(out)
}

/// Retries `f` until it returns `Some` or the deadline passes.
pub(crate) fn eventually<T>(what: &str, mut f: impl FnMut() -> Result<T, String>) -> T {
    let deadline = Instant::now() + Duration::from_secs(20);
    loop {
        match f() {
            Ok(v) => return v,
            Err(e) if Instant::now() > deadline => panic!("{what}: {e}"),
            Err(_) => std::thread::sleep(Duration::from_millis(100)),
        }
    }
}

/// From the pod namespace, as the application (not UID 1337).
pub(crate) fn app_roundtrip(pod: &str, to: &str, msg: &str) -> Result<String, String> {
    let to: SocketAddr = to.parse().expect("addr");
    let msg = msg.to_string();
    in_netns(pod, move || {
        roundtrip_std(to, &msg).map_err(|e| e.to_string())
    })
}

/// One HTTP/1.1 request; the response is read until the server closes
/// (`Connection: close`), without half-closing first.
pub(crate) fn app_http_get(pod: &str, to: &str, host: &str) -> Result<String, String> {
    let to: SocketAddr = to.parse().expect("addr");
    let req = format!("GET / HTTP/1.1\r\nHost: {host}\r\nConnection: close\r\n\r\n");
    in_netns(pod, move || {
        let get = || -> std::io::Result<String> {
            let mut s = StdStream::connect_timeout(&to, Duration::from_secs(3))?;
            s.set_read_timeout(Some(Duration::from_secs(5)))?;
            s.write_all(req.as_bytes())?;
            let mut out = String::new();
            s.read_to_string(&mut out)?;
            Ok(out)
        };
        get().map_err(|e| e.to_string())
    })
}
