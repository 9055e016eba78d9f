//! The builder VM: boots QEMU with the agent, waits for hello, and hands out
//! a connected agent client.
//!
//! [`BuilderVm::start`] finds the firmware, kernel and agent, builds the
//! initramfs, starts the transport and QEMU in a private run directory, and
//! waits (with a deadline) for the agent's hello; under `--accel auto` a KVM
//! that fails or stays silent is retried with TCG. Everything it started is
//! killed and removed when the [`BuilderVm`] is dropped.

mod boot;
mod client;
mod error;
mod plan;
mod watch;

pub use client::{AgentClient, OutputStream, Transfer};
pub use error::Error;
pub use plan::{AccelChoice, accel_attempts, agent_candidates, kernel_cmdline};
pub use watch::VmEnd;

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use nixdisk_agent::boot_args::VSOCK_WAITING_MARKER;
use nixdisk_firmware::FirmwareKind;
use tokio::time::Instant;

use crate::qemu::{
    self, Accel, DirectBoot, Disk, DiskFormat, Firmware, HostShare, Machine, QemuConfig, Qmp,
    RunDir, Supervised,
};
use crate::transport::{self, HostCapabilities, Transport, TransportChoice, TransportKind};
use watch::VmWatch;

/// The 9p tag the host's root is shared under.
pub const HOST_SHARE_TAG: &str = "nixdisk-host";

/// How long a connected vsock stream may stay silent before hello.
const VSOCK_HELLO_WAIT: Duration = Duration::from_secs(10);

/// The private copy of the OVMF variables in an attempt's directory.
const OVMF_VARS_FILE: &str = "OVMF_VARS.fd";

/// How long a working KVM may take to reach hello before `--accel auto`
/// gives up on it (a working KVM needs a second or two).
const KVM_PROBE_TIMEOUT: Duration = Duration::from_secs(20);

/// How to start a builder VM.
#[derive(Debug, Clone)]
pub struct BuilderVmConfig {
    /// UEFI (OVMF) or BIOS (SeaBIOS).
    pub firmware: FirmwareKind,
    /// Explicit OVMF files.
    pub firmware_overrides: nixdisk_firmware::Overrides,
    /// KVM, TCG, or KVM with TCG as the fallback.
    pub accel: AccelChoice,
    /// The host-guest channel.
    pub transport: TransportChoice,
    /// An explicit kernel (else the newest `/boot/vmlinuz-*` with modules).
    pub kernel: Option<PathBuf>,
    /// An explicit agent binary (else `$NIXDISK_AGENT` and the usual places).
    pub agent: Option<PathBuf>,
    /// The QEMU binary.
    pub qemu_binary: PathBuf,
    /// Guest RAM in MiB.
    pub memory_mib: u64,
    /// Virtual CPUs.
    pub smp: u32,
    /// The file system the build makes on the target's root: the builder
    /// loads only its kernel module (xfs and btrfs take seconds to load
    /// under TCG). `None` loads every file system nixdisk makes.
    pub root_fs: Option<crate::spec::FsType>,
    /// Disks to attach (the blank target disk).
    pub disks: Vec<Disk>,
    /// Share the host's root read-only (the agent runs host tools from it).
    pub share_host_root: bool,
    /// Extra kernel arguments, replacing defaults with the same key.
    pub extra_kernel_args: Vec<String>,
    /// How long to wait for hello; `None` picks by accelerator and firmware.
    pub hello_timeout: Option<Duration>,
    /// Log every console line as it comes (`-v`).
    pub stream_console: bool,
    /// Where the run directory is created (default: `$TMPDIR`).
    pub run_dir_parent: Option<PathBuf>,
}

impl Default for BuilderVmConfig {
    fn default() -> Self {
        BuilderVmConfig {
            firmware: FirmwareKind::Bios,
            firmware_overrides: Default::default(),
            accel: AccelChoice::Auto,
            transport: TransportChoice::Auto,
            kernel: None,
            agent: None,
            qemu_binary: "qemu-system-x86_64".into(),
            memory_mib: 1024,
            smp: 2,
            root_fs: None,
            disks: Vec::new(),
            share_host_root: true,
            extra_kernel_args: Vec::new(),
            hello_timeout: None,
            stream_console: false,
            run_dir_parent: None,
        }
    }
}

/// A running builder VM with a connected agent.
pub struct BuilderVm {
    client: AgentClient,
    qmp: Qmp,
    watch: Arc<VmWatch>,
    accel: Accel,
    transport: TransportKind,
    startup: Duration,
    console_task: Option<tokio::task::JoinHandle<()>>,
    attempt_dir: PathBuf,
    // Last: removed after the processes above are dead.
    run_dir: RunDir,
}

