//! vsock through `vhost-device-vsock`: its command line, and the host side
//! of its Unix-socket handshake (`CONNECT <port>\n` answered by `OK <n>\n`).

use std::ffi::OsString;
use std::path::Path;

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::UnixStream;

use super::{BoxedStream, Error, TransportKind};

/// The daemon's arguments: one VM with its vhost-user socket and host socket.
pub fn daemon_args(guest_cid: u32, vhost_socket: &Path, uds_path: &Path) -> Vec<OsString> {
    let mut vm = OsString::from(format!("guest-cid={guest_cid},socket="));
    vm.push(vhost_socket);
    vm.push(",uds-path=");
    vm.push(uds_path);
    vec!["--vm".into(), vm]
}

/// Connects to the daemon's host socket and asks for the guest's `port`.
///
/// The daemon closes the connection when nothing listens on the port yet,
/// which we report as [`Error::NotReachable`] for the caller to retry.
pub async fn connect(uds_path: &Path, port: u32) -> Result<BoxedStream, Error> {
    let fail = |reason: String| Error::NotReachable {
        kind: TransportKind::VhostUserVsock,
        address: format!("{} port {port}", uds_path.display()),
        reason,
    };
    let mut stream = UnixStream::connect(uds_path)
        .await
        .map_err(|e| fail(e.to_string()))?;
    stream
        .write_all(format!("CONNECT {port}\n").as_bytes())
        .await
        .map_err(|e| fail(e.to_string()))?;
    // Read the reply byte by byte: what follows the newline is agent data.
    let mut reply = Vec::new();
    loop {
        let mut byte = [0u8; 1];
        let n = stream
            .read(&mut byte)
            .await
            .map_err(|e| fail(e.to_string()))?;
        if n == 0 {
            return Err(fail("the guest is not listening yet".into()));
        }
        if byte[0] == b'\n' {
            break;
        }
        reply.push(byte[0]);
        if reply.len() > 64 {
            return Err(fail(format!(
                "unexpected reply {:?}",
                String::from_utf8_lossy(&reply)
            )));
        }
    }
    if parse_ok(&reply) {
        Ok(Box::new(stream))
    } else {
        Err(fail(format!(
            "unexpected reply {:?}",
            String::from_utf8_lossy(&reply)
        )))
    }
}

/// Whether a reply line (without its newline) is `OK <number>`.
pub fn parse_ok(line: &[u8]) -> bool {
    std::str::from_utf8(line)
        .ok()
        .and_then(|l| l.strip_prefix("OK "))
        .is_some_and(|n| n.trim().parse::<u32>().is_ok())
}
