//! QEMU firmware descriptors (`docs/interop/firmware.json`): parsing, the
//! directory search order QEMU itself uses, and ranking for nixdisk's builds.
//!
//! Everything here but [`read_descriptor_dirs`] is pure, so ranking and
//! filtering are unit-tested on fixtures.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use serde::Deserialize;

use crate::{Looked, Machine};

/// One firmware descriptor file, reduced to the fields nixdisk uses.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub struct Descriptor {
    /// Free text, shown in logs.
    #[serde(default)]
    pub description: String,
    /// `uefi`, `bios`, ...
    pub interface_types: Vec<String>,
    /// Where and how the firmware is mapped into the guest.
    pub mapping: Mapping,
    /// Architectures and machine-type patterns it runs on.
    pub targets: Vec<Target>,
    /// `secure-boot`, `requires-smm`, `enrolled-keys`, `acpi-s3`, ...
    #[serde(default)]
    pub features: Vec<String>,
}

/// The `mapping` object of a descriptor.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub struct Mapping {
    /// `flash`, `memory` or `kernel`.
    pub device: String,
    /// For `flash`: `split` (the default), `combined` or `stateless`.
    #[serde(default)]
    pub mode: Option<String>,
    /// For `flash`: the read-only code image.
    #[serde(default)]
    pub executable: Option<FlashFile>,
    /// For `flash` in split mode: the variable-store template.
    #[serde(default)]
    pub nvram_template: Option<FlashFile>,
    /// For `memory`: the firmware image loaded with `-bios`.
    #[serde(default)]
    pub filename: Option<PathBuf>,
}

/// A flash image named by a descriptor.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
pub struct FlashFile {
    /// Absolute path of the image.
    pub filename: PathBuf,
    /// `raw` or `qcow2`.
    #[serde(default = "raw")]
    pub format: String,
}

fn raw() -> String {
    "raw".to_owned()
}

/// One entry of a descriptor's `targets`.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
pub struct Target {
    /// QEMU architecture name, e.g. `x86_64`.
    pub architecture: String,
    /// Glob patterns over versioned machine types, e.g. `pc-q35-*`.
    #[serde(default)]
    pub machines: Vec<String>,
}

impl Descriptor {
    /// Whether the descriptor lists `feature`.
    pub fn has_feature(&self, feature: &str) -> bool {
        self.features.iter().any(|f| f == feature)
    }

    /// Whether it runs on x86_64 with the given machine type.
    pub fn supports(&self, machine: Machine) -> bool {
        self.targets.iter().any(|t| {
            t.architecture == "x86_64" && t.machines.iter().any(|p| machine.matches_pattern(p))
        })
    }
}

/// Descriptor directories in QEMU's order, lowest precedence first: a file in
/// a later directory replaces the file of the same name in an earlier one.
pub fn default_descriptor_dirs() -> Vec<PathBuf> {
    let mut dirs = vec![
        PathBuf::from("/usr/share/qemu/firmware"),
        PathBuf::from("/etc/qemu/firmware"),
    ];
    let config = std::env::var_os("XDG_CONFIG_HOME")
        .map(PathBuf::from)
        .or_else(|| std::env::var_os("HOME").map(|h| Path::new(&h).join(".config")));
    if let Some(config) = config {
        dirs.push(config.join("qemu/firmware"));
    }
    dirs
}

/// Reads every `*.json` of `dirs`, applying QEMU's override rules (same file
/// name in a later dir wins; an empty file masks), and returns the descriptors
/// in priority order (by file name). Unreadable or invalid files are recorded
/// in `looked` and skipped: one broken descriptor must not hide the others.
pub fn read_descriptor_dirs(
    dirs: &[PathBuf],
    looked: &mut Vec<Looked>,
) -> Vec<(PathBuf, Descriptor)> {
    let mut by_name: BTreeMap<String, PathBuf> = BTreeMap::new();
    for dir in dirs {
        let entries = match std::fs::read_dir(dir) {
            Ok(entries) => entries,
            Err(e) => {
                looked.push(Looked::new(
                    dir,
                    format!("descriptor directory not readable: {e}"),
                ));
                continue;
            }
        };
        for entry in entries.flatten() {
            let name = entry.file_name().to_string_lossy().into_owned();
            if name.ends_with(".json") {
                by_name.insert(name, entry.path());
            }
        }
    }
    let mut out = Vec::new();
    for path in by_name.into_values() {
        let text = match std::fs::read_to_string(&path) {
            Ok(text) => text,
            Err(e) => {
                looked.push(Looked::new(&path, format!("not readable: {e}")));
                continue;
            }
        };
        if text.trim().is_empty() {
            looked.push(Looked::new(&path, "empty file: masks this descriptor name"));
            continue;
        }
        match serde_json::from_str::<Descriptor>(&text) {
            Ok(d) => out.push((path, d)),
            Err(e) => looked.push(Looked::new(
                &path,
                format!("not a valid firmware descriptor: {e}"),
            )),
        }
    }
    out
}

/// Glob match with `*` (any run) and `?` (one char), as QEMU's descriptors use.
pub(crate) fn glob_match(pattern: &str, text: &str) -> bool {
    let (p, t): (Vec<char>, Vec<char>) = (pattern.chars().collect(), text.chars().collect());
    let (mut pi, mut ti, mut star, mut mark) = (0, 0, None, 0);
    while ti < t.len() {
        if pi < p.len() && (p[pi] == '?' || p[pi] == t[ti]) {
            pi += 1;
            ti += 1;
        } else if pi < p.len() && p[pi] == '*' {
            star = Some(pi);
            mark = ti;
            pi += 1;
        } else if let Some(s) = star {
            pi = s + 1;
            mark += 1;
            ti = mark;
        } else {
            return false;
        }
    }
    p[pi..].iter().all(|&c| c == '*')
}
