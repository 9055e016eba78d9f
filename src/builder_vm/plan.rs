//! The pure decisions of starting a builder VM: the kernel command line, the
//! order in which accelerators are tried, and where the agent binary is
//! looked for.

use std::path::{Path, PathBuf};

use crate::qemu::Accel;

/// What `--accel` asked for.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum AccelChoice {
    /// KVM when `/dev/kvm` opens and the agent says hello in time, else TCG.
    #[default]
    Auto,
    /// KVM only.
    Kvm,
    /// TCG only.
    Tcg,
}

/// The environment variable that sets the accelerator of `nixdisk build`'s
/// builder VM: `auto`, `kvm` or `tcg` (on hosts where `/dev/kvm` opens but
/// hangs, `tcg` skips the KVM probe's wait).
pub const ACCEL_ENV: &str = "NIXDISK_ACCEL";

impl AccelChoice {
    /// Parses `auto`, `kvm` or `tcg`.
    pub fn from_name(name: &str) -> Option<AccelChoice> {
        match name.trim() {
            "auto" | "" => Some(AccelChoice::Auto),
            "kvm" => Some(AccelChoice::Kvm),
            "tcg" => Some(AccelChoice::Tcg),
            _ => None,
        }
    }

    /// The choice in [`ACCEL_ENV`]; `auto` when unset, and (with a warning)
    /// when it holds something else.
    pub fn from_env() -> AccelChoice {
        let Ok(value) = std::env::var(ACCEL_ENV) else {
            return AccelChoice::Auto;
        };
        AccelChoice::from_name(&value).unwrap_or_else(|| {
            tracing::warn!("{ACCEL_ENV}=`{value}` is not auto, kvm or tcg; using auto");
            AccelChoice::Auto
        })
    }
}

/// The accelerators to try, in order.
pub fn accel_attempts(choice: AccelChoice, kvm_opens: bool) -> Vec<Accel> {
    match choice {
        AccelChoice::Auto if kvm_opens => vec![Accel::Kvm, Accel::Tcg],
        AccelChoice::Auto | AccelChoice::Tcg => vec![Accel::Tcg],
        AccelChoice::Kvm => vec![Accel::Kvm],
    }
}

/// The guest kernel command line: a serial console, no reboot on panic
/// (QEMU exits instead), and the agent's settings. `extra` comes last and
/// replaces any default with the same key (`key=` up to the `=`).
pub fn kernel_cmdline(transport: &str, share: Option<&str>, extra: &[String]) -> String {
    let mut args: Vec<String> = vec![
        "console=ttyS0".into(),
        "loglevel=4".into(),
        "panic=-1".into(),
        // The emulated CPU makes the TSC look unstable; skip the slow checks.
        "tsc=reliable".into(),
        // Boot-time work a throw-away builder does not need, each measured
        // under TCG (to /init: 3.8 s before, 2.4 s after): the crypto
        // self-tests run as modules load, the delay-loop calibration (the
        // TSC serves delays; lpj is only the skipped estimate), speculation
        // mitigations patched into the kernel text, and PS/2 probing.
        "cryptomgr.notests".into(),
        "lpj=10000000".into(),
        "no_timer_check".into(),
        "mitigations=off".into(),
        "i8042.noaux".into(),
        "i8042.nokbd".into(),
        "i8042.nopnp".into(),
        format!("nixdisk.transport={transport}"),
    ];
    if let Some(share) = share {
        args.push(format!("nixdisk.share={share}"));
    }
    let key = |arg: &str| arg.split_once('=').map_or(arg, |(k, _)| k).to_owned();
    for arg in extra {
        let k = key(arg);
        args.retain(|a| key(a) != k);
        args.push(arg.clone());
    }
    args.join(" ")
}

/// Places the agent binary is looked for, in order: `--agent`,
/// `$NIXDISK_AGENT`, the static build made by `scripts/build-agent` under
/// `target_dir`, and beside the running executable (an installed nixdisk).
/// A plain `cargo build` of the agent is dynamic and cannot be `/init`, so
/// the static build comes before the executable's directory.
pub fn agent_candidates(
    explicit: Option<&Path>,
    env: Option<&Path>,
    current_exe: Option<&Path>,
    target_dir: Option<&Path>,
) -> Vec<PathBuf> {
    let mut out = Vec::new();
    if let Some(p) = explicit {
        out.push(p.to_owned());
        // An explicit path is the only one the user wants looked at.
        return out;
    }
    out.extend(env.map(Path::to_owned));
    if let Some(target) = target_dir {
        out.push(target.join("x86_64-unknown-linux-gnu/release/nixdisk-agent"));
    }
    if let Some(dir) = current_exe.and_then(Path::parent) {
        out.push(dir.join("nixdisk-agent"));
    }
    out
}

