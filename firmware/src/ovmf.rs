//! Choosing an OVMF build: overrides first, then every candidate the search
//! finds (Nix output, descriptors, distribution paths), ranked for what the
//! build wants.

use std::path::Path;

use tracing::info;

use crate::{
    Descriptor, FirmwareError, Looked, Machine, Overrides, Ovmf, OvmfPair, Search, Want,
    nix_ovmf_pairs, read_descriptor_dirs,
};

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
