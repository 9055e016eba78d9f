//! Ctrl-C and SIGTERM: what `nixdisk build` and `nixdisk vm` do when asked
//! to stop.
//!
//! [`Signals`] listens for both (registered before any work starts, so a
//! signal never kills nixdisk half-way and orphans what it started). A build
//! runs its work on a thread through [`run_interruptible`]; on a signal it
//! records the current [`Phase`], cancels (async code waiting in
//! [`cancelled`] stops, every host tool started through [`run_output`] and
//! every [`Supervised`](crate::qemu::Supervised) process group is killed),
//! waits a moment for the work to unwind through its own drop guards, removes
//! whatever registered directory is still there, and returns one
//! [`Interrupted`] naming the signal and the phase.
//!
//! The phase and the cancellation are process-wide: one build per process,
//! as `nixdisk build` runs it. Once cancelled, a process starts no more host
//! tools.

mod registry;

pub use registry::{DirGuard, GroupGuard, run_output, run_output_inheriting_stdout};

use std::sync::atomic::{AtomicU8, Ordering};
use std::time::Duration;

use tokio::signal::unix::{Signal as Listener, SignalKind, signal};
use tokio::sync::Notify;

/// The exit status after Ctrl-C (128 + SIGINT), as shells report it.
pub const EXIT_INTERRUPTED: i32 = 130;
/// The exit status after SIGTERM (128 + 15).
pub const EXIT_TERMINATED: i32 = 143;

/// How long the interrupted work gets to unwind (its drop guards kill the
/// VM and remove the temporary directories) before nixdisk removes what is
/// left itself and exits.
const UNWIND_GRACE: Duration = Duration::from_secs(5);

/// A signal that stops nixdisk.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Signal {
    /// SIGINT (Ctrl-C).
    Interrupt,
    /// SIGTERM (`kill`, `timeout`, CI, a service manager).
    Terminate,
}

impl Signal {
    /// The signal's name, as `kill -l` spells it.
    pub fn name(self) -> &'static str {
        match self {
            Signal::Interrupt => "SIGINT",
            Signal::Terminate => "SIGTERM",
        }
    }

    /// The exit status a shell reports for it: 130 or 143.
    pub fn exit_code(self) -> i32 {
        match self {
            Signal::Interrupt => EXIT_INTERRUPTED,
            Signal::Terminate => EXIT_TERMINATED,
        }
    }

    fn to_u8(self) -> u8 {
        match self {
            Signal::Interrupt => 1,
            Signal::Terminate => 2,
        }
    }

    fn from_u8(value: u8) -> Option<Signal> {
        match value {
            1 => Some(Signal::Interrupt),
            2 => Some(Signal::Terminate),
            _ => None,
        }
    }
}

impl std::fmt::Display for Signal {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.name())
    }
}

/// The phases of a build, in the order they run; the error after a signal
/// names the one it arrived in.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub enum Phase {
    /// Before the build proper (spec checked, nothing started).
    Starting,
    /// Reading the closure from Nix.
    ClosureRead,
    /// Planning and staging the image root on the host.
    Staging,
    /// Sizing the file systems and laying out the disk.
    Sizing,
    /// The builder VM: start, copy, bootloader, power-off.
    Vm,
    /// Making the store-only file system on the host.
    StoreImage,
    /// Fixing times of a deterministic image on the host.
    FixTimes,
    /// Converting the raw image to the output format.
    Conversion,
    /// Running the user's postVM.
    PostVm,
    /// Renaming the output into place.
    Publish,
}

impl Phase {
    /// How the phase is named in logs and errors.
    pub fn name(self) -> &'static str {
        match self {
            Phase::Starting => "start",
            Phase::ClosureRead => "closure read",
            Phase::Staging => "staging",
            Phase::Sizing => "sizing",
            Phase::Vm => "builder VM",
            Phase::StoreImage => "store image",
            Phase::FixTimes => "fixing times",
            Phase::Conversion => "conversion",
            Phase::PostVm => "postVM",
            Phase::Publish => "publishing",
        }
    }

    const ALL: [Phase; 10] = [
        Phase::Starting,
        Phase::ClosureRead,
        Phase::Staging,
        Phase::Sizing,
        Phase::Vm,
        Phase::StoreImage,
        Phase::FixTimes,
        Phase::Conversion,
        Phase::PostVm,
        Phase::Publish,
    ];
}

impl std::fmt::Display for Phase {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.name())
    }
}

/// A build stopped by a signal.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
#[error(
    "interrupted by {signal} during the {phase} phase: the build was stopped, everything it started was killed and its temporary files were removed"
)]
pub struct Interrupted {
    /// The signal.
    pub signal: Signal,
    /// The phase it arrived in.
    pub phase: Phase,
}

