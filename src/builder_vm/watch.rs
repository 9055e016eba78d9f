//! Watches a running builder VM: QEMU's exit, the vsock daemon's exit and
//! QMP events, turned into one sticky [`VmEnd`] and from there into an
//! [`Error`] that carries the console tail.

use std::sync::Mutex;
use std::time::Duration;

use tokio::sync::mpsc;

use super::error::{CONSOLE_TAIL_LINES, Error};
use crate::qemu::{ConsoleLog, Supervised, VmEvent};

/// How a VM ended.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum VmEnd {
    /// PID 1 (the agent) died, and the kernel panicked over it.
    AgentCrashed,
    /// The guest kernel panicked.
    Panicked,
    /// QEMU exited.
    QemuExited {
        /// Exit status and stderr tail.
        detail: String,
    },
    /// The vsock daemon exited, so the channel is gone.
    DaemonExited {
        /// Exit status and stderr tail.
        detail: String,
    },
}

/// The parts of a VM that can end it, shared by the VM and its agent client.
pub struct VmWatch {
    qemu: Mutex<Supervised>,
    daemon: Mutex<Option<Supervised>>,
    events: Mutex<mpsc::UnboundedReceiver<VmEvent>>,
    console: ConsoleLog,
    panicked: Mutex<bool>,
    ended: Mutex<Option<VmEnd>>,
}

impl std::fmt::Debug for VmWatch {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("VmWatch")
            .field("console", &self.console)
            .finish()
    }
}

impl VmWatch {
    /// Watches `qemu` and the transport's `daemon`, if any.
    pub fn new(
        qemu: Supervised,
        daemon: Option<Supervised>,
        events: mpsc::UnboundedReceiver<VmEvent>,
        console: ConsoleLog,
    ) -> VmWatch {
        VmWatch {
            qemu: Mutex::new(qemu),
            daemon: Mutex::new(daemon),
            events: Mutex::new(events),
            console,
            panicked: Mutex::new(false),
            ended: Mutex::new(None),
        }
    }

    /// The guest console.
    pub fn console(&self) -> &ConsoleLog {
        &self.console
    }

    /// QEMU's pid.
    pub fn qemu_pid(&self) -> u32 {
        lock(&self.qemu).pid()
    }

    /// The vsock daemon's pid, if there is one.
    pub fn daemon_pid(&self) -> Option<u32> {
        lock(&self.daemon).as_ref().map(|d| d.pid())
    }

    /// Whether the VM has ended, without waiting.
    pub fn check(&self) -> Option<VmEnd> {
        if let Some(end) = lock(&self.ended).clone() {
            return Some(end);
        }
        {
            let mut events = lock(&self.events);
            while let Ok(event) = events.try_recv() {
                if event == VmEvent::GuestPanicked {
                    *lock(&self.panicked) = true;
                }
            }
        }
        let end = {
            let mut qemu = lock(&self.qemu);
            qemu.try_exit()
                .map(|status| qemu.exited_error(status).to_string())
        }
        .map(|detail| {
            let console = self.console.contents();
            // PID 1 exiting makes the kernel panic; the agent's panic hook
            // prints its message and powers off.
            if console.contains("Attempted to kill init")
                || console.contains("nixdisk-agent: PANIC")
            {
                VmEnd::AgentCrashed
            } else if *lock(&self.panicked) || console.contains("Kernel panic") {
                VmEnd::Panicked
            } else {
                VmEnd::QemuExited { detail }
            }
        })
        .or_else(|| {
            let mut daemon = lock(&self.daemon);
            let daemon = daemon.as_mut()?;
            let status = daemon.try_exit()?;
            Some(VmEnd::DaemonExited {
                detail: daemon.exited_error(status).to_string(),
            })
        });
        if let Some(end) = &end {
            tracing::debug!(?end, "builder VM ended");
            *lock(&self.ended) = Some(end.clone());
        }
        end
    }

    /// Waits until the VM ends.
    pub async fn ended(&self) -> VmEnd {
        loop {
            if let Some(end) = self.check() {
                return end;
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }

    /// Waits up to `grace` for the VM to end (after the agent's connection
    /// dropped, QEMU may need a moment to exit).
    pub async fn ended_within(&self, grace: Duration) -> Option<VmEnd> {
        tokio::time::timeout(grace, self.ended()).await.ok()
    }

    /// The error for `end`, with the console tail.
    pub fn error(&self, end: VmEnd) -> Error {
        let console_tail = self.console_tail();
        // A panic's stack trace fills the tail: name the cause separately.
        let console = self.console.contents();
        let reason = |needles: &[&str]| {
            console
                .lines()
                .map(crate::qemu::console::clean_line)
                .find(|line| needles.iter().any(|n| line.contains(n)))
                .map(|line| line.trim().to_owned())
                .unwrap_or_default()
        };
        match end {
            VmEnd::AgentCrashed => Error::AgentCrashed {
                reason: reason(&["nixdisk-agent: PANIC", "Attempted to kill init"]),
                console_tail,
            },
            VmEnd::Panicked => Error::GuestPanicked {
                reason: reason(&["Kernel panic"]),
                console_tail,
            },
            VmEnd::QemuExited { detail } => Error::VmStopped {
                what: detail,
                console_tail,
            },
            VmEnd::DaemonExited { detail } => Error::VmStopped {
                what: format!("the vsock daemon stopped: {detail}"),
                console_tail,
            },
        }
    }

    /// The last lines of the console.
    pub fn console_tail(&self) -> String {
        self.console.tail(CONSOLE_TAIL_LINES)
    }

    /// Kills QEMU and the daemon now.
    pub fn kill(&self) {
        lock(&self.qemu).kill_now();
        if let Some(daemon) = lock(&self.daemon).as_mut() {
            daemon.kill_now();
        }
    }
}

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    // A panic while holding one of these locks leaves plain data behind.
    m.lock().unwrap_or_else(|e| e.into_inner())
}
