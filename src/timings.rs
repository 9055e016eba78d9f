//! Where a build's time went: named phases with their durations (and bytes,
//! where a phase moves data), and peak memory, written as JSON by
//! `nixdisk build --timings FILE` so that benchmarks read them instead of
//! guessing from logs.
//!
//! The build records into one process-wide recorder, as it records into
//! tracing: phases are few and coarse, and threading a recorder through
//! every layer would add a parameter to each for no gain.

use std::path::Path;
use std::sync::Mutex;
use std::time::{Duration, Instant};

use serde::Serialize;

/// One phase of a build.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Phase {
    /// What the phase did (`builder VM start`, `copy the closure`, ...).
    pub name: String,
    /// How long it took.
    pub seconds: f64,
    /// Bytes the phase wrote or copied, where that is its measure.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub bytes: Option<u64>,
    /// `bytes` per second in MiB, where `bytes` is given.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub mib_per_second: Option<f64>,
}

/// A build's timings report.
#[derive(Debug, Clone, Default, PartialEq, Serialize)]
pub struct Report {
    /// Phases in the order they ended.
    pub phases: Vec<Phase>,
    /// Peak resident memory of nixdisk itself, in KiB (`VmHWM`).
    pub peak_rss_kib: Option<u64>,
    /// Peak resident memory of the builder VM's QEMU, in KiB, read just
    /// before it powered off.
    pub qemu_peak_rss_kib: Option<u64>,
    /// The whole build, in seconds.
    pub total_seconds: f64,
}

static RECORDER: Mutex<Option<Report>> = Mutex::new(None);

/// Records `name` took `elapsed`, having moved `bytes`.
pub fn record(name: &str, elapsed: Duration, bytes: Option<u64>) {
    let seconds = elapsed.as_secs_f64();
    let phase = Phase {
        name: name.to_owned(),
        seconds,
        bytes,
        mib_per_second: bytes
            .filter(|_| seconds > 0.0)
            .map(|b| b as f64 / (1024.0 * 1024.0) / seconds),
    };
    tracing::debug!(phase = name, seconds, bytes, "phase done");
    let mut recorder = RECORDER.lock().unwrap_or_else(|e| e.into_inner());
    recorder
        .get_or_insert_with(Report::default)
        .phases
        .push(phase);
}

/// Runs `work` as the phase `name`, recording its time whether it succeeds or not.
pub fn phase<T>(name: &str, work: impl FnOnce() -> T) -> T {
    let started = Instant::now();
    let result = work();
    record(name, started.elapsed(), None);
    result
}

/// Records the peak memory of the builder's QEMU (process `pid`).
pub fn record_qemu_peak(pid: u32) {
    let peak = peak_rss_kib(&Path::new("/proc").join(pid.to_string()).join("status"));
    let mut recorder = RECORDER.lock().unwrap_or_else(|e| e.into_inner());
    recorder
        .get_or_insert_with(Report::default)
        .qemu_peak_rss_kib = peak;
}

/// Takes what was recorded, with this process's peak memory and `total`.
pub fn take(total: Duration) -> Report {
    let mut recorder = RECORDER.lock().unwrap_or_else(|e| e.into_inner());
    let mut report = recorder.take().unwrap_or_default();
    report.peak_rss_kib = peak_rss_kib(Path::new("/proc/self/status"));
    report.total_seconds = total.as_secs_f64();
    report
}

/// `VmHWM` of a `/proc/<pid>/status` file, in KiB.
fn peak_rss_kib(status: &Path) -> Option<u64> {
    parse_vm_hwm(&std::fs::read_to_string(status).ok()?)
}

/// The `VmHWM:` value of a `/proc/<pid>/status` text, in KiB.
pub fn parse_vm_hwm(status: &str) -> Option<u64> {
    status
        .lines()
        .find_map(|line| line.strip_prefix("VmHWM:"))
        .and_then(|rest| rest.split_whitespace().next())
        .and_then(|kib| kib.parse().ok())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn vm_hwm_is_read_in_kib() {
        let status = "Name:\tqemu\nVmPeak:\t 900 kB\nVmHWM:\t  123456 kB\nVmRSS:\t 1 kB\n";
        assert_eq!(parse_vm_hwm(status), Some(123456));
        assert_eq!(parse_vm_hwm("Name:\tx\n"), None);
    }

    #[test]
    fn phases_with_bytes_carry_a_rate() {
        record("copy", Duration::from_secs(2), Some(4 * 1024 * 1024));
        let report = take(Duration::from_secs(3));
        let copy = report
            .phases
            .iter()
            .find(|p| p.name == "copy")
            .expect("recorded");
        assert_eq!(copy.mib_per_second, Some(2.0));
        assert_eq!(report.total_seconds, 3.0);
        assert!(report.peak_rss_kib.is_some_and(|kib| kib > 0));
        let json = serde_json::to_value(&report).expect("serializes");
        assert_eq!(json["total_seconds"], 3.0);
        assert!(json["phases"].as_array().is_some_and(|p| !p.is_empty()));
    }
}