static PHASE: AtomicU8 = AtomicU8::new(0);
static CANCELLED: AtomicU8 = AtomicU8::new(0);
static CANCEL_NOTIFY: Notify = Notify::const_new();

/// Records that the build enters `phase` (logged at debug level, so `-v`
/// shows it), or fails when the build was already cancelled.
pub fn enter(phase: Phase) -> Result<(), Interrupted> {
    PHASE.store(phase as u8, Ordering::SeqCst);
    tracing::debug!(phase = phase.name(), "build phase");
    check()
}

/// The phase the build is in.
pub fn current_phase() -> Phase {
    let index = PHASE.load(Ordering::SeqCst) as usize;
    Phase::ALL.get(index).copied().unwrap_or(Phase::Starting)
}

/// Fails when a signal has cancelled the build.
pub fn check() -> Result<(), Interrupted> {
    match Signal::from_u8(CANCELLED.load(Ordering::SeqCst)) {
        Some(signal) => Err(Interrupted {
            signal,
            phase: current_phase(),
        }),
        None => Ok(()),
    }
}

/// Completes once a signal has cancelled the build; async work selects on it
/// so that it drops (and so cleans up) at once.
pub async fn cancelled() -> Signal {
    loop {
        let notified = CANCEL_NOTIFY.notified();
        tokio::pin!(notified);
        notified.as_mut().enable();
        if let Some(signal) = Signal::from_u8(CANCELLED.load(Ordering::SeqCst)) {
            return signal;
        }
        notified.await;
    }
}

/// Cancels the build: async waiters wake, and every registered process
/// group (host tools, QEMU, the vsock daemon) is killed.
pub fn cancel(signal: Signal) {
    let _ = CANCELLED.compare_exchange(0, signal.to_u8(), Ordering::SeqCst, Ordering::SeqCst);
    CANCEL_NOTIFY.notify_waiters();
    registry::kill_all_groups();
}

/// Ctrl-C and SIGTERM listeners.
pub struct Signals {
    interrupt: Listener,
    terminate: Listener,
}

impl Signals {
    /// Starts listening; from here on neither signal kills the process.
    /// Needs a tokio runtime with I/O enabled.
    pub fn listen() -> std::io::Result<Signals> {
        Ok(Signals {
            interrupt: signal(SignalKind::interrupt())?,
            terminate: signal(SignalKind::terminate())?,
        })
    }

    /// The next signal.
    pub async fn recv(&mut self) -> Signal {
        tokio::select! {
            _ = self.interrupt.recv() => Signal::Interrupt,
            _ = self.terminate.recv() => Signal::Terminate,
        }
    }
}

/// Why [`run_interruptible`] did not return the work's result.
#[derive(Debug, thiserror::Error)]
pub enum InterruptError {
    /// A signal stopped the work.
    #[error(transparent)]
    Interrupted(#[from] Interrupted),
    /// The signal listeners or the runtime could not be set up.
    #[error("cannot listen for Ctrl-C and SIGTERM: {0}")]
    Setup(#[from] std::io::Error),
    /// The work panicked.
    #[error("internal error: the build thread panicked")]
    Panicked,
}

/// Runs `work` on its own thread until it returns or Ctrl-C / SIGTERM
/// arrives. On a signal: cancels (see [`cancel`]), gives the work
/// [`UNWIND_GRACE`] to unwind, removes the registered directories still
/// left, and returns [`Interrupted`]; the work's own result is then dropped.
pub fn run_interruptible<T: Send + 'static>(
    work: impl FnOnce() -> T + Send + 'static,
) -> Result<T, InterruptError> {
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()?;
    runtime.block_on(async {
        let mut signals = Signals::listen()?;
        let (done_tx, mut done_rx) = tokio::sync::oneshot::channel();
        std::thread::Builder::new()
            .name("nixdisk-build".into())
            .spawn(move || {
                let _ = done_tx.send(work());
            })?;
        tokio::select! {
            result = &mut done_rx => result.map_err(|_| InterruptError::Panicked),
            signal = signals.recv() => {
                let phase = current_phase();
                tracing::debug!(%signal, %phase, "stopping the build");
                cancel(signal);
                if tokio::time::timeout(UNWIND_GRACE, done_rx).await.is_err() {
                    tracing::debug!("the build did not unwind in time; removing what it left");
                    cancel(signal);
                }
                registry::remove_all_dirs();
                Err(Interrupted { signal, phase }.into())
            }
        }
    })
}

#[cfg(test)]
mod tests;