/// Whether `elf` is a statically linked ELF64 executable (no `PT_INTERP`
/// program header), as `/init` in an initramfs with no libraries must be.
/// `None` when the bytes are not a complete 64-bit little-endian ELF header.
pub fn is_static_elf(elf: &[u8]) -> Option<bool> {
    const PT_INTERP: u32 = 3;
    if elf.get(..4)? != b"\x7fELF" || *elf.get(4)? != 2 || *elf.get(5)? != 1 {
        return None;
    }
    let u16_at = |o: usize| Some(u16::from_le_bytes(elf.get(o..o + 2)?.try_into().ok()?));
    let u32_at = |o: usize| Some(u32::from_le_bytes(elf.get(o..o + 4)?.try_into().ok()?));
    let u64_at = |o: usize| Some(u64::from_le_bytes(elf.get(o..o + 8)?.try_into().ok()?));
    let phoff = usize::try_from(u64_at(0x20)?).ok()?;
    let phentsize = usize::from(u16_at(0x36)?);
    let phnum = usize::from(u16_at(0x38)?);
    for i in 0..phnum {
        if u32_at(phoff.checked_add(i.checked_mul(phentsize)?)?)? == PT_INTERP {
            return Some(false);
        }
    }
    Some(true)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn auto_tries_kvm_first_only_when_it_opens() {
        assert_eq!(
            accel_attempts(AccelChoice::Auto, true),
            [Accel::Kvm, Accel::Tcg]
        );
        assert_eq!(accel_attempts(AccelChoice::Auto, false), [Accel::Tcg]);
        assert_eq!(accel_attempts(AccelChoice::Kvm, false), [Accel::Kvm]);
        assert_eq!(accel_attempts(AccelChoice::Tcg, true), [Accel::Tcg]);
        assert_eq!(AccelChoice::from_name("tcg"), Some(AccelChoice::Tcg));
        assert_eq!(AccelChoice::from_name("kvm"), Some(AccelChoice::Kvm));
        assert_eq!(AccelChoice::from_name(""), Some(AccelChoice::Auto));
        assert_eq!(AccelChoice::from_name("hvf"), None);
    }

    #[test]
    fn kernel_cmdline_carries_the_agent_settings() {
        assert_eq!(
            kernel_cmdline("vsock:1024", Some("9p:nixdisk-host"), &[]),
            "console=ttyS0 loglevel=4 panic=-1 tsc=reliable cryptomgr.notests lpj=10000000 \
             no_timer_check mitigations=off i8042.noaux i8042.nokbd i8042.nopnp nixdisk.transport=vsock:1024 \
             nixdisk.share=9p:nixdisk-host"
        );
        assert_eq!(
            kernel_cmdline("serial:org.nixdisk.agent", None, &[]),
            "console=ttyS0 loglevel=4 panic=-1 tsc=reliable cryptomgr.notests lpj=10000000 \
             no_timer_check mitigations=off i8042.noaux i8042.nokbd i8042.nopnp \
             nixdisk.transport=serial:org.nixdisk.agent"
        );
    }

    #[test]
    fn extra_arguments_replace_defaults_with_the_same_key() {
        let extra = ["nixdisk.share=9p:wrong".to_owned(), "quiet".to_owned()];
        assert_eq!(
            kernel_cmdline("vsock:1024", Some("9p:nixdisk-host"), &extra),
            "console=ttyS0 loglevel=4 panic=-1 tsc=reliable cryptomgr.notests lpj=10000000 \
             no_timer_check mitigations=off i8042.noaux i8042.nokbd i8042.nopnp nixdisk.transport=vsock:1024 \
             nixdisk.share=9p:wrong quiet"
        );
    }

    #[test]
    fn agent_candidates_in_order() {
        let exe = Path::new("/w/target/debug/deps/builder_vm-123");
        assert_eq!(
            agent_candidates(
                None,
                Some(Path::new("/env/agent")),
                Some(exe),
                Some(Path::new("/w/target"))
            ),
            [
                PathBuf::from("/env/agent"),
                "/w/target/x86_64-unknown-linux-gnu/release/nixdisk-agent".into(),
                "/w/target/debug/deps/nixdisk-agent".into(),
            ]
        );
        assert_eq!(
            agent_candidates(
                Some(Path::new("/a")),
                Some(Path::new("/env/agent")),
                Some(exe),
                None
            ),
            [PathBuf::from("/a")]
        );
    }

    #[test]
    fn static_and_dynamic_executables_are_told_apart() {
        let dynamic = std::fs::read("/bin/sh").expect("/bin/sh");
        assert_eq!(is_static_elf(&dynamic), Some(false));
        let busybox = std::fs::read("/bin/busybox").expect("busybox-static is installed");
        assert_eq!(is_static_elf(&busybox), Some(true));
        assert_eq!(is_static_elf(b"#!/bin/sh\n"), None);
        assert_eq!(is_static_elf(&busybox[..0x30]), None);
    }
}