impl std::fmt::Debug for BuilderVm {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("BuilderVm")
            .field("run_dir", &self.run_dir.path())
            .field("accel", &self.accel)
            .field("transport", &self.transport)
            .finish()
    }
}

/// What a single start attempt needs that all attempts share.
struct Prepared {
    caps: HostCapabilities,
    kind: TransportKind,
    firmware: nixdisk_firmware::Firmware,
    boot: boot::BootFiles,
}

impl BuilderVm {
    /// Starts a VM and waits for the agent's hello.
    pub async fn start(config: &BuilderVmConfig) -> Result<BuilderVm, Error> {
        let started = Instant::now();
        let run_dir = RunDir::create(config.run_dir_parent.as_deref())?;
        tracing::debug!(run_dir = %run_dir.path().display(), "builder VM run directory");
        let caps = HostCapabilities::detect();
        let kind = transport::choose(config.transport, &caps)?;
        let agent = find_agent(config.agent.as_deref())?;
        let search = nixdisk_firmware::Search::system(Some(&config.qemu_binary));
        let firmware = nixdisk_firmware::find(
            config.firmware,
            &search,
            &config.firmware_overrides,
            nixdisk_firmware::Want::default(),
        )?;
        let efi = matches!(firmware, nixdisk_firmware::Firmware::Ovmf(_));
        let boot = boot::prepare(
            config.kernel.as_deref(),
            &agent,
            efi,
            config.root_fs,
            run_dir.path(),
        )
        .await?;
        let prepared = Prepared {
            caps,
            kind,
            firmware,
            boot,
        };

        let attempts = accel_attempts(config.accel, kvm_usable(config.accel));
        let mut result = Err(Error::Internal("no accelerator to try".into()));
        let mut accel = Accel::Tcg;
        for (index, attempt) in attempts.iter().copied().enumerate() {
            let last = index + 1 == attempts.len();
            accel = attempt;
            result = start_attempt(config, &prepared, &run_dir, attempt, last).await;
            match &result {
                Ok(_) => break,
                Err(e) if !last => {
                    tracing::warn!("KVM did not work, retrying with TCG: {e}");
                }
                Err(_) => {}
            }
        }
        let (client, qmp, watch, attempt_dir, console_task) = result?;
        if attempts.len() > 1 && accel == Accel::Tcg {
            remember_kvm_failed();
        }
        let startup = started.elapsed();
        tracing::info!(
            qemu_pid = watch.qemu_pid(),
            daemon_pid = watch.daemon_pid(),
            run_dir = %run_dir.path().display(),
            ?accel,
            transport = %kind,
            seconds = startup.as_secs_f64(),
            "builder VM ready: the agent said hello"
        );
        Ok(BuilderVm {
            client,
            qmp,
            watch,
            accel,
            transport: kind,
            startup,
            console_task,
            attempt_dir,
            run_dir,
        })
    }

    /// The agent client.
    pub fn agent(&mut self) -> &mut AgentClient {
        &mut self.client
    }

    /// The accelerator the VM runs under.
    pub fn accel(&self) -> Accel {
        self.accel
    }

    /// The transport in use.
    pub fn transport(&self) -> TransportKind {
        self.transport
    }

    /// Time from [`BuilderVm::start`] to the agent's hello.
    pub fn startup_time(&self) -> Duration {
        self.startup
    }

    /// The private run directory (sockets, logs, vars, initramfs).
    pub fn run_dir(&self) -> &Path {
        self.run_dir.path()
    }

    /// QEMU's pid.
    pub fn qemu_pid(&self) -> u32 {
        self.watch.qemu_pid()
    }

    /// The vsock daemon's pid, if the transport has one.
    pub fn daemon_pid(&self) -> Option<u32> {
        self.watch.daemon_pid()
    }

    /// The guest console so far.
    pub fn console(&self) -> String {
        self.watch.console().contents()
    }

    /// The last lines of the guest console, as errors show them.
    pub fn console_tail(&self) -> String {
        self.watch.console_tail()
    }

    /// The QMP session (status, powerdown, quit).
    pub fn qmp(&self) -> &Qmp {
        &self.qmp
    }

    /// How the VM ended, if it has.
    pub fn ended(&self) -> Option<VmEnd> {
        self.watch.check()
    }

