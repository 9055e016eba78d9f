//! Carrying a [`BootPlan`] out: probe the image, find the firmware, boot an
//! overlay of the image in QEMU and watch the console.

use std::io::{Read, Seek, SeekFrom};
use std::path::Path;
use std::time::Duration;

use nixdisk_firmware::FirmwareKind;
use tokio::sync::mpsc;
use tokio::time::Instant;
use tracing::{debug, info, warn};

use super::argv::DiskBootConfig;
use super::matcher::{ConsoleLines, LineVerdict, judge};
use super::probe::{self, BootPartitions, ImageFormat};
use super::{BootError, BootOutcome, BootPlan, FirmwareChoice};
use crate::builder_vm::{accel_attempts, kvm_usable, remember_kvm_failed};
use crate::host_tool::shell_line;
use crate::qemu::{Accel, ConsoleLog, DiskFormat, Firmware, Qmp, RunDir, Supervised, VmEvent};

/// How long `--accel auto` gives KVM to show the text before retrying with
/// TCG: a nested KVM can hang without a word (see DESIGN.md).
const KVM_PROBE_WINDOW: Duration = Duration::from_secs(30);

/// How long QEMU may take to open its QMP socket (generous: CI machines
/// running many emulated guests start QEMU slowly).
const QMP_READY: Duration = Duration::from_secs(30);

/// How many console lines an error shows.
const TAIL_LINES: usize = 25;

/// Boots `plan.image` until a console line matches `plan.expect`.
///
/// The image is attached through a qcow2 overlay in a private run directory,
/// and OVMF gets a copy of its variables, so neither the image nor
/// `plan.efi_vars` changes. QEMU is killed and the run directory removed
/// when this returns, and also when the future is dropped (Ctrl-C).
pub async fn boot_until(plan: &BootPlan) -> Result<BootOutcome, BootError> {
    let image = std::fs::canonicalize(&plan.image).map_err(|source| BootError::Image {
        path: plan.image.clone(),
        source,
    })?;
    let run = RunDir::create(plan.run_dir_parent.as_deref())?;
    let (format, found) = inspect(&plan.qemu_img, &image, run.path()).await?;
    let kind = match plan.firmware {
        FirmwareChoice::Ovmf => FirmwareKind::Uefi,
        FirmwareChoice::SeaBios => FirmwareKind::Bios,
        FirmwareChoice::Auto if found.wants_uefi() => FirmwareKind::Uefi,
        FirmwareChoice::Auto => FirmwareKind::Bios,
    };
    if let (FirmwareKind::Bios, Some(vars)) = (kind, &plan.efi_vars) {
        return Err(BootError::VarsWithoutUefi { path: vars.clone() });
    }
    info!(image = %image.display(), format = format.as_str(), firmware = ?kind, "booting");

    let attempts = accel_attempts(plan.accel, kvm_usable(plan.accel));
    let last = attempts.len().saturating_sub(1);
    for (index, accel) in attempts.into_iter().enumerate() {
        let window = if index < last {
            plan.timeout.min(KVM_PROBE_WINDOW)
        } else {
            plan.timeout
        };
        let firmware = prepare_firmware(plan, kind, &run)?;
        let overlay = run.join("overlay.qcow2");
        create_overlay(&plan.qemu_img, &image, format, &overlay).await?;
        if let Some(entry) = plan.entry {
            super::entry::select_on_overlay(&plan.qemu_img, &overlay, entry, kind, &run).await?;
        }
        match attempt(plan, &run, firmware, accel, &overlay, window).await {
            Ok((line, elapsed)) => {
                if index > 0 && accel == Accel::Tcg {
                    remember_kvm_failed();
                }
                return Ok(BootOutcome {
                    line,
                    elapsed,
                    format,
                    firmware: kind,
                    accel,
                });
            }
            Err(error) if index < last => {
                warn!(%error, "no luck with {accel:?}; retrying with the next accelerator");
            }
            Err(error) => return Err(error),
        }
    }
    unreachable!("accel_attempts always yields at least one accelerator")
}

/// The image's format (if nixdisk writes it) and the boot partitions of the
/// disk inside, read through `qemu-img` into `scratch` (a directory).
pub async fn inspect(
    qemu_img: &Path,
    image: &Path,
    scratch: &Path,
) -> Result<(ImageFormat, BootPartitions), BootError> {
    let format = image_format(qemu_img, image).await?;
    let head = read_head(qemu_img, image, format, scratch).await?;
    let found = probe::boot_partitions(&head);
    debug!(?found, "boot partitions");
    Ok((format, found))
}

