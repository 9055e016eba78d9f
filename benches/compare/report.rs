//! The pure half of the comparison benchmark: medians, targets and the
//! markdown report, checked by `cargo test --bench compare`.

use std::collections::BTreeMap;

use serde::Serialize;

/// The median of `values` (the mean of the middle two for an even count).
pub fn median(values: &[f64]) -> f64 {
    let mut sorted = values.to_vec();
    sorted.sort_by(f64::total_cmp);
    let n = sorted.len();
    match n {
        0 => f64::NAN,
        _ if n % 2 == 1 => sorted[n / 2],
        _ => (sorted[n / 2 - 1] + sorted[n / 2]) / 2.0,
    }
}

/// One closure's results: every case's runs in seconds, nixdisk's phases
/// (seconds per run), rates and memory.
#[derive(Debug, Clone, Default, Serialize)]
pub struct ClosureResult {
    /// What the closure is (`300 MiB`).
    pub label: String,
    /// Bytes of file content in the closure.
    pub bytes: u64,
    /// Files, directories and symlinks in the closure.
    pub entries: u64,
    /// The disk size every builder was given.
    pub disk_bytes: u64,
    /// Case name -> seconds of each run.
    pub cases: BTreeMap<String, Vec<f64>>,
    /// nixdisk full-image phases in the order they end, with the seconds
    /// of each run.
    pub phases: Vec<(String, Vec<f64>)>,
    /// MiB/s of the guest writing the closure's bytes to its disk, per run.
    pub guest_write_mib_s: Vec<f64>,
    /// MiB/s of nixdisk's closure copy, per run.
    pub copy_mib_s: Vec<f64>,
    /// Peak RSS of nixdisk (KiB), per run.
    pub host_peak_kib: Vec<f64>,
    /// Peak RSS of the builder's QEMU (KiB), per run.
    pub qemu_peak_kib: Vec<f64>,
}

impl ClosureResult {
    /// Adds one run's `seconds` of `phase`.
    pub fn push_phase(&mut self, phase: &str, seconds: f64) {
        match self.phases.iter_mut().find(|(name, _)| name == phase) {
            Some((_, runs)) => runs.push(seconds),
            None => self.phases.push((phase.to_owned(), vec![seconds])),
        }
    }

    fn phase(&self, phase: &str) -> Option<&[f64]> {
        self.phases
            .iter()
            .find(|(name, _)| name == phase)
            .map(|(_, runs)| runs.as_slice())
    }
}

/// The case names, in table order.
pub const FULL: &str = "nixdisk full image (efi, qcow2)";
/// The store-only case.
pub const STORE: &str = "nixdisk store-only image (qcow2)";
/// The floor.
pub const FLOOR: &str = "floor: sfdisk + mke2fs -d + qemu-img convert";
/// systemd-repart.
pub const REPART: &str = "systemd-repart CopyFiles (ext4) + qemu-img convert";
/// libguestfs.
pub const VIRT_MAKE_FS: &str = "virt-make-fs --partition=gpt --type=ext4 (TCG)";
/// The phase nixdisk reports for its closure copy on ext roots.
pub const HOST_COPY_PHASE: &str = "root file system and closure (host mke2fs -d)";
/// The phase of the guest copy (btrfs, xfs roots).
pub const GUEST_COPY_PHASE: &str = "copy the closure";
/// The builder VM's start to hello.
pub const VM_START_PHASE: &str = "builder VM start";

/// A target of the issue, checked on one closure's medians.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Target {
    /// What is required.
    pub what: String,
    /// The measured value.
    pub measured: f64,
    /// Whether it holds.
    pub holds: bool,
}

fn case_median(result: &ClosureResult, case: &str) -> Option<f64> {
    result
        .cases
        .get(case)
        .filter(|v| !v.is_empty())
        .map(|v| median(v))
}

/// The targets on this closure's medians (those whose cases ran).
pub fn targets(result: &ClosureResult) -> Vec<Target> {
    let mut out = Vec::new();
    let full = case_median(result, FULL);
    if let (Some(full), Some(floor)) = (full, case_median(result, FLOOR)) {
        let ratio = full / floor;
        out.push(Target {
            what: "full image / floor <= 4".into(),
            measured: ratio,
            holds: ratio <= 4.0,
        });
    }
    if let (Some(full), Some(peer)) = (full, case_median(result, VIRT_MAKE_FS)) {
        let ratio = peer / full;
        out.push(Target {
            what: "virt-make-fs / full image >= 5".into(),
            measured: ratio,
            holds: ratio >= 5.0,
        });
    }
    if let Some(start) = result.phase(VM_START_PHASE).map(median) {
        out.push(Target {
            what: "builder VM start to hello <= 3 s (SeaBIOS)".into(),
            measured: start,
            holds: start <= 3.0,
        });
    }
    if !result.copy_mib_s.is_empty() && !result.guest_write_mib_s.is_empty() {
        let ratio = median(&result.copy_mib_s) / median(&result.guest_write_mib_s);
        out.push(Target {
            what: "closure copy rate / guest disk write rate >= 0.8".into(),
            measured: ratio,
            holds: ratio >= 0.8,
        });
    }
    out
}