    /// Asks the agent to power off and waits for QEMU to exit; if that does
    /// not happen within `timeout`, tells QEMU to quit. Everything is cleaned
    /// up either way when `self` drops.
    pub async fn shutdown(mut self, timeout: Duration) -> Result<(), Error> {
        self.power_off(timeout).await
    }

    /// The OVMF variables file QEMU runs with (UEFI builders only): what the
    /// guest wrote to the EFI variables, complete once QEMU has exited.
    pub fn efi_vars_path(&self) -> Option<PathBuf> {
        let vars = self.attempt_dir.join(OVMF_VARS_FILE);
        vars.is_file().then_some(vars)
    }

    /// Like [`BuilderVm::shutdown`], then copies the OVMF variables file to
    /// `keep` before the run directory goes (`touchEFIVars`). Fails when the
    /// VM has no variables file (a BIOS builder).
    pub async fn shutdown_and_keep_efi_vars(
        mut self,
        timeout: Duration,
        keep: &Path,
    ) -> Result<(), Error> {
        self.power_off(timeout).await?;
        // After a forced quit QEMU may still be flushing: let it exit first.
        let _ = self.watch.ended_within(Duration::from_secs(10)).await;
        let vars = self.attempt_dir.join(OVMF_VARS_FILE);
        std::fs::copy(&vars, keep).map_err(|source| Error::Io { path: vars, source })?;
        Ok(())
    }

    async fn power_off(&mut self, timeout: Duration) -> Result<(), Error> {
        let asked = self.client.power_off().await;
        if let Err(e) = &asked {
            tracing::debug!("power-off request failed: {e}");
        }
        match self.watch.ended_within(timeout).await {
            Some(VmEnd::QemuExited { .. }) => Ok(()),
            Some(end) => Err(self.watch.error(end)),
            None => {
                tracing::warn!(
                    "the builder VM did not power off within {} s; stopping QEMU",
                    timeout.as_secs()
                );
                let _ = self.qmp.quit().await;
                Ok(())
            }
        }
    }

    /// The directory of the attempt that succeeded (sockets and logs).
    pub fn attempt_dir(&self) -> &Path {
        &self.attempt_dir
    }
}

impl Drop for BuilderVm {
    fn drop(&mut self) {
        if let Some(task) = self.console_task.take() {
            task.abort();
        }
        self.watch.kill();
    }
}

type Started = (
    AgentClient,
    Qmp,
    Arc<VmWatch>,
    PathBuf,
    Option<tokio::task::JoinHandle<()>>,
);

fn accel_name(accel: Accel) -> &'static str {
    match accel {
        Accel::Kvm => "kvm",
        Accel::Tcg => "tcg",
    }
}

/// One boot under `accel`, in its own subdirectory of the run directory.
async fn start_attempt(
    config: &BuilderVmConfig,
    prepared: &Prepared,
    run_dir: &RunDir,
    accel: Accel,
    last: bool,
) -> Result<Started, Error> {
    let dir = run_dir.path().join(accel_name(accel));
    std::fs::create_dir_all(&dir).map_err(|source| Error::Io {
        path: dir.clone(),
        source,
    })?;
    let mut transport = Transport::prepare(prepared.kind, &prepared.caps, &dir).await?;
    // A kernel-vsock CID already taken by another VM: pick another one.
    for _ in 0..3 {
        let result = boot_once(config, prepared, &dir, &mut transport, accel, last).await;
        match result {
            Err(Error::VmStopped { what, .. })
                if transport.kind() == TransportKind::KernelVsock
                    && what.contains("Address already in use") =>
            {
                tracing::debug!("vsock CID in use, picking another");
                transport.repick_cid()?;
            }
            other => return other.map(|(c, q, w, t)| (c, q, w, dir.clone(), t)),
        }
    }
    Err(Error::NoFreeCid { tries: 3 })
}

async fn boot_once(
    config: &BuilderVmConfig,
    prepared: &Prepared,
    dir: &Path,
    transport: &mut Transport,
    accel: Accel,
    last: bool,
) -> Result<
    (
        AgentClient,
        Qmp,
        Arc<VmWatch>,
        Option<tokio::task::JoinHandle<()>>,
    ),
    Error,
