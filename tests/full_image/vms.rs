//! Booting built images: a QEMU guard (`-snapshot`, so the image is never
//! changed) that waits for a console marker and kills QEMU by its pid on
//! drop, and a slot count that keeps at most two VMs (builder or boot) of
//! this test binary running at once (CI has two cores).

use std::fs;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::{Condvar, Mutex};
use std::thread::sleep;
use std::time::{Duration, Instant};

/// How many VMs of this test binary may run at once.
const VM_SLOTS: usize = 2;
/// How long a boot under TCG may take before the test gives up.
const BOOT_TIMEOUT: Duration = Duration::from_secs(300);

static USED: Mutex<usize> = Mutex::new(0);
static FREED: Condvar = Condvar::new();

/// One of the VM slots, given back on drop.
pub struct VmSlot;

impl VmSlot {
    /// Waits for a free slot.
    pub fn take() -> VmSlot {
        let mut used = USED.lock().unwrap_or_else(|e| e.into_inner());
        while *used >= VM_SLOTS {
            used = FREED.wait(used).unwrap_or_else(|e| e.into_inner());
        }
        *used += 1;
        VmSlot
    }
}

impl Drop for VmSlot {
    fn drop(&mut self) {
        let mut used = USED.lock().unwrap_or_else(|e| e.into_inner());
        *used -= 1;
        FREED.notify_one();
    }
}

/// The firmware an image is booted with.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Firmware {
    /// SeaBIOS boots the disk's MBR (GRUB).
    SeaBios,
    /// OVMF boots the ESP's removable-media path.
    Ovmf,
}

/// The OVMF the builder VM uses (the same discovery), so variables it wrote
/// fit the code they are booted with.
pub fn ovmf() -> nixdisk_firmware::Ovmf {
    let search = nixdisk_firmware::Search::system(None);
    match nixdisk_firmware::find(
        nixdisk_firmware::FirmwareKind::Uefi,
        &search,
        &Default::default(),
        nixdisk_firmware::Want::default(),
    ) {
        Ok(nixdisk_firmware::Firmware::Ovmf(ovmf)) => {
            assert!(!ovmf.needs_smm, "a plain OVMF is found: {ovmf:?}");
            ovmf
        }
        other => panic!("OVMF is installed (scripts/setup): {other:?}"),
    }
}

/// A running QEMU booting an image; killed (by pid) on drop.
struct BootVm {
    child: Child,
    console: PathBuf,
    _dir: tempfile::TempDir,
    _slot: VmSlot,
}

/// Boots `image` (any format QEMU reads; `format` as `-drive format=`) on
/// `firmware` and waits until the console shows `marker`; panics with the
/// console's tail otherwise. `efi_vars` replaces the blank OVMF variables.
/// Returns the seconds it took.
pub fn boot_to_marker(
    image: &Path,
    format: &str,
    firmware: Firmware,
    efi_vars: Option<&Path>,
    marker: &str,
) -> f64 {
    let slot = VmSlot::take();
    let dir = tempfile::Builder::new()
        .prefix("nixdisk-full-image-boot-")
        .tempdir()
        .expect("a temporary directory");
    let console = dir.path().join("console.log");
    let mut cmd = Command::new("qemu-system-x86_64");
    cmd.args(["-accel", "tcg", "-m", "256", "-display", "none"])
        .args(["-monitor", "none", "-no-reboot", "-snapshot"])
        .arg("-serial")
        .arg(format!("file:{}", console.display()))
        .arg("-drive")
        .arg(format!(
            "file={},if=virtio,format={format}",
            image.display()
        ));
    if firmware == Firmware::Ovmf {
        let ovmf = ovmf();
        let vars = dir.path().join("OVMF_VARS.fd");
        let template = efi_vars.unwrap_or(&ovmf.vars_template);
        fs::copy(template, &vars).expect("the OVMF variables can be copied");
        cmd.arg("-drive").arg(format!(
            "if=pflash,format={},readonly=on,file={}",
            ovmf.code_format,
            ovmf.code.display()
        ));
        cmd.arg("-drive").arg(format!(
            "if=pflash,format={},file={}",
            ovmf.vars_format,
            vars.display()
        ));
    }
    let child = cmd
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .expect("qemu-system-x86_64 starts (install qemu-system-x86)");
    let mut vm = BootVm {
        child,
        console,
        _dir: dir,
        _slot: slot,
    };
    let seconds = vm.wait_for(marker);
    eprintln!(
        "booted {} ({format}, {firmware:?}) in {seconds:.1} s",
        image.display()
    );
    seconds
}

impl BootVm {
    fn wait_for(&mut self, marker: &str) -> f64 {
        let start = Instant::now();
        loop {
            let exited = self.child.try_wait().expect("qemu's status can be read");
            // Read after the status: QEMU may write the marker just before exiting.
            let text = self.console_text();
            if text.contains(marker) {
                return start.elapsed().as_secs_f64();
            }
            if exited.is_some() || start.elapsed() > BOOT_TIMEOUT {
                let tail: String = text
                    .chars()
                    .rev()
                    .take(3000)
                    .collect::<Vec<_>>()
                    .into_iter()
                    .rev()
                    .collect();
                panic!(
                    "no '{marker}' on the console after {:?} (qemu {}); console tail:\n{tail}",
                    start.elapsed(),
                    match exited {
                        Some(status) => format!("exited: {status}"),
                        None => "still running".to_owned(),
                    }
                );
            }
            sleep(Duration::from_millis(250));
        }
    }

    fn console_text(&self) -> String {
        fs::read(&self.console)
            .map(|bytes| String::from_utf8_lossy(&bytes).into_owned())
            .unwrap_or_default()
    }
}

impl Drop for BootVm {
    fn drop(&mut self) {
        // Our own child, by pid; harmless when it has exited already.
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}
