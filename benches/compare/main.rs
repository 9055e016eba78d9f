//! Benchmark (not a test): nixdisk against the floor and its peers on
//! synthetic closures built with real Nix, all in one run, medians of
//! several runs; writes BENCHMARKS.md and BENCHMARKS.json at the repo root.
//!
//! `scripts/bench` installs the peers and runs `cargo bench --bench compare`.
//! Environment: `NIXDISK_BENCH_RUNS` (runs per case, default 3),
//! `NIXDISK_BENCH_PEER_RUNS` (runs of virt-make-fs, default the same),
//! `NIXDISK_BENCH_BIG=1` adds the ~1.5 GiB closure (minutes more).
//! `cargo test --bench compare` checks the pure parts only.

mod payload;
mod peers;
mod report;

use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, Instant};

use nixdisk::builder_vm::{AccelChoice, BuilderVm, BuilderVmConfig};
use nixdisk::qemu::{Disk, DiskFormat};
use report::ClosureResult;

fn env_number(name: &str, default: usize) -> usize {
    std::env::var(name)
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(default)
}

fn repo() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
}

/// Runs `command`, panicking with its stderr if it fails; returns seconds.
pub fn timed(command: &mut Command) -> f64 {
    let started = Instant::now();
    let out = command
        .output()
        .unwrap_or_else(|e| panic!("{command:?}: {e}"));
    assert!(
        out.status.success(),
        "{command:?} failed:\n{}",
        String::from_utf8_lossy(&out.stderr)
    );
    started.elapsed().as_secs_f64()
}

/// One nixdisk build; returns seconds, the timings report and the image's
/// virtual size.
fn nixdisk_build(work: &Path, args: &[&str], tag: &str) -> (f64, serde_json::Value, u64) {
    let out = work.join(format!("out-{tag}"));
    let _ = std::fs::remove_dir_all(&out);
    let timings = work.join(format!("timings-{tag}.json"));
    let seconds = timed(
        Command::new(env!("CARGO_BIN_EXE_nixdisk"))
            .args([
                "build",
                "-q",
                "--format",
                "qcow2",
                "--additional-space",
                "64M",
            ])
            .args(args)
            .arg("--out")
            .arg(&out)
            .arg("--timings")
            .arg(&timings),
    );
    let report: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(&timings).expect("timings written"))
            .expect("timings are JSON");
    let image = std::fs::read_dir(&out)
        .expect("output")
        .flatten()
        .map(|e| e.path())
        .find(|p| p.extension().is_some_and(|e| e == "qcow2"))
        .expect("a qcow2 image");
    let size = peers::virtual_size(&image);
    std::fs::remove_dir_all(&out).expect("remove the output");
    (seconds, report, size)
}

/// MiB/s at which the builder VM writes the closure's file bytes to its
/// disk: `blob` (every file of the closure, concatenated on the host) read
/// from the host share in one stream, written to the raw disk, synced.
/// One stream, because reading the closure file by file over 9p runs at a
/// few MiB/s here and would measure 9p, not the disk.
async fn guest_write_rate(blob: &Path, bytes: u64, disk: &Path) -> f64 {
    let config = BuilderVmConfig {
        accel: AccelChoice::Tcg,
        root_fs: Some(nixdisk::spec::FsType::Ext4),
        disks: vec![Disk {
            path: disk.to_owned(),
            format: DiskFormat::Raw,
        }],
        ..BuilderVmConfig::default()
    };
    let mut vm = BuilderVm::start(&config).await.expect("builder VM starts");
    let script = format!("cat {} > /dev/vda; sync", blob.display());
    let started = Instant::now();
    let code = vm
        .agent()
        .run(&["/bin/sh", "-eu", "-c", &script], |_, _| {})
        .await
        .expect("the write runs");
    let seconds = started.elapsed().as_secs_f64();
    assert_eq!(code, 0, "the guest write failed");
    let _ = vm.shutdown(Duration::from_secs(30)).await;
    bytes as f64 / (1024.0 * 1024.0) / seconds
}

fn phase_seconds(report: &serde_json::Value) -> Vec<(String, f64, Option<f64>)> {
    report["phases"]
        .as_array()
        .map(|phases| {
            phases
                .iter()
                .map(|p| {
                    (
                        p["name"].as_str().unwrap_or("?").to_owned(),
                        p["seconds"].as_f64().unwrap_or(f64::NAN),
                        p["mib_per_second"].as_f64(),
                    )
                })
                .collect()
        })
        .unwrap_or_default()
}

