//! Firmware locations that come without a QEMU descriptor: Nix's OVMF
//! outputs and the paths distributions install to.

use std::path::{Path, PathBuf};

/// An OVMF code + vars pair that may exist on disk.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct OvmfPair {
    /// The code image (read-only pflash).
    pub code: PathBuf,
    /// The variable-store template.
    pub vars: PathBuf,
}

impl OvmfPair {
    fn new(code: impl Into<PathBuf>, vars: impl Into<PathBuf>) -> Self {
        Self {
            code: code.into(),
            vars: vars.into(),
        }
    }
}

/// The pairs a Nix OVMF output may hold, in the order nixpkgs' own
/// `OVMF.fd` output lays them out (`FV/OVMF_CODE.fd` + `FV/OVMF_VARS.fd`),
/// then flatter layouts.
pub fn nix_ovmf_pairs(store_path: &Path) -> Vec<OvmfPair> {
    vec![
        OvmfPair::new(
            store_path.join("FV/OVMF_CODE.fd"),
            store_path.join("FV/OVMF_VARS.fd"),
        ),
        OvmfPair::new(
            store_path.join("OVMF_CODE.fd"),
            store_path.join("OVMF_VARS.fd"),
        ),
        OvmfPair::new(
            store_path.join("share/qemu/edk2-x86_64-code.fd"),
            store_path.join("share/qemu/edk2-i386-vars.fd"),
        ),
    ]
}

/// Non-secure-boot, non-SMM OVMF builds at the paths distributions use:
/// Debian/Ubuntu, Fedora, Arch, openSUSE, and QEMU's bundled edk2.
pub fn distro_ovmf_pairs() -> Vec<OvmfPair> {
    vec![
        OvmfPair::new(
            "/usr/share/OVMF/OVMF_CODE_4M.fd",
            "/usr/share/OVMF/OVMF_VARS_4M.fd",
        ),
        OvmfPair::new(
            "/usr/share/OVMF/OVMF_CODE.fd",
            "/usr/share/OVMF/OVMF_VARS.fd",
        ),
        OvmfPair::new(
            "/usr/share/edk2/ovmf/OVMF_CODE.fd",
            "/usr/share/edk2/ovmf/OVMF_VARS.fd",
        ),
        OvmfPair::new(
            "/usr/share/edk2/x64/OVMF_CODE.4m.fd",
            "/usr/share/edk2/x64/OVMF_VARS.4m.fd",
        ),
        OvmfPair::new(
            "/usr/share/edk2-ovmf/x64/OVMF_CODE.fd",
            "/usr/share/edk2-ovmf/x64/OVMF_VARS.fd",
        ),
        OvmfPair::new(
            "/usr/share/qemu/ovmf-x86_64-code.bin",
            "/usr/share/qemu/ovmf-x86_64-vars.bin",
        ),
        OvmfPair::new(
            "/usr/share/qemu/edk2-x86_64-code.fd",
            "/usr/share/qemu/edk2-i386-vars.fd",
        ),
    ]
}
