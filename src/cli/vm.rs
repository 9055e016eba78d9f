//! `nixdisk vm`: boots the builder VM, runs one command through the agent
//! with its output streamed, and returns its exit status, so users can see
//! what the builder sees.

use std::io::Write;
use std::path::PathBuf;
use std::time::Duration;

use anyhow::Context;

use crate::builder_vm::{AccelChoice, BuilderVm, BuilderVmConfig, OutputStream};
use crate::interrupt::Signals;
use crate::transport::{TransportChoice, TransportKind};

pub use crate::interrupt::{EXIT_INTERRUPTED, EXIT_TERMINATED};

/// Firmware for `--firmware`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum FirmwareArg {
    /// UEFI (OVMF); slower to start, needed for EFI work.
    Ovmf,
    /// Legacy BIOS (SeaBIOS); the fast default.
    Seabios,
}

/// Accelerator for `--accel`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum AccelArg {
    /// KVM when it works, else TCG.
    Auto,
    /// KVM only.
    Kvm,
    /// Software emulation only.
    Tcg,
}

/// Transport for `--transport`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum TransportArg {
    /// The best available: kernel vsock, vhost-device-vsock, virtio-serial.
    Auto,
    /// vsock through the kernel (`/dev/vhost-vsock`).
    Vsock,
    /// vsock through `vhost-device-vsock`.
    VhostUserVsock,
    /// virtio-serial.
    Serial,
}

/// Arguments of `nixdisk vm`.
#[derive(Debug, Clone, clap::Args)]
pub struct VmArgs {
    /// Firmware the builder VM boots with.
    #[arg(long, value_enum, default_value_t = FirmwareArg::Seabios)]
    pub firmware: FirmwareArg,
    /// How QEMU runs the guest; `auto` falls back to TCG when KVM fails.
    #[arg(long, value_enum, default_value_t = AccelArg::Auto)]
    pub accel: AccelArg,
    /// The host-guest channel.
    #[arg(long, value_enum, default_value_t = TransportArg::Auto)]
    pub transport: TransportArg,
    /// The builder kernel (default: the newest /boot/vmlinuz-* with modules).
    #[arg(long, value_name = "PATH")]
    pub kernel: Option<PathBuf>,
    /// The static guest agent binary (default: $NIXDISK_AGENT, the build of
    /// scripts/build-agent, or beside nixdisk).
    #[arg(long, value_name = "PATH")]
    pub agent: Option<PathBuf>,
    /// Guest RAM in MiB.
    #[arg(long, value_name = "MIB", default_value_t = 1024)]
    pub memory: u64,
    /// Show the guest console as it boots: set from the global `-v`.
    #[arg(skip)]
    pub verbose: bool,
    /// The command to run in the builder (in a chroot of the host's root).
    #[arg(last = true, required = true, value_name = "CMD")]
    pub command: Vec<String>,
}

impl VmArgs {
    /// The builder VM configuration these arguments ask for.
    pub fn builder_config(&self) -> BuilderVmConfig {
        BuilderVmConfig {
            firmware: match self.firmware {
                FirmwareArg::Ovmf => nixdisk_firmware::FirmwareKind::Uefi,
                FirmwareArg::Seabios => nixdisk_firmware::FirmwareKind::Bios,
            },
            accel: match self.accel {
                AccelArg::Auto => AccelChoice::Auto,
                AccelArg::Kvm => AccelChoice::Kvm,
                AccelArg::Tcg => AccelChoice::Tcg,
            },
            transport: match self.transport {
                TransportArg::Auto => TransportChoice::Auto,
                TransportArg::Vsock => TransportChoice::Only(TransportKind::KernelVsock),
                TransportArg::VhostUserVsock => {
                    TransportChoice::Only(TransportKind::VhostUserVsock)
                }
                TransportArg::Serial => TransportChoice::Only(TransportKind::VirtioSerial),
            },
            kernel: self.kernel.clone(),
            agent: self.agent.clone(),
            memory_mib: self.memory,
            stream_console: self.verbose,
            ..BuilderVmConfig::default()
        }
    }
}

/// Runs `nixdisk vm`: the command's exit status, or 130 after Ctrl-C and
/// 143 after SIGTERM (the VM and its helpers killed and the run directory
/// removed first).
pub fn run(args: VmArgs) -> anyhow::Result<i32> {
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .context("cannot start the async runtime")?;
    let result = runtime.block_on(async {
        // Registered before anything starts, so no Ctrl-C or SIGTERM (from
        // `timeout`, CI, a service manager) kills us half-way and orphans QEMU.
        let mut signals = Signals::listen().context("cannot listen for Ctrl-C and SIGTERM")?;
        // Dropping boot_and_run's future drops the VM: QEMU and the daemon
        // are killed and the run directory is removed before we return.
        tokio::select! {
            result = boot_and_run(&args) => result,
            signal = signals.recv() => {
                tracing::warn!("{signal}: the builder VM was stopped and cleaned up");
                Ok(signal.exit_code())
            }
        }
    });
    // A boot-file build in a blocking task may still run after Ctrl-C; it
    // only fills the cache, so do not wait for it.
    runtime.shutdown_timeout(Duration::from_millis(500));
    result
}

async fn boot_and_run(args: &VmArgs) -> anyhow::Result<i32> {
    let config = args.builder_config();
    let mut vm = BuilderVm::start(&config)
        .await
        .context("cannot start the builder VM")?;
    let status = vm
        .agent()
        .run(&args.command, |stream, bytes| {
            // The command's own output is this subcommand's product.
            let _ = match stream {
                OutputStream::Stdout => std::io::stdout().lock().write_all(bytes),
                OutputStream::Stderr => std::io::stderr().lock().write_all(bytes),
            };
        })
        .await
        .with_context(|| format!("running {:?} in the builder VM failed", args.command))?;
    vm.shutdown(Duration::from_secs(10))
        .await
        .context("the builder VM did not shut down cleanly")?;
    Ok(status)
}
