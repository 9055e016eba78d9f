//! Booting a finished disk image until its serial console shows an expected
//! line: the engine of `nixdisk boot`, the tool for bootloader tests.
//!
//! The pure parts: [`probe`] reads an image's format and boot partitions
//! (which decide `--firmware auto`), [`argv`] computes QEMU's command line,
//! [`matcher`] turns console bytes into cleaned lines and judges them, and
//! [`entry`] plans the change that selects a boot entry. [`boot_until`]
//! carries a [`BootPlan`] out: a private run directory holding a throwaway
//! qcow2 overlay over the image (so booting never changes it) and a copy of
//! the EFI variables, QEMU under supervision, QMP for panics, and the console
//! watched until the regex matches, the deadline passes, the guest panics or
//! QEMU exits. Whatever happens, QEMU is killed and the run directory removed
//! when [`boot_until`] returns or its future is dropped (Ctrl-C).

pub mod argv;
pub mod entry;
pub mod entry_grub;
mod error;
pub mod matcher;
pub mod probe;
mod run;

use std::path::PathBuf;
use std::time::Duration;

pub use crate::builder_vm::AccelChoice;
pub use error::BootError;
pub use probe::ImageFormat;
pub use run::{boot_until, inspect};

/// Which firmware boots the image.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum FirmwareChoice {
    /// OVMF when the image has an EFI system partition, else SeaBIOS.
    #[default]
    Auto,
    /// UEFI.
    Ovmf,
    /// Legacy BIOS.
    SeaBios,
}

/// Everything a boot test needs.
#[derive(Debug, Clone)]
pub struct BootPlan {
    /// The image, in any format nixdisk writes; it is never modified.
    pub image: PathBuf,
    /// The firmware.
    pub firmware: FirmwareChoice,
    /// An EFI variables file to start from (a copy is used).
    pub efi_vars: Option<PathBuf>,
    /// The text to wait for, matched against each cleaned console line.
    pub expect: regex::Regex,
    /// How long to wait for it.
    pub timeout: Duration,
    /// KVM, TCG, or KVM with TCG as the fallback.
    pub accel: AccelChoice,
    /// Guest RAM in MiB.
    pub memory_mib: u64,
    /// Virtual CPUs.
    pub smp: u32,
    /// A boot entry to select, counted from 1 (see [`entry`]).
    pub entry: Option<u32>,
    /// The QEMU binary.
    pub qemu_binary: PathBuf,
    /// The `qemu-img` binary.
    pub qemu_img: PathBuf,
    /// Log every console line as it comes (`-v`).
    pub stream_console: bool,
    /// Where the run directory is created (default: `$TMPDIR`).
    pub run_dir_parent: Option<PathBuf>,
}

impl BootPlan {
    /// A plan with the defaults of `nixdisk boot`: auto firmware and
    /// accelerator, 120 s, 1 GiB of RAM, one vCPU.
    pub fn new(image: impl Into<PathBuf>, expect: regex::Regex) -> BootPlan {
        BootPlan {
            image: image.into(),
            firmware: FirmwareChoice::Auto,
            efi_vars: None,
            expect,
            timeout: Duration::from_secs(120),
            accel: AccelChoice::Auto,
            memory_mib: 1024,
            smp: 1,
            entry: None,
            qemu_binary: "qemu-system-x86_64".into(),
            qemu_img: "qemu-img".into(),
            stream_console: false,
            run_dir_parent: None,
        }
    }
}

/// A boot that showed the expected text.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct BootOutcome {
    /// The console line that matched (cleaned).
    pub line: String,
    /// From QEMU's start to the match.
    pub elapsed: Duration,
    /// The image's format.
    pub format: ImageFormat,
    /// The firmware that booted it.
    pub firmware: nixdisk_firmware::FirmwareKind,
    /// The accelerator that ran it.
    pub accel: crate::qemu::Accel,
}
