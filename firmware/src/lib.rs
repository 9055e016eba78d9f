//! Firmware discovery for nixdisk's builder VM: OVMF and SeaBIOS.
//!
//! Where firmware is looked for, in order of precedence:
//! 1. explicit overrides (the spec's `efiFirmware` / `efiVariables`, or flags);
//! 2. a Nix OVMF output given by path or by `$OVMF`;
//! 3. QEMU's firmware descriptors (`/usr/share/qemu/firmware/*.json`,
//!    `/etc/qemu/firmware`, `~/.config/qemu/firmware`, and the descriptor
//!    directory next to the QEMU binary, as on NixOS);
//! 4. the paths distributions install OVMF to.
//!
//! For builds a plain OVMF (no secure boot, no SMM) is preferred: it boots
//! faster. When only an SMM build exists, [`Ovmf::needs_smm`] tells the VM
//! side to use `-machine q35,smm=on` and a secure pflash
//! (`-global driver=cfi.pflash01,property=secure,value=on`), as nixpkgs does.

mod descriptor;
mod known;
mod ovmf;

use std::fmt;
use std::path::{Path, PathBuf};

use tracing::debug;

pub use descriptor::{Descriptor, default_descriptor_dirs, read_descriptor_dirs};
pub use known::{OvmfPair, distro_ovmf_pairs, nix_ovmf_pairs};
pub use ovmf::find_ovmf;

/// The firmware the builder VM boots with.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Firmware {
    /// Legacy BIOS.
    SeaBios(SeaBios),
    /// UEFI.
    Ovmf(Ovmf),
}

/// Which kind of firmware a build asks for.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum FirmwareKind {
    /// UEFI (OVMF).
    Uefi,
    /// Legacy BIOS (SeaBIOS).
    Bios,
}

/// A SeaBIOS image.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SeaBios {
    /// The image to pass with `-bios`; `None` means QEMU's built-in default,
    /// which every QEMU install carries.
    pub path: Option<PathBuf>,
}

/// An OVMF build: code and variable-store template, and what it needs.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Ovmf {
    /// The code image, mapped as read-only pflash unit 0.
    pub code: PathBuf,
    /// Format of `code` (`raw` or `qcow2`), for `-drive format=`.
    pub code_format: String,
    /// The variable-store template; copy it with [`Ovmf::prepare_vars`]
    /// before use, never map it directly.
    pub vars_template: PathBuf,
    /// Format of `vars_template`.
    pub vars_format: String,
    /// The firmware requires SMM: use `q35,smm=on` and a secure pflash.
    pub needs_smm: bool,
    /// The firmware enforces secure boot when keys are enrolled.
    pub secure_boot: bool,
    /// Where it was found, for logs and error messages.
    pub origin: String,
}

/// The x86_64 machine type the VM will use; descriptors list the machine
/// types a firmware supports.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Machine {
    /// `q35` (`pc-q35-*`).
    Q35,
    /// `pc` (`pc-i440fx-*`).
    I440fx,
}

impl Machine {
    fn prefix(self) -> &'static str {
        match self {
            Machine::Q35 => "pc-q35-",
            Machine::I440fx => "pc-i440fx-",
        }
    }

    /// Whether a descriptor's machine pattern (e.g. `pc-q35-*`, `pc-q35-8.*`)
    /// can match this machine type. The QEMU version is not known here, so a
    /// version-restricted pattern of the right family counts as a match.
    pub fn matches_pattern(self, pattern: &str) -> bool {
        let prefix = self.prefix();
        let literal_end = pattern.find(['*', '?']).unwrap_or(pattern.len());
        let literal = &pattern[..literal_end];
        if literal.starts_with(prefix) {
            return true;
        }
        prefix.starts_with(literal) && descriptor::glob_match(pattern, &format!("{prefix}0.0"))
    }
}

impl fmt::Display for Machine {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Machine::Q35 => "q35",
            Machine::I440fx => "pc",
        })
    }
}

/// Where to look for firmware.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Search {
    /// QEMU descriptor directories, lowest precedence first.
    pub descriptor_dirs: Vec<PathBuf>,
    /// A Nix OVMF output (the `fd` output of nixpkgs' `OVMF`), from a flag
    /// or `$OVMF`.
    pub nix_ovmf: Option<PathBuf>,
    /// Known distribution paths, tried last.
    pub distro_ovmf: Vec<OvmfPair>,
}

impl Search {
    /// The places a host normally has: QEMU's descriptor directories (also
    /// the one beside the `qemu_binary`, if given, e.g. a Nix store QEMU),
    /// `$OVMF`, and the distribution paths.
    pub fn system(qemu_binary: Option<&Path>) -> Self {
        let mut descriptor_dirs = Vec::new();
        if let Some(share) = qemu_binary.and_then(qemu_share_dir) {
            descriptor_dirs.push(share.join("firmware"));
        }
        for dir in default_descriptor_dirs() {
            if !descriptor_dirs.contains(&dir) {
                descriptor_dirs.push(dir);
            }
        }
        Self {
            descriptor_dirs,
            nix_ovmf: std::env::var_os("OVMF").map(PathBuf::from),
            distro_ovmf: distro_ovmf_pairs(),
        }
    }