/// The format `qemu-img info` sees, if nixdisk writes it.
async fn image_format(qemu_img: &Path, image: &Path) -> Result<ImageFormat, BootError> {
    let info = tool(
        qemu_img,
        &["info".as_ref(), "--output=json".as_ref(), image.as_os_str()],
    )
    .await?;
    let name = probe::format_from_info(&info).map_err(|message| BootError::Tool {
        command: format!(
            "{} info --output=json {}",
            qemu_img.display(),
            image.display()
        ),
        message,
    })?;
    ImageFormat::from_name(&name).ok_or_else(|| BootError::UnsupportedFormat {
        path: image.to_owned(),
        format: name,
        allowed: ImageFormat::ALL.map(ImageFormat::as_str).join(", "),
    })
}

/// The first [`probe::HEAD_BYTES`] of the disk inside the image.
async fn read_head(
    qemu_img: &Path,
    image: &Path,
    format: ImageFormat,
    scratch: &Path,
) -> Result<Vec<u8>, BootError> {
    let head = scratch.join("head.raw");
    let mut input = std::ffi::OsString::from("if=");
    input.push(image);
    let mut output = std::ffi::OsString::from("of=");
    output.push(&head);
    tool(
        qemu_img,
        &[
            "dd".as_ref(),
            "-f".as_ref(),
            format.as_str().as_ref(),
            "-O".as_ref(),
            "raw".as_ref(),
            format!("bs={}", probe::HEAD_BYTES).as_ref(),
            "count=1".as_ref(),
            input.as_os_str(),
            output.as_os_str(),
        ],
    )
    .await?;
    std::fs::read(&head).map_err(|source| BootError::Image { path: head, source })
}

/// A qcow2 overlay over `image`: the guest writes there, never to the image.
async fn create_overlay(
    qemu_img: &Path,
    image: &Path,
    format: ImageFormat,
    overlay: &Path,
) -> Result<(), BootError> {
    // A retry starts from a clean overlay.
    let _ = std::fs::remove_file(overlay);
    tool(
        qemu_img,
        &[
            "create".as_ref(),
            "-q".as_ref(),
            "-f".as_ref(),
            "qcow2".as_ref(),
            "-F".as_ref(),
            format.as_str().as_ref(),
            "-b".as_ref(),
            image.as_os_str(),
            overlay.as_os_str(),
        ],
    )
    .await
    .map(drop)
}

/// Finds the firmware; for OVMF, copies the variables (the template or
/// `--efi-vars`) into the run directory.
fn prepare_firmware(
    plan: &BootPlan,
    kind: FirmwareKind,
    run: &RunDir,
) -> Result<Firmware, BootError> {
    let search = nixdisk_firmware::Search::system(Some(&plan.qemu_binary));
    let overrides = nixdisk_firmware::Overrides {
        code: None,
        vars: plan.efi_vars.clone(),
    };
    let found = nixdisk_firmware::find(kind, &search, &overrides, Default::default())?;
    Ok(match found {
        nixdisk_firmware::Firmware::SeaBios(seabios) => Firmware::SeaBios { bios: seabios.path },
        nixdisk_firmware::Firmware::Ovmf(ovmf) => {
            let vars = run.join("efi-vars.fd");
            ovmf.prepare_vars(&vars)?;
            let format = |name: &str, path: &Path| {
                DiskFormat::from_name(name).ok_or_else(|| BootError::Tool {
                    command: format!("OVMF file {}", path.display()),
                    message: format!("format `{name}` is neither raw nor qcow2"),
                })
            };
            Firmware::Ovmf {
                code_format: format(&ovmf.code_format, &ovmf.code)?,
                vars_format: format(&ovmf.vars_format, &ovmf.vars_template)?,
                code: ovmf.code,
                vars,
                smm: ovmf.needs_smm,
            }
        }
    })
}