> {
    let efi = matches!(prepared.firmware, nixdisk_firmware::Firmware::Ovmf(_));
    let firmware = qemu_firmware(&prepared.firmware, dir)?;
    let share = config
        .share_host_root
        .then(|| format!("9p:{HOST_SHARE_TAG}"));
    let qemu_config = QemuConfig {
        binary: config.qemu_binary.clone(),
        machine: Machine::Q35,
        accel,
        smp: config.smp,
        memory_mib: config.memory_mib,
        firmware,
        boot: DirectBoot {
            kernel: prepared.boot.kernel.clone(),
            initrd: prepared.boot.initrd.clone(),
            append: kernel_cmdline(
                &transport.agent_setting(),
                share.as_deref(),
                &config.extra_kernel_args,
            ),
        },
        disks: config.disks.clone(),
        host_share: config.share_host_root.then(|| HostShare {
            path: "/".into(),
            tag: HOST_SHARE_TAG.into(),
        }),
        console_log: dir.join("console.log"),
        qmp_socket: dir.join("qmp.sock"),
        transport: transport.device(),
    };
    let console = qemu::ConsoleLog::new(&qemu_config.console_log);
    let _ = std::fs::remove_file(console.path());
    let qemu = Supervised::spawn(
        &config.qemu_binary,
        &qemu_config.args(),
        &dir.join("qemu.log"),
    )?;
    tracing::debug!(pid = qemu.pid(), ?accel, efi, "QEMU started");
    let (events_tx, events_rx) = tokio::sync::mpsc::unbounded_channel();
    let watch = Arc::new(VmWatch::new(
        qemu,
        transport.take_daemon(),
        events_rx,
        console.clone(),
    ));
    let console_task = config
        .stream_console
        .then(|| tokio::spawn(console.clone().stream()));

    let timeout = config.hello_timeout.unwrap_or(match (accel, efi) {
        (Accel::Kvm, _) if !last => KVM_PROBE_TIMEOUT,
        (Accel::Kvm, _) => Duration::from_secs(60),
        (Accel::Tcg, false) => Duration::from_secs(120),
        (Accel::Tcg, true) => Duration::from_secs(180),
    });
    let deadline = Instant::now() + timeout;
    let connect = async {
        let qmp = Qmp::connect(&qemu_config.qmp_socket, Duration::from_secs(30), events_tx).await?;
        let client = connect_agent(transport, &watch, deadline).await?;
        Ok::<_, Error>((client, qmp))
    };
    let outcome = tokio::select! {
        r = connect => r,
        end = watch.ended() => Err(watch.error(end)),
        _ = tokio::time::sleep_until(deadline) => Err(Error::HelloTimeout {
            seconds: timeout.as_secs(),
            accel,
            console_tail: watch.console_tail(),
        }),
    };
    match outcome {
        Ok((client, qmp)) => Ok((client, qmp, watch, console_task)),
        Err(e) => {
            if let Some(task) = console_task {
                task.abort();
            }
            watch.kill();
            // QEMU may have died after the error was decided: say why.
            Err(match (e, watch.check()) {
                (Error::AgentGone { .. }, Some(end)) => watch.error(end),
                (e, _) => e,
            })
        }
    }
}