    /// Only the given descriptor directories (for tests and strict setups).
    pub fn descriptors_only(dirs: Vec<PathBuf>) -> Self {
        Self {
            descriptor_dirs: dirs,
            nix_ovmf: None,
            distro_ovmf: Vec::new(),
        }
    }
}

/// `<prefix>/share/qemu` for a QEMU binary at `<prefix>/bin/qemu-system-*`.
fn qemu_share_dir(binary: &Path) -> Option<PathBuf> {
    let prefix = binary.parent()?.parent()?;
    Some(prefix.join("share/qemu"))
}

/// Explicit firmware files from the spec (`efiFirmware`, `efiVariables`) or
/// flags; either may be given alone, the other is then discovered.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Overrides {
    /// OVMF code image.
    pub code: Option<PathBuf>,
    /// OVMF variable-store template.
    pub vars: Option<PathBuf>,
}

/// What a build wants from the firmware.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Want {
    /// Machine type the VM uses.
    pub machine: Machine,
    /// Prefer a secure-boot build (otherwise a plain one is preferred).
    pub secure_boot: bool,
}

impl Default for Want {
    fn default() -> Self {
        Self {
            machine: Machine::Q35,
            secure_boot: false,
        }
    }
}

/// One place looked at, and why it was not used (for error messages).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Looked {
    /// The file or directory.
    pub path: PathBuf,
    /// Why it was passed over.
    pub why: String,
}

impl Looked {
    /// Records `path` with the reason it was not used.
    pub fn new(path: impl AsRef<Path>, why: impl Into<String>) -> Self {
        Self {
            path: path.as_ref().to_path_buf(),
            why: why.into(),
        }
    }
}

/// Errors of firmware discovery.
#[derive(Debug, thiserror::Error)]
pub enum FirmwareError {
    /// No usable OVMF anywhere.
    #[error(
        "no UEFI firmware (OVMF) found for x86_64 machine `{machine}`; looked at:\n{}\n\
         hint: install OVMF (Debian/Ubuntu: `apt install ovmf`), set $OVMF to a Nix OVMF \
         output (`nix-build '<nixpkgs>' -A OVMF.fd`), or give efiFirmware and efiVariables",
        list(.looked)
    )]
    OvmfNotFound {
        /// The machine type asked for.
        machine: Machine,
        /// Every place looked at, with the reason it was passed over.
        looked: Vec<Looked>,
    },
    /// An explicitly given firmware file does not exist.
    #[error("{what} `{}` does not exist or is not a file; hint: give the path of an OVMF {what}", path.display())]
    OverrideMissing {
        /// `efiFirmware` or `efiVariables`.
        what: &'static str,
        /// The path given.
        path: PathBuf,
    },
    /// Copying the variable-store template failed.
    #[error("cannot copy the OVMF variable template `{}` to `{}`: {source}", template.display(), dest.display())]
    PrepareVars {
        /// The template.
        template: PathBuf,
        /// The private copy.
        dest: PathBuf,
        /// The I/O error.
        source: std::io::Error,
    },
}

fn list(looked: &[Looked]) -> String {
    if looked.is_empty() {
        return "  (nowhere: no search locations were configured)".to_owned();
    }
    looked
        .iter()
        .map(|l| format!("  {}: {}", l.path.display(), l.why))
        .collect::<Vec<_>>()
        .join("\n")
}

/// Finds the firmware for `kind`.
pub fn find(
    kind: FirmwareKind,
    search: &Search,
    overrides: &Overrides,
    want: Want,
) -> Result<Firmware, FirmwareError> {
    match kind {
        FirmwareKind::Uefi => find_ovmf(search, overrides, want).map(Firmware::Ovmf),
        FirmwareKind::Bios => Ok(Firmware::SeaBios(find_seabios(search, want.machine))),
    }
}

/// SeaBIOS from a `bios` descriptor, or QEMU's built-in default.
pub fn find_seabios(search: &Search, machine: Machine) -> SeaBios {
    let mut looked = Vec::new();
    let found = read_descriptor_dirs(&search.descriptor_dirs, &mut looked)
        .into_iter()
        .filter(|(_, d)| d.interface_types.iter().any(|t| t == "bios") && d.supports(machine))
        .filter(|(_, d)| d.mapping.device == "memory")
        .find_map(|(_, d)| d.mapping.filename.filter(|f| f.is_file()));
    debug!(?found, "SeaBIOS");
    SeaBios { path: found }
}

impl Ovmf {
    /// Copies the variable-store template to `dest`, a private file the VM
    /// may write (mode 0600: templates in the Nix store are read-only).
    pub fn prepare_vars(&self, dest: &Path) -> Result<(), FirmwareError> {
        use std::os::unix::fs::PermissionsExt;
        let err = |source| FirmwareError::PrepareVars {
            template: self.vars_template.clone(),
            dest: dest.to_path_buf(),
            source,
        };
        std::fs::copy(&self.vars_template, dest).map_err(err)?;
        std::fs::set_permissions(dest, std::fs::Permissions::from_mode(0o600)).map_err(err)?;
        Ok(())
    }
}

#[cfg(test)]
mod tests;
