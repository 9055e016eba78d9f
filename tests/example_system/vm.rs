//! A QEMU run of the example system that waits for a console marker: the VM
//! is killed when the guard drops, whatever the test's outcome.

use std::fs;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::thread::sleep;
use std::time::{Duration, Instant};

/// How long a boot under TCG may take before the test gives up.
pub const BOOT_TIMEOUT: Duration = Duration::from_secs(240);

/// The firmware a VM boots with.
pub enum Firmware<'a> {
    /// QEMU loads the kernel and initrd itself (SeaBIOS underneath).
    DirectKernel {
        kernel: &'a Path,
        initrd: &'a Path,
        append: &'a str,
    },
    /// SeaBIOS boots the disk's MBR (GRUB).
    SeaBios,
    /// OVMF boots the disk's ESP (systemd-boot); `vars` is a writable copy of
    /// OVMF_VARS.fd.
    Ovmf { vars: &'a Path },
}

/// A running QEMU whose serial console goes to a file.
pub struct Vm {
    child: Child,
    console: PathBuf,
}

impl Vm {
    /// Starts QEMU (TCG, 512 MiB, no reboot) on the raw `disk` attached as
    /// virtio-blk; the console is written to `console`.
    pub fn start(firmware: Firmware, disk: &Path, console: &Path) -> Vm {
        let mut cmd = Command::new("qemu-system-x86_64");
        cmd.args(["-accel", "tcg", "-m", "512", "-display", "none"])
            .args(["-monitor", "none", "-no-reboot"])
            .arg("-serial")
            .arg(format!("file:{}", console.display()))
            .arg("-drive")
            .arg(format!("file={},if=virtio,format=raw", disk.display()));
        match firmware {
            Firmware::DirectKernel {
                kernel,
                initrd,
                append,
            } => {
                cmd.arg("-kernel").arg(kernel).arg("-initrd").arg(initrd);
                cmd.args(["-append", append]);
            }
            Firmware::SeaBios => {}
            Firmware::Ovmf { vars } => {
                cmd.args([
                    "-drive",
                    "if=pflash,format=raw,readonly=on,file=/usr/share/OVMF/OVMF_CODE.fd",
                ]);
                cmd.arg("-drive")
                    .arg(format!("if=pflash,format=raw,file={}", vars.display()));
            }
        }
        let child = cmd
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::inherit())
            .spawn()
            .expect("qemu-system-x86_64 starts (install qemu-system-x86)");
        Vm {
            child,
            console: console.to_path_buf(),
        }
    }

    /// Waits until the console shows `marker` (anywhere in the text: firmware
    /// escapes precede it), panicking with the console's tail when QEMU ends
    /// without it or the timeout passes.
    pub fn wait_for(&mut self, marker: &str) {
        let start = Instant::now();
        loop {
            let text = self.console_text();
            if text.contains(marker) {
                return;
            }
            let exited = self.child.try_wait().expect("qemu's status can be read");
            if exited.is_some() || start.elapsed() > BOOT_TIMEOUT {
                // Read once more: QEMU may have written the marker just before exiting.
                let text = self.console_text();
                if text.contains(marker) {
                    return;
                }
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
                        None => "still running".to_string(),
                    }
                );
            }
            sleep(Duration::from_millis(250));
        }
    }

    /// Waits (briefly) for QEMU to exit after the guest powered off.
    pub fn wait_for_exit(&mut self) {
        let start = Instant::now();
        while start.elapsed() < Duration::from_secs(30) {
            if self
                .child
                .try_wait()
                .expect("qemu's status can be read")
                .is_some()
            {
                return;
            }
            sleep(Duration::from_millis(100));
        }
        panic!("qemu did not exit within 30 s after the guest printed its marker");
    }

    fn console_text(&self) -> String {
        fs::read(&self.console)
            .map(|bytes| String::from_utf8_lossy(&bytes).into_owned())
            .unwrap_or_default()
    }
}

impl Drop for Vm {
    fn drop(&mut self) {
        // Kill by our own child's pid; harmless when it has exited already.
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}
