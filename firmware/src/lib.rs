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

use std::fmt;
use std::path::{Path, PathBuf};

use tracing::{debug, info};

pub use descriptor::{Descriptor, default_descriptor_dirs, read_descriptor_dirs};
pub use known::{OvmfPair, distro_ovmf_pairs, nix_ovmf_pairs};

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

/// A candidate OVMF build with what is known about it.
struct Candidate {
    ovmf: Ovmf,
    enrolled_keys: bool,
}

impl Candidate {
    /// Lower is better; the sort is stable, so ties keep search order.
    fn rank(&self, want: Want) -> (bool, bool, bool) {
        (
            self.ovmf.secure_boot != want.secure_boot,
            self.ovmf.needs_smm && !want.secure_boot,
            self.enrolled_keys,
        )
    }
}

/// Finds OVMF: overrides, then `search` in order, preferring the build that
/// fits `want` (see the module documentation).
pub fn find_ovmf(
    search: &Search,
    overrides: &Overrides,
    want: Want,
) -> Result<Ovmf, FirmwareError> {
    for (what, path) in [
        ("efiFirmware", &overrides.code),
        ("efiVariables", &overrides.vars),
    ] {
        if let Some(path) = path
            && !path.is_file()
        {
            return Err(FirmwareError::OverrideMissing {
                what,
                path: path.clone(),
            });
        }
    }
    let mut looked = Vec::new();
    let candidates = candidates(search, want, &mut looked);
    let explicit_code = overrides.code.as_ref().map(|code| {
        // A descriptor naming this very file tells whether it needs SMM.
        candidates.iter().find(|c| &c.ovmf.code == code)
    });
    let best = candidates.first();
    let ovmf = match (&overrides.code, &overrides.vars) {
        (Some(code), Some(vars)) => {
            let known = explicit_code.flatten().map(|c| &c.ovmf);
            Ovmf {
                code: code.clone(),
                code_format: "raw".to_owned(),
                vars_template: vars.clone(),
                vars_format: "raw".to_owned(),
                needs_smm: known.is_some_and(|k| k.needs_smm),
                secure_boot: known.is_some_and(|k| k.secure_boot),
                origin: "efiFirmware/efiVariables".to_owned(),
            }
        }
        (Some(code), None) => {
            let base = explicit_code
                .flatten()
                .or(best)
                .ok_or_else(|| not_found(want, &looked))?;
            Ovmf {
                code: code.clone(),
                origin: format!("efiFirmware, variables from {}", base.ovmf.origin),
                ..base.ovmf.clone()
            }
        }
        (None, Some(vars)) => {
            let base = best.ok_or_else(|| not_found(want, &looked))?;
            Ovmf {
                vars_template: vars.clone(),
                origin: format!("efiVariables, code from {}", base.ovmf.origin),
                ..base.ovmf.clone()
            }
        }
        (None, None) => best.ok_or_else(|| not_found(want, &looked))?.ovmf.clone(),
    };
    info!(code = %ovmf.code.display(), vars = %ovmf.vars_template.display(), needs_smm = ovmf.needs_smm, origin = %ovmf.origin, "OVMF");
    Ok(ovmf)
}

fn not_found(want: Want, looked: &[Looked]) -> FirmwareError {
    FirmwareError::OvmfNotFound {
        machine: want.machine,
        looked: looked.to_vec(),
    }
}

/// All existing OVMF builds fitting `want.machine`, best first.
fn candidates(search: &Search, want: Want, looked: &mut Vec<Looked>) -> Vec<Candidate> {
    let mut out: Vec<Candidate> = Vec::new();
    let plain = |pair: &OvmfPair, origin: String| Candidate {
        ovmf: Ovmf {
            code: pair.code.clone(),
            code_format: "raw".to_owned(),
            vars_template: pair.vars.clone(),
            vars_format: "raw".to_owned(),
            needs_smm: false,
            secure_boot: false,
            origin,
        },
        enrolled_keys: false,
    };
    if let Some(store) = &search.nix_ovmf {
        for pair in nix_ovmf_pairs(store) {
            if pair_exists(&pair, looked) {
                out.push(plain(&pair, format!("Nix OVMF output {}", store.display())));
                break;
            }
        }
    }
    for (path, d) in read_descriptor_dirs(&search.descriptor_dirs, looked) {
        if let Some(c) = descriptor_candidate(&path, &d, want.machine, looked) {
            out.push(c);
        }
    }
    for pair in &search.distro_ovmf {
        if out.iter().any(|c| c.ovmf.code == pair.code) {
            continue;
        }
        if pair_exists(pair, looked) {
            out.push(plain(pair, "known distribution path".to_owned()));
        }
    }
    out.sort_by_key(|c| c.rank(want));
    out
}

fn pair_exists(pair: &OvmfPair, looked: &mut Vec<Looked>) -> bool {
    for file in [&pair.code, &pair.vars] {
        if !file.is_file() {
            looked.push(Looked::new(file, "no such file"));
            return false;
        }
    }
    true
}

fn descriptor_candidate(
    path: &Path,
    d: &Descriptor,
    machine: Machine,
    looked: &mut Vec<Looked>,
) -> Option<Candidate> {
    let skip = |looked: &mut Vec<Looked>, why: String| {
        looked.push(Looked::new(path, why));
        None
    };
    if !d.interface_types.iter().any(|t| t == "uefi") {
        return skip(
            looked,
            format!("interface {:?}, not uefi", d.interface_types),
        );
    }
    if !d.supports(machine) {
        return skip(
            looked,
            format!("does not support x86_64 machine `{machine}`"),
        );
    }
    let m = &d.mapping;
    if m.device != "flash" || m.mode.as_deref().is_some_and(|mode| mode != "split") {
        return skip(
            looked,
            format!(
                "mapping `{}` {:?}: only split flash is supported",
                m.device, m.mode
            ),
        );
    }
    let (Some(code), Some(vars)) = (&m.executable, &m.nvram_template) else {
        return skip(
            looked,
            "flash mapping without executable and nvram-template".to_owned(),
        );
    };
    if !pair_exists(
        &OvmfPair {
            code: code.filename.clone(),
            vars: vars.filename.clone(),
        },
        looked,
    ) {
        return None;
    }
    Some(Candidate {
        ovmf: Ovmf {
            code: code.filename.clone(),
            code_format: code.format.clone(),
            vars_template: vars.filename.clone(),
            vars_format: vars.format.clone(),
            needs_smm: d.has_feature("requires-smm"),
            secure_boot: d.has_feature("secure-boot"),
            origin: format!("descriptor {}", path.display()),
        },
        enrolled_keys: d.has_feature("enrolled-keys"),
    })
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
