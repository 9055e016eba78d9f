//! A QMP client on QEMU's Unix socket (the `qapi` crate): status, graceful
//! powerdown, quit, and the events that tell how a VM ended.

use std::path::Path;
use std::time::Duration;

use futures::StreamExt;
use qapi::futures::{QapiService, QmpStreamTokio};
use qapi::qmp;
use tokio::io::WriteHalf;
use tokio::net::UnixStream;
use tokio::sync::mpsc;

use super::Error;

type Service = QapiService<QmpStreamTokio<WriteHalf<UnixStream>>>;

/// A QMP event nixdisk acts on.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum VmEvent {
    /// The guest kernel reported a panic (pvpanic).
    GuestPanicked,
    /// The VM is shutting down; `guest` is true when the guest asked for it,
    /// `reason` is QEMU's cause (`guest-shutdown`, `guest-reset`, ...).
    Shutdown {
        /// Whether the guest initiated it.
        guest: bool,
        /// QEMU's shutdown cause.
        reason: String,
    },
}

/// A connected QMP session; its events go to the sender given to
/// [`Qmp::connect`].
pub struct Qmp {
    service: Service,
    _reader: tokio::task::JoinHandle<()>,
}

impl std::fmt::Debug for Qmp {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Qmp")
    }
}

impl Drop for Qmp {
    fn drop(&mut self) {
        self._reader.abort();
    }
}

impl Qmp {
    /// Connects to `socket` (retrying while QEMU starts, up to `timeout`),
    /// negotiates capabilities, and starts sending events to `events`.
    pub async fn connect(
        socket: &Path,
        timeout: Duration,
        events_to: mpsc::UnboundedSender<VmEvent>,
    ) -> Result<Qmp, Error> {
        let start = tokio::time::Instant::now();
        let negotiation = loop {
            match QmpStreamTokio::open_uds(socket).await {
                Ok(n) => break n,
                Err(e) if start.elapsed() < timeout => {
                    tracing::trace!(error = %e, "QMP socket not ready yet");
                    tokio::time::sleep(Duration::from_millis(20)).await;
                }
                Err(e) => {
                    return Err(Error::Qmp {
                        action: "connect",
                        message: format!("{}: {e}", socket.display()),
                    });
                }
            }
        };
        let stream = negotiation.negotiate().await.map_err(|e| Error::Qmp {
            action: "capabilities negotiation",
            message: e.to_string(),
        })?;
        let (service, events) = stream.into_parts();
        let tx = events_to;
        // The event stream must be polled for command responses to arrive too.
        let reader = tokio::spawn(async move {
            let mut events = Box::pin(events);
            while let Some(event) = events.next().await {
                let Ok(event) = event else { break };
                let mapped = match event {
                    qmp::Event::GUEST_PANICKED { .. } => Some(VmEvent::GuestPanicked),
                    qmp::Event::SHUTDOWN { data, .. } => Some(VmEvent::Shutdown {
                        guest: data.guest,
                        reason: serde_json::to_value(data.reason)
                            .ok()
                            .and_then(|v| v.as_str().map(str::to_owned))
                            .unwrap_or_default(),
                    }),
                    _ => None,
                };
                if let Some(event) = mapped {
                    tracing::debug!(?event, "QMP event");
                    if tx.send(event).is_err() {
                        break;
                    }
                }
            }
        });
        Ok(Qmp {
            service,
            _reader: reader,
        })
    }

    /// The VM's run state (`running`, `paused`, `shutdown`, ...).
    pub async fn status(&self) -> Result<String, Error> {
        let info = self
            .service
            .execute(qmp::query_status {})
            .await
            .map_err(|e| Error::Qmp {
                action: "query-status",
                message: e.to_string(),
            })?;
        Ok(serde_json::to_value(info.status)
            .ok()
            .and_then(|v| v.as_str().map(str::to_owned))
            .unwrap_or_default())
    }

    /// Asks the guest to power off (an ACPI power button press).
    pub async fn system_powerdown(&self) -> Result<(), Error> {
        self.service
            .execute(qmp::system_powerdown {})
            .await
            .map(drop)
            .map_err(|e| Error::Qmp {
                action: "system_powerdown",
                message: e.to_string(),
            })
    }

    /// Tells QEMU to exit now.
    pub async fn quit(&self) -> Result<(), Error> {
        self.service
            .execute(qmp::quit {})
            .await
            .map(drop)
            .map_err(|e| Error::Qmp {
                action: "quit",
                message: e.to_string(),
            })
    }
}