/// Connects to the agent and waits for its hello, retrying while the guest
/// boots (vsock refuses until the agent listens; a serial port connects at
/// once and the hello comes when the agent opens it). The caller bounds it
/// with the hello deadline and the VM's end.
async fn connect_agent(
    transport: &Transport,
    watch: &Arc<VmWatch>,
    deadline: Instant,
) -> Result<AgentClient, Error> {
    loop {
        // A vsock connection exists only once the agent accepted it, and the
        // agent says hello at once: a connection request or a connection that
        // stays silent is wedged (seen rarely under load, the agent already
        // listening), so give it up and connect again. A serial port
        // connects before the guest boots and waits for hello as it is.
        let attempt_deadline = match transport.kind() {
            TransportKind::VirtioSerial => deadline,
            _ => deadline.min(Instant::now() + VSOCK_HELLO_WAIT),
        };
        if transport.kind() != TransportKind::VirtioSerial
            && !watch.console().contents().contains(VSOCK_WAITING_MARKER)
        {
            // Not before the agent's vsock is up: see VSOCK_WAITING_MARKER.
            tokio::time::sleep(Duration::from_millis(50)).await;
            continue;
        }
        // The connect itself is bounded too: vhost-device-vsock may take a
        // CONNECT and never answer it (neither OK nor a close) when it came
        // while the guest's vsock device was still being set up.
        match tokio::time::timeout_at(attempt_deadline, transport.connect()).await {
            Err(_) => tracing::debug!("no answer to the connection request; connecting again"),
            Ok(Ok(stream)) => {
                match AgentClient::handshake(stream, watch.clone(), attempt_deadline).await {
                    Ok(client) => return Ok(client),
                    Err(client::HandshakeError::Retry(reason)) => {
                        tracing::trace!("agent not ready: {reason}");
                    }
                    Err(client::HandshakeError::Fatal(e)) => return Err(e),
                }
            }
            Ok(Err(e)) => tracing::trace!("agent not reachable yet: {e}"),
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

/// The QEMU firmware settings, with a private copy of the OVMF vars.
fn qemu_firmware(firmware: &nixdisk_firmware::Firmware, dir: &Path) -> Result<Firmware, Error> {
    match firmware {
        nixdisk_firmware::Firmware::SeaBios(s) => Ok(Firmware::SeaBios {
            bios: s.path.clone(),
        }),
        nixdisk_firmware::Firmware::Ovmf(o) => {
            let vars = dir.join(OVMF_VARS_FILE);
            o.prepare_vars(&vars)?;
            let format = |path: &Path, name: &str| {
                DiskFormat::from_name(name).ok_or_else(|| Error::FirmwareFormat {
                    path: path.to_owned(),
                    format: name.to_owned(),
                })
            };
            Ok(Firmware::Ovmf {
                code: o.code.clone(),
                code_format: format(&o.code, &o.code_format)?,
                vars_format: format(&o.vars_template, &o.vars_format)?,
                vars,
                smm: o.needs_smm,
            })
        }
    }
}

/// The cache file that says KVM failed to start a builder since this host
/// booted: `--accel auto` then starts with TCG instead of waiting for a KVM
/// guest that hangs (nested KVM on some hosts). Keyed by the boot id, so a
/// reboot (or removing the file) tries KVM again.
fn kvm_failed_marker() -> Option<PathBuf> {
    let boot_id = std::fs::read_to_string("/proc/sys/kernel/random/boot_id").ok()?;
    let cache = crate::kernel::Cache::from_env(None).ok()?;
    Some(cache.entry(&format!("kvm-failed-{}", boot_id.trim())))
}

/// Whether to try KVM under `accel`: `/dev/kvm` opens and, under `auto`, KVM
/// has not failed since this host booted (see [`remember_kvm_failed`]).
pub fn kvm_usable(accel: AccelChoice) -> bool {
    if !kvm_opens() {
        return false;
    }
    let marker = kvm_failed_marker();
    let failed_before = marker.as_deref().is_some_and(Path::exists);
    if failed_before && accel == AccelChoice::Auto {
        tracing::debug!(?marker, "KVM failed earlier since this host booted: TCG");
        return false;
    }
    true
}

/// Notes that KVM failed where TCG then worked, so that later `--accel auto`
/// runs (builders and `nixdisk boot`) start with TCG until the host reboots.
pub fn remember_kvm_failed() {
    let Some(marker) = kvm_failed_marker() else {
        return;
    };
    let written = marker
        .parent()
        .map_or(Ok(()), std::fs::create_dir_all)
        .and_then(|()| std::fs::write(&marker, b"KVM did not work on this host\n"));
    match written {
        Ok(()) => tracing::info!(
            marker = %marker.display(),
            "KVM did not work: builders start with TCG until the host reboots (remove the marker to try KVM again)"
        ),
        Err(error) => tracing::debug!(%error, "could not remember that KVM failed"),
    }
}

/// Whether `/dev/kvm` opens for reading and writing.
pub fn kvm_opens() -> bool {
    std::fs::OpenOptions::new()
        .read(true)
        .write(true)
        .open("/dev/kvm")
        .is_ok()
}

/// Finds the agent binary (see [`agent_candidates`]).
pub fn find_agent(explicit: Option<&Path>) -> Result<PathBuf, Error> {
    let env = std::env::var_os("NIXDISK_AGENT").map(PathBuf::from);
    let exe = std::env::current_exe().ok();
    let target_dir = std::env::var_os("CARGO_TARGET_DIR")
        .map(PathBuf::from)
        .or_else(|| {
            exe.as_deref()?
                .ancestors()
                .find(|p| p.file_name().is_some_and(|n| n == "target"))
                .map(Path::to_owned)
        });
    let candidates = agent_candidates(
        explicit,
        env.as_deref(),
        exe.as_deref(),
        target_dir.as_deref(),
    );
    let found = candidates
        .iter()
        .find(|p| p.is_file())
        .cloned()
        .ok_or(Error::AgentNotFound { looked: candidates })?;
    let bytes = std::fs::read(&found).map_err(|source| Error::Io {
        path: found.clone(),
        source,
    })?;
    if plan::is_static_elf(&bytes) != Some(true) {
        return Err(Error::AgentNotStatic { path: found });
    }
    Ok(found)
}