/// One boot under `accel`: the matching line and the time it took.
async fn attempt(
    plan: &BootPlan,
    run: &RunDir,
    firmware: Firmware,
    accel: Accel,
    overlay: &Path,
    window: Duration,
) -> Result<(String, Duration), BootError> {
    let console_path = run.join("console.log");
    let qmp_socket = run.join("qmp.sock");
    for stale in [&console_path, &qmp_socket] {
        let _ = std::fs::remove_file(stale);
    }
    let config = DiskBootConfig {
        accel,
        memory_mib: plan.memory_mib,
        smp: plan.smp,
        firmware,
        overlay: overlay.to_owned(),
        console_log: console_path.clone(),
        qmp_socket: qmp_socket.clone(),
    };
    let args = config.args();
    let shown = shell_line(&plan.qemu_binary, &args);
    if plan.stream_console {
        info!("QEMU command line: {shown}");
    } else {
        debug!("QEMU command line: {shown}");
    }
    let started = Instant::now();
    let mut qemu = Supervised::spawn(&plan.qemu_binary, &args, &run.join("qemu.log"))?;
    qemu.wait_for_path(&qmp_socket, QMP_READY).await?;
    let (events_to, mut events) = mpsc::unbounded_channel();
    // Dropped before `qemu` (reverse order of declaration): the event reader
    // stops, then QEMU's process group is killed.
    let _qmp = Qmp::connect(&qmp_socket, QMP_READY, events_to).await?;

    let expect = plan.expect.as_str().to_owned();
    let console = ConsoleLog::new(&console_path);
    let mut lines = ConsoleLines::default();
    let mut offset = 0u64;
    // QEMU's reason for a shutdown (`guest-shutdown`, `guest-reset`, ...).
    let mut shutdown: Option<String> = None;
    loop {
        // Checked before the last read, so what QEMU wrote before exiting
        // is still judged.
        let exited = qemu.try_exit();
        let fresh = read_from(&console_path, &mut offset);
        for line in lines.push(&fresh) {
            if plan.stream_console {
                info!(target: "nixdisk::guest", "{line}");
            }
            match judge(&plan.expect, &line) {
                LineVerdict::Matched => return Ok((line, started.elapsed())),
                LineVerdict::Panicked => {
                    return Err(BootError::GuestPanicked {
                        expect,
                        tail: console.tail(TAIL_LINES),
                    });
                }
                LineVerdict::Continue => {}
            }
        }
        let partial = lines.partial();
        if !partial.is_empty() && plan.expect.is_match(&partial) {
            return Ok((partial, started.elapsed()));
        }
        while let Ok(event) = events.try_recv() {
            match event {
                VmEvent::GuestPanicked => {
                    return Err(BootError::GuestPanicked {
                        expect,
                        tail: console.tail(TAIL_LINES),
                    });
                }
                VmEvent::Shutdown { reason, .. } => shutdown = Some(reason),
            }
        }
        if let Some(status) = exited {
            let status = match &shutdown {
                Some(reason) => format!("{status}, after {reason}"),
                None => status.to_string(),
            };
            return Err(BootError::QemuExited {
                expect,
                status,
                tail: console.tail(TAIL_LINES),
                stderr: qemu.stderr_tail(10),
            });
        }
        if started.elapsed() > window {
            return Err(BootError::Timeout {
                expect,
                seconds: window.as_secs(),
                tail: console.tail(TAIL_LINES),
            });
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// The bytes appended to `path` since `offset` (none if it cannot be read
/// yet: QEMU creates it as it starts).
fn read_from(path: &Path, offset: &mut u64) -> Vec<u8> {
    let mut bytes = Vec::new();
    if let Ok(mut file) = std::fs::File::open(path)
        && file.seek(SeekFrom::Start(*offset)).is_ok()
        && file.read_to_end(&mut bytes).is_ok()
    {
        *offset += bytes.len() as u64;
    }
    bytes
}

/// Runs a helper to completion; its stdout, or an error with its stderr.
pub(super) async fn tool(program: &Path, args: &[&std::ffi::OsStr]) -> Result<String, BootError> {
    let command = shell_line(program, args);
    debug!("running {command}");
    let output = tokio::process::Command::new(program)
        .args(args)
        .stdin(std::process::Stdio::null())
        .kill_on_drop(true)
        .output()
        .await
        .map_err(|e| BootError::Tool {
            command: command.clone(),
            message: format!("cannot start it: {e}"),
        })?;
    if !output.status.success() {
        return Err(BootError::Tool {
            command,
            message: format!(
                "{}: {}",
                output.status,
                String::from_utf8_lossy(&output.stderr).trim_end()
            ),
        });
    }
    Ok(String::from_utf8_lossy(&output.stdout).into_owned())
}