fn bench_closure(
    shape: payload::Shape,
    runs: usize,
    peer_runs: usize,
    work: &Path,
) -> ClosureResult {
    println!(
        "== closure {}: generating and adding to the store",
        shape.name
    );
    let source = work.join("payload-source");
    let _ = std::fs::remove_dir_all(&source);
    std::fs::create_dir_all(&source).expect("work dir");
    let payload = payload::add_to_store(shape, &source);
    let (toplevel, info) = payload::system_with(&repo(), shape, &payload);
    let paths = payload::closure_paths(&info);
    let (bytes, entries) = payload::measure(&paths);
    println!(
        "   {} paths, {:.0} MiB, {entries} entries",
        paths.len(),
        bytes as f64 / 1048576.0
    );
    let tree = work.join("tree");
    peers::stage_tree(&paths, &tree);
    let blob = work.join("closure.bytes");
    peers::concatenate(&paths, &blob);
    let top = toplevel.display().to_string();
    let full_args = ["--system", top.as_str(), "--partition-table", "efi"];
    let store_args = ["--system", top.as_str(), "--only-nix-store"];
    // A first build warms the caches (initramfs, vmlinux) and gives the size.
    let (_, _, disk_bytes) = nixdisk_build(work, &full_args, "warmup");
    let mut result = ClosureResult {
        label: shape.name.to_owned(),
        bytes,
        entries,
        disk_bytes,
        ..ClosureResult::default()
    };
    let runtime = tokio::runtime::Runtime::new().expect("a tokio runtime");
    for run in 0..runs {
        println!("-- run {}/{runs}", run + 1);
        let (s, timings, _) = nixdisk_build(work, &full_args, "full");
        result.cases.entry(report::FULL.into()).or_default().push(s);
        for (name, seconds, rate) in phase_seconds(&timings) {
            if name == report::HOST_COPY_PHASE || name == report::GUEST_COPY_PHASE {
                result.copy_mib_s.extend(rate);
            }
            result.push_phase(&name, seconds);
        }
        result
            .host_peak_kib
            .extend(timings["peak_rss_kib"].as_f64());
        result
            .qemu_peak_kib
            .extend(timings["qemu_peak_rss_kib"].as_f64());
        println!("   full {s:.2} s");
        let (s, _, _) = nixdisk_build(work, &store_args, "store");
        result
            .cases
            .entry(report::STORE.into())
            .or_default()
            .push(s);
        let s = peers::floor(&tree, disk_bytes, work);
        result
            .cases
            .entry(report::FLOOR.into())
            .or_default()
            .push(s);
        println!("   floor {s:.2} s");
        match peers::repart(&tree, disk_bytes, work) {
            Some(s) => result
                .cases
                .entry(report::REPART.into())
                .or_default()
                .push(s),
            None => println!("   systemd-repart: not installed, skipped"),
        }
        let disk = work.join("guest-write.raw");
        std::fs::File::create(&disk)
            .and_then(|f| f.set_len(disk_bytes))
            .expect("blank disk");
        let rate = runtime.block_on(guest_write_rate(&blob, bytes, &disk));
        std::fs::remove_file(&disk).expect("remove the blank disk");
        println!("   guest write {rate:.1} MiB/s");
        result.guest_write_mib_s.push(rate);
        if run < peer_runs {
            match peers::virt_make_fs(&tree, disk_bytes, work) {
                Some(s) => {
                    println!("   virt-make-fs {s:.2} s");
                    result
                        .cases
                        .entry(report::VIRT_MAKE_FS.into())
                        .or_default()
                        .push(s)
                }
                None => println!("   virt-make-fs: not installed, skipped"),
            }
        }
    }
    peers::remove_tree(&tree);
    let _ = std::fs::remove_file(&blob);
    result
}

fn main() {
    if !std::env::args().any(|a| a == "--bench") {
        report::self_check();
        return;
    }
    let runs = env_number("NIXDISK_BENCH_RUNS", 3);
    let peer_runs = env_number("NIXDISK_BENCH_PEER_RUNS", runs);
    let big = std::env::var("NIXDISK_BENCH_BIG").is_ok_and(|v| v == "1");
    let work = repo().join("target/bench-compare");
    std::fs::create_dir_all(&work).expect("work dir");
    let mut shapes = vec![payload::SMALL];
    if big {
        shapes.push(payload::BIG);
    }
    let results: Vec<ClosureResult> = shapes
        .into_iter()
        .map(|shape| bench_closure(shape, runs, peer_runs, &work))
        .collect();
    let machine = peers::machine();
    let mut md = format!(
        "# nixdisk benchmarks\n\nWritten by `scripts/bench` (`cargo bench --bench compare`): every figure \
         is a median of the runs shown, all cases in one run on one machine, so ratios compare like \
         with like. Under TCG (no KVM), builder VMs on SeaBIOS.\n\n{machine}\n"
    );
    if !big {
        md.push_str("The ~1.5 GiB closure was not run (`NIXDISK_BENCH_BIG=1` adds it).\n\n");
    }
    for result in &results {
        md.push_str(&report::markdown(result));
    }
    std::fs::write(repo().join("BENCHMARKS.md"), &md).expect("write BENCHMARKS.md");
    let json = serde_json::json!({ "machine": machine, "results": results });
    std::fs::write(
        repo().join("BENCHMARKS.json"),
        serde_json::to_string_pretty(&json).expect("json") + "\n",
    )
    .expect("write BENCHMARKS.json");
    println!("{md}");
}
