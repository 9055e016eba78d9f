//! `nixdisk boot`: boots a disk image and succeeds when its serial console
//! shows the expected text; the tool for bootloader and lifecycle tests.
//!
//! The flags live here, the work in [`crate::boot_test`]. Exit status: 0 when
//! a console line matched; an error (timeout, guest panic, QEMU exiting
//! first) carries the console's last lines; 130 after Ctrl-C, with QEMU
//! killed and the run directory removed.

use std::path::PathBuf;
use std::time::Duration;

use anyhow::Context;

use crate::boot_test::{AccelChoice, BootPlan, FirmwareChoice, boot_until};
use crate::cli::vm::AccelArg;
use crate::interrupt::Signals;

/// Firmware for `nixdisk boot --firmware`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum BootFirmwareArg {
    /// OVMF when the image has an EFI system partition, else SeaBIOS.
    Auto,
    /// UEFI (OVMF).
    Ovmf,
    /// Legacy BIOS (SeaBIOS).
    Seabios,
}

/// Arguments of `nixdisk boot`.
#[derive(Debug, Clone, clap::Args)]
pub struct BootArgs {
    /// The disk image: raw, qcow2, vdi, vpc, vmdk or vhdx (detected). It is
    /// never modified: the VM writes to a throwaway overlay.
    #[arg(value_name = "IMAGE")]
    pub image: PathBuf,
    /// The firmware; `auto` picks OVMF for images with an EFI system
    /// partition and SeaBIOS for the others.
    #[arg(long, value_enum, default_value_t = BootFirmwareArg::Auto)]
    pub firmware: BootFirmwareArg,
    /// EFI variables to start OVMF with (e.g. the efi-vars.fd of a build);
    /// a copy is used, the file is not modified.
    #[arg(long, value_name = "FILE")]
    pub efi_vars: Option<PathBuf>,
    /// Succeed when a console line matches this regex (anywhere in the line,
    /// after screen-control escapes are removed).
    #[arg(long, value_name = "REGEX")]
    pub expect: regex::Regex,
    /// Give up after this many seconds.
    #[arg(long, value_name = "SECONDS", default_value_t = 120)]
    pub timeout: u64,
    /// How QEMU runs the guest; `auto` tries KVM for 30 s, then TCG.
    #[arg(long, value_enum, default_value_t = AccelArg::Auto)]
    pub accel: AccelArg,
    /// Guest RAM in MiB.
    #[arg(long, value_name = "MIB", default_value_t = 1024)]
    pub mem: u64,
    /// Boot entry N instead of the default, on the overlay only. GRUB (BIOS,
    /// or EFI without systemd-boot): `next_entry=nixos-generation-N` in
    /// grubenv, else the N-th menu entry. systemd-boot: `default` in
    /// loader.conf, loader/entries/nixos-generation-N.conf if present, else
    /// the N-th entry in version order.
    #[arg(long, value_name = "N", value_parser = clap::value_parser!(u32).range(1..))]
    pub entry: Option<u32>,
    /// Show the QEMU command line and stream the console. The top-level
    /// `-v` sets this (the CLI copies its global flag here).
    #[arg(skip)]
    pub verbose: bool,
}

impl BootArgs {
    /// The library's plan for these flags.
    pub fn plan(&self) -> BootPlan {
        let mut plan = BootPlan::new(&self.image, self.expect.clone());
        plan.firmware = match self.firmware {
            BootFirmwareArg::Auto => FirmwareChoice::Auto,
            BootFirmwareArg::Ovmf => FirmwareChoice::Ovmf,
            BootFirmwareArg::Seabios => FirmwareChoice::SeaBios,
        };
        plan.efi_vars = self.efi_vars.clone();
        plan.timeout = Duration::from_secs(self.timeout);
        plan.accel = match self.accel {
            AccelArg::Auto => AccelChoice::Auto,
            AccelArg::Kvm => AccelChoice::Kvm,
            AccelArg::Tcg => AccelChoice::Tcg,
        };
        plan.memory_mib = self.mem;
        plan.entry = self.entry;
        plan.stream_console = self.verbose;
        plan
    }
}

/// Runs `nixdisk boot`: 0 when the console showed the text, 130 after
/// Ctrl-C; a failed boot is an error whose message holds the console tail.
pub fn run(args: BootArgs) -> anyhow::Result<i32> {
    let plan = args.plan();
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .context("cannot start the async runtime")?;
    runtime.block_on(async {
        // Registered before anything starts, so no Ctrl-C or SIGTERM kills
        // us half-way.
        let mut signals = Signals::listen().context("cannot listen for Ctrl-C and SIGTERM")?;
        tokio::select! {
            result = boot_until(&plan) => {
                let outcome = result.with_context(|| format!("booting {} failed", plan.image.display()))?;
                tracing::info!(
                    line = %outcome.line,
                    seconds = format!("{:.1}", outcome.elapsed.as_secs_f64()),
                    firmware = ?outcome.firmware,
                    accel = ?outcome.accel,
                    "the console showed /{}/",
                    plan.expect
                );
                Ok(0)
            }
            signal = signals.recv() => {
                // Dropping boot_until's future killed QEMU and removed the
                // run directory.
                Ok(signal.exit_code())
            }
        }
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use clap::Parser;

    #[derive(Debug, clap::Parser)]
    struct Wrapper {
        #[command(flatten)]
        boot: BootArgs,
    }

    #[test]
    fn flags_map_onto_the_plan() {
        let args = Wrapper::try_parse_from([
            "boot",
            "disk.vhdx",
            "--expect",
            "MARKER-[0-9]",
            "--firmware",
            "ovmf",
            "--efi-vars",
            "vars.fd",
            "--timeout",
            "30",
            "--accel",
            "tcg",
            "--mem",
            "512",
            "--entry",
            "2",
        ])
        .expect("valid flags")
        .boot;
        let plan = args.plan();
        assert_eq!(plan.image, PathBuf::from("disk.vhdx"));
        assert_eq!(plan.expect.as_str(), "MARKER-[0-9]");
        assert_eq!(plan.firmware, FirmwareChoice::Ovmf);
        assert_eq!(plan.efi_vars, Some(PathBuf::from("vars.fd")));
        assert_eq!(plan.timeout, Duration::from_secs(30));
        assert_eq!(plan.accel, AccelChoice::Tcg);
        assert_eq!(plan.memory_mib, 512);
        assert_eq!(plan.entry, Some(2));
    }

    #[test]
    fn defaults_and_rejections() {
        let plan = Wrapper::try_parse_from(["boot", "a.img", "--expect", "x"])
            .expect("valid flags")
            .boot
            .plan();
        assert_eq!(plan.firmware, FirmwareChoice::Auto);
        assert_eq!(plan.accel, AccelChoice::Auto);
        assert_eq!(plan.timeout, Duration::from_secs(120));
        assert_eq!(plan.entry, None);
        assert!(!plan.stream_console);
        // A bad regex, a missing --expect, entry 0: usage errors.
        assert!(Wrapper::try_parse_from(["boot", "a.img", "--expect", "("]).is_err());
        assert!(Wrapper::try_parse_from(["boot", "a.img"]).is_err());
        assert!(
            Wrapper::try_parse_from(["boot", "a.img", "--expect", "x", "--entry", "0"]).is_err()
        );
    }
}
