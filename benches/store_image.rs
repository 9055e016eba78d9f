//! Benchmark: the nixdisk ext4 store image against its floor, plain
//! `mke2fs -d` of the same tree, run in the same go.
//!
//! A closure of generated store paths (about 300 MiB in 7.7k entries by
//! default, like the peers measured in DESIGN.md) is added to the Nix store;
//! the floor is `mke2fs -d` of an already staged tree (what nixpkgs'
//! make-ext4-fs runs after copying), nixdisk's time includes its staging,
//! mke2fs and the deterministic fix-ups. Runs alternate, after a warm-up of
//! each, and the medians are compared (target: at most 1.2x).
//!
//! `cargo bench --bench store_image`; knobs: NIXDISK_BENCH_REPS (5),
//! NIXDISK_BENCH_MIB (300), NIXDISK_BENCH_ENTRIES (7700), NIXDISK_BENCH_PATHS (24),
//! NIXDISK_BENCH_STAGING (`hardlinks` to force hard-link staging; default: auto).

#[path = "../tests/store_image/store_tree.rs"]
mod store_tree;

use std::fs;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, Instant};

use nixdisk::spec::FsType;
use nixdisk::store_image::{Region, StagingMode, StoreImageOptions, build_store_fs, stage_closure};

const MIB: u64 = 1024 * 1024;

/// Linux reports /proc times in USER_HZ ticks, 100 per second on every
/// architecture nixdisk runs on.
const USER_HZ: f64 = 100.0;

fn knob(name: &str, default: u64) -> u64 {
    std::env::var(name)
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(default)
}

/// CPU time used so far by this process (all threads) and its waited-for
/// children, from /proc/self/stat: on a machine shared with other work, wall
/// time mostly measures the neighbours.
fn cpu_time() -> Duration {
    let stat = fs::read_to_string("/proc/self/stat").expect("read /proc/self/stat");
    let after_name = &stat[stat.rfind(')').expect("stat format") + 2..];
    let fields: Vec<u64> = after_name
        .split(' ')
        .map(|f| f.parse().unwrap_or(0))
        .collect();
    // utime, stime, cutime, cstime: fields 14-17 of the file, 12-15 here.
    let ticks: u64 = fields[11..15].iter().sum();
    Duration::from_secs_f64(ticks as f64 / USER_HZ)
}

fn median(times: &mut [Duration]) -> Duration {
    times.sort();
    times[times.len() / 2]
}

fn main() {
    let reps = knob("NIXDISK_BENCH_REPS", 5).max(1);
    let mib = knob("NIXDISK_BENCH_MIB", 300);
    let entries = knob("NIXDISK_BENCH_ENTRIES", 7700);
    let path_count = knob("NIXDISK_BENCH_PATHS", 24).max(1);

    // The closure: path_count store paths sharing the entries and bytes.
    let source = tempfile::tempdir().expect("tempdir");
    let per_path_files = (entries * 9 / 10 / path_count) as usize;
    let per_path_dirs = ((entries / 10 / path_count) as usize).max(1);
    let paths: Vec<PathBuf> = (0..path_count)
        .map(|i| {
            let tree = source
                .path()
                .join(format!("nixdisk-bench-{mib}m-{entries}e-{i}"));
            store_tree::write_bulk_tree(
                &tree,
                i,
                per_path_dirs,
                per_path_files,
                mib * MIB / path_count,
            );
            store_tree::add_to_store(&tree)
        })
        .collect();
    drop(source);
    let bytes = store_tree::tree_bytes(&paths);
    let snapshot = store_tree::closure_snapshot(&paths);
    println!(
        "closure: {} store paths, {} entries, {:.1} MiB",
        paths.len(),
        snapshot.entries.len(),
        bytes as f64 / MIB as f64
    );

    let work = tempfile::tempdir_in(std::env::temp_dir()).expect("work dir");
    let region = Region::whole((bytes * 3 / 2 / MIB + 64) * MIB);
    let floor_tree = stage_closure(
        &paths,
        None,
        &work.path().join("floor-tree"),
        Some(1),
        StagingMode::HardLinks,
    )
    .expect("stage the floor tree");
    let options = StoreImageOptions {
        fs_type: FsType::Ext4,
        label: "nix-store".to_owned(),
        uuid: Some(
            "f222513b-ded1-49fa-b591-20ce86a2fe7f"
                .parse()
                .expect("uuid"),
        ),
        deterministic: true,
        registration: None,
        staging: match std::env::var("NIXDISK_BENCH_STAGING").as_deref() {
            Ok("hardlinks") => StagingMode::HardLinks,
            _ => StagingMode::Auto,
        },
        mkfs_options: Vec::new(),
        image_root: None,
    };

    let floor_image = work.path().join("floor.img");
    let floor = |image: &Path| {
        let status = Command::new("mke2fs")
            .args(["-q", "-F", "-t", "ext4", "-b", "4096", "-d"])
            .arg(floor_tree.root())
            .arg(image)
            .arg(format!("{}k", region.size / 1024))
            .status()
            .expect("run mke2fs");
        assert!(status.success(), "mke2fs failed");
    };
    let ours_image = work.path().join("ours.img");
    let ours = |image: &Path| {
        build_store_fs(&paths, &options, image, region).expect("nixdisk store image");
    };

    let mut floor_times = Vec::new();
    let mut ours_times = Vec::new();
    let mut floor_cpu = Vec::new();
    let mut ours_cpu = Vec::new();
    // Warm-up (page cache, first allocations), not counted.
    for (run, image) in [
        (&floor as &dyn Fn(&Path), &floor_image),
        (&ours, &ours_image),
    ] {
        let _ = fs::remove_file(image);
        run(image);
    }
    for _ in 0..reps {
        for (run, image, times, cpu) in [
            (
                &floor as &dyn Fn(&Path),
                &floor_image,
                &mut floor_times,
                &mut floor_cpu,
            ),
            (&ours, &ours_image, &mut ours_times, &mut ours_cpu),
        ] {
            let _ = fs::remove_file(image);
            let (start, start_cpu) = (Instant::now(), cpu_time());
            run(image);
            times.push(start.elapsed());
            cpu.push(cpu_time() - start_cpu);
        }
    }
    let floor_median = median(&mut floor_times);
    let ours_median = median(&mut ours_times);
    println!("mke2fs -d (floor):    median {floor_median:?} over {reps} runs: {floor_times:?}");
    println!("nixdisk store image:  median {ours_median:?} over {reps} runs: {ours_times:?}");
    println!(
        "wall-time ratio: {:.3} (target: at most 1.2)",
        ours_median.as_secs_f64() / floor_median.as_secs_f64()
    );
    let (floor_cpu_median, ours_cpu_median) = (median(&mut floor_cpu), median(&mut ours_cpu));
    println!(
        "CPU time (user+sys, with children): floor {floor_cpu_median:?}, nixdisk {ours_cpu_median:?}, ratio {:.3}",
        ours_cpu_median.as_secs_f64() / floor_cpu_median.as_secs_f64()
    );
}
