//! Opening the connection to the host: a vsock listener or a virtio-serial port.

use std::fs::{File, OpenOptions};
use std::io::{Read, Write};
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use nixdisk_agent::boot_args::{DEFAULT_SERIAL_PORT, DEFAULT_VSOCK_PORT, VSOCK_WAITING_MARKER};
use nixdisk_agent::protocol::Transport;

use crate::system::{self, SystemError};

/// How long to wait for a virtio-serial port to appear after its module loads.
const SERIAL_APPEAR_TIMEOUT: Duration = Duration::from_secs(10);

/// The connection to the host could not be opened.
#[derive(Debug, thiserror::Error)]
pub enum TransportError {
    /// The vsock listener failed.
    #[error("vsock transport: {0}")]
    Vsock(#[from] SystemError),
    /// The named virtio-serial port never appeared.
    #[error(
        "virtio-serial port {name:?} not found after {}s: neither /dev/virtio-ports/{name} nor a \
         /sys/class/virtio-ports/*/name holding it (is virtio_console loaded, and does QEMU have \
         -device virtserialport,name={name}?)",
        SERIAL_APPEAR_TIMEOUT.as_secs()
    )]
    SerialMissing {
        /// The port name.
        name: String,
    },
    /// The port exists but could not be opened.
    #[error("cannot open virtio-serial port {}: {source}", path.display())]
    SerialOpen {
        /// The device.
        path: PathBuf,
        /// What failed.
        #[source]
        source: std::io::Error,
    },
}

/// Both halves of an open connection.
pub struct Connection {
    /// Frames from the host.
    pub reader: Box<dyn Read + Send>,
    /// Frames to the host.
    pub writer: Box<dyn Write + Send>,
}

/// The transport to use: the one the host named, else the default serial port
/// when it exists, else vsock on the default port.
pub fn choose(named: Option<Transport>) -> Transport {
    if let Some(transport) = named {
        return transport;
    }
    if find_serial_device(Path::new("/"), DEFAULT_SERIAL_PORT).is_some() {
        Transport::Serial {
            name: DEFAULT_SERIAL_PORT.to_owned(),
        }
    } else {
        Transport::Vsock {
            port: DEFAULT_VSOCK_PORT,
        }
    }
}

/// The device node of the virtio-serial port `name` under `root`: the udev
/// link if there is one (there is no udev in the builder), else the node named
/// after the sysfs entry whose `name` file matches.
pub fn find_serial_device(root: &Path, name: &str) -> Option<PathBuf> {
    let link = root.join("dev/virtio-ports").join(name);
    if link.exists() {
        return Some(link);
    }
    let ports = std::fs::read_dir(root.join("sys/class/virtio-ports")).ok()?;
    ports.flatten().find_map(|port| {
        let port_name = std::fs::read_to_string(port.path().join("name")).ok()?;
        (port_name.trim_end() == name).then(|| root.join("dev").join(port.file_name()))
    })
}

/// Opens the connection. Blocks until the host connects (vsock) or the port
/// appears (serial; writes then block until the host side is open).
pub fn connect(transport: &Transport) -> Result<Connection, TransportError> {
    match transport {
        Transport::Vsock { port } => {
            tracing::info!(port, "{VSOCK_WAITING_MARKER}");
            let socket = system::vsock_accept(*port)?;
            let reader = File::from(socket);
            let writer = reader.try_clone().map_err(|errno| {
                TransportError::Vsock(SystemError {
                    what: "duplicate the vsock connection".to_owned(),
                    errno,
                })
            })?;
            Ok(Connection {
                reader: Box::new(reader),
                writer: Box::new(writer),
            })
        }
        Transport::Serial { name } => {
            let path = wait_for_serial(name)?;
            tracing::info!(path = %path.display(), "opening the virtio-serial port");
            let open = || OpenOptions::new().read(true).write(true).open(&path);
            let reader = open().map_err(|source| TransportError::SerialOpen {
                path: path.clone(),
                source,
            })?;
            let writer = reader
                .try_clone()
                .map_err(|source| TransportError::SerialOpen { path, source })?;
            Ok(Connection {
                reader: Box::new(reader),
                writer: Box::new(writer),
            })
        }
        Transport::Stdio => Ok(Connection {
            reader: Box::new(std::io::stdin()),
            writer: Box::new(std::io::stdout()),
        }),
    }
}

fn wait_for_serial(name: &str) -> Result<PathBuf, TransportError> {
    let started = Instant::now();
    loop {
        if let Some(path) = find_serial_device(Path::new("/"), name) {
            return Ok(path);
        }
        if started.elapsed() > SERIAL_APPEAR_TIMEOUT {
            return Err(TransportError::SerialMissing {
                name: name.to_owned(),
            });
        }
        std::thread::sleep(Duration::from_millis(50));
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn finds_a_port_by_its_sysfs_name() {
        let root = tempfile::tempdir().unwrap();
        for (port, name) in [("vport1p1", "other"), ("vport2p1", "org.nixdisk.agent")] {
            let dir = root.path().join("sys/class/virtio-ports").join(port);
            std::fs::create_dir_all(&dir).unwrap();
            std::fs::write(dir.join("name"), format!("{name}\n")).unwrap();
        }
        assert_eq!(
            find_serial_device(root.path(), "org.nixdisk.agent"),
            Some(root.path().join("dev/vport2p1"))
        );
        assert_eq!(find_serial_device(root.path(), "missing"), None);
    }

    #[test]
    fn prefers_the_udev_link() {
        let root = tempfile::tempdir().unwrap();
        std::fs::create_dir_all(root.path().join("dev/virtio-ports")).unwrap();
        std::fs::write(root.path().join("dev/virtio-ports/agent"), "").unwrap();
        assert_eq!(
            find_serial_device(root.path(), "agent"),
            Some(root.path().join("dev/virtio-ports/agent"))
        );
    }
}