fn mib(bytes: u64) -> f64 {
    bytes as f64 / (1024.0 * 1024.0)
}

/// The markdown section of one closure.
pub fn markdown(result: &ClosureResult) -> String {
    let mut md = format!(
        "### {} closure ({:.0} MiB of file content, {} entries; disk {:.0} MiB)\n\n",
        result.label,
        mib(result.bytes),
        result.entries,
        mib(result.disk_bytes)
    );
    let floor = case_median(result, FLOOR);
    md.push_str("| case | median s | runs | x floor |\n|---|---:|---:|---:|\n");
    for case in [FULL, STORE, FLOOR, REPART, VIRT_MAKE_FS] {
        let Some(runs) = result.cases.get(case).filter(|v| !v.is_empty()) else {
            continue;
        };
        let m = median(runs);
        let ratio = floor.map_or("-".to_owned(), |f| format!("{:.2}", m / f));
        md.push_str(&format!("| {case} | {m:.2} | {} | {ratio} |\n", runs.len()));
    }
    if !result.phases.is_empty() {
        md.push_str(
            "\nnixdisk full image, phases (medians; the root file system is made on the host \
             while the builder VM starts, so those two overlap):\n\n| phase | s |\n|---|---:|\n",
        );
        for (phase, runs) in &result.phases {
            md.push_str(&format!("| {phase} | {:.2} |\n", median(runs)));
        }
    }
    md.push('\n');
    let rate = |v: &[f64]| {
        if v.is_empty() {
            "-".to_owned()
        } else {
            format!("{:.1}", median(v))
        }
    };
    md.push_str(&format!(
        "- closure copy: {} MiB/s; the guest writing the same bytes to its disk: {} MiB/s\n",
        rate(&result.copy_mib_s),
        rate(&result.guest_write_mib_s)
    ));
    md.push_str(&format!(
        "- peak memory: nixdisk {} MiB, builder QEMU {} MiB\n\n",
        rate(
            &result
                .host_peak_kib
                .iter()
                .map(|k| k / 1024.0)
                .collect::<Vec<_>>()
        ),
        rate(
            &result
                .qemu_peak_kib
                .iter()
                .map(|k| k / 1024.0)
                .collect::<Vec<_>>()
        )
    ));
    let targets = targets(result);
    if !targets.is_empty() {
        md.push_str("| target | measured | holds |\n|---|---:|---|\n");
        for t in targets {
            md.push_str(&format!(
                "| {} | {:.2} | {} |\n",
                t.what,
                t.measured,
                if t.holds { "yes" } else { "no" }
            ));
        }
        md.push('\n');
    }
    md
}

/// Checks of the pure parts, run by `cargo test --bench compare` (cargo
/// runs a harness-less bench without `--bench` then).
pub fn self_check() {
    assert_eq!(median(&[3.0, 1.0, 2.0]), 2.0);
    assert_eq!(median(&[4.0, 1.0, 2.0, 3.0]), 2.5);
    assert!(median(&[]).is_nan());
    let mut result = ClosureResult {
        label: "test".into(),
        bytes: 300 << 20,
        entries: 7000,
        disk_bytes: 512 << 20,
        ..ClosureResult::default()
    };
    result.cases.insert(FULL.into(), vec![8.0, 6.0, 7.0]);
    result.cases.insert(FLOOR.into(), vec![2.0, 2.0, 2.0]);
    result.cases.insert(VIRT_MAKE_FS.into(), vec![70.0]);
    result.push_phase(VM_START_PHASE, 4.0);
    result.push_phase("conversion", 1.0);
    result.push_phase(VM_START_PHASE, 5.0);
    assert_eq!(
        result.phases[0],
        (VM_START_PHASE.to_owned(), vec![4.0, 5.0])
    );
    result.copy_mib_s = vec![100.0];
    result.guest_write_mib_s = vec![50.0];
    let t = targets(&result);
    assert_eq!(t.len(), 4);
    assert_eq!((t[0].measured, t[0].holds), (3.5, true));
    assert_eq!((t[1].measured, t[1].holds), (10.0, true));
    assert_eq!((t[2].measured, t[2].holds), (4.5, false));
    assert_eq!((t[3].measured, t[3].holds), (2.0, true));
    let md = markdown(&result);
    assert!(
        md.contains("| nixdisk full image (efi, qcow2) | 7.00 | 3 | 3.50 |"),
        "{md}"
    );
    assert!(
        md.contains("| builder VM start to hello <= 3 s (SeaBIOS) | 4.50 | no |"),
        "{md}"
    );
    println!("compare bench: pure parts check out");
}
