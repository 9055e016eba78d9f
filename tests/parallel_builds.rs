//! Three `nixdisk build` runs of the example system at once on one host, as
//! on a build farm, starting from an empty shared cache: each gets its own
//! run directory, sockets and temporary output, the cache (vmlinux,
//! initramfs) is filled by all three at once without a torn entry, the three
//! (deterministic) images are byte-identical, and each passes `e2fsck -fn`
//! and `nix store verify` with exactly the closure installed.

#[allow(dead_code)]
#[path = "full_image/build.rs"]
mod build;
#[allow(dead_code)]
#[path = "full_image/inspect.rs"]
mod inspect;
#[allow(dead_code)]
#[path = "full_image/vms.rs"]
mod vms;

use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::time::Instant;

use build::{closure_of, example_system, require_agent};
use inspect::{Loop, fsck_all, mount_root, verify_store};

/// The children, killed by pid if the test fails half-way.
struct Children(Vec<Child>);

impl Drop for Children {
    fn drop(&mut self) {
        for child in &mut self.0 {
            if child.try_wait().ok().flatten().is_none() {
                let _ = child.kill();
                let _ = child.wait();
            }
        }
    }
}

#[test]
fn three_builds_at_once_do_not_collide() {
    require_agent();
    let toplevel = example_system(&[]);
    let closure = closure_of(&toplevel);
    let work = tempfile::Builder::new()
        .prefix("nixdisk-parallel-")
        .tempdir()
        .expect("a temporary directory");
    let cache = work.path().join("cache");
    let tmp = work.path().join("tmp");
    std::fs::create_dir(&tmp).expect("tmp");
    let outs: Vec<PathBuf> = (0..3)
        .map(|i| work.path().join(format!("out{i}")))
        .collect();
    let started = Instant::now();
    let mut children = Children(Vec::new());
    for out in &outs {
        let child = Command::new(env!("CARGO_BIN_EXE_nixdisk"))
            .args(["build", "-v", "--system"])
            .arg(&toplevel)
            .args(["--partition-table", "none", "--no-bootloader"])
            .args(["--additional-space", "32M", "--mem-size", "512"])
            .arg("--out")
            .arg(out)
            // One empty cache for all three: they fill it at the same time.
            .env("XDG_CACHE_HOME", &cache)
            .env("TMPDIR", &tmp)
            .env("NIXDISK_ACCEL", "tcg")
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::piped())
            .spawn()
            .expect("nixdisk starts");
        children.0.push(child);
    }
    let mut logs = Vec::new();
    for child in std::mem::take(&mut children.0) {
        let output = child.wait_with_output().expect("nixdisk ends");
        let log = String::from_utf8_lossy(&output.stderr).into_owned();
        assert!(output.status.success(), "a build failed:\n{log}");
        logs.push(log);
    }
    eprintln!(
        "three builds at once: {:.1} s",
        started.elapsed().as_secs_f64()
    );
    // Each had its own builder: distinct run directories and QEMU pids.
    let field = |log: &str, key: &str| -> String {
        let at = log
            .find(key)
            .unwrap_or_else(|| panic!("no {key} in:\n{log}"));
        log[at + key.len()..]
            .split_whitespace()
            .next()
            .expect("a value")
            .to_owned()
    };
    let mut run_dirs: Vec<String> = logs.iter().map(|l| field(l, "run_dir=")).collect();
    let mut pids: Vec<String> = logs.iter().map(|l| field(l, "qemu_pid=")).collect();
    run_dirs.sort();
    run_dirs.dedup();
    pids.sort();
    pids.dedup();
    assert_eq!(
        (run_dirs.len(), pids.len()),
        (3, 3),
        "{run_dirs:?} {pids:?}"
    );
    // Nothing of the runs is left in their TMPDIR, and the cache holds
    // whole entries only (no temporary file of a writer left over).
    assert_eq!(
        std::fs::read_dir(&tmp).expect("tmp").count(),
        0,
        "run directories are removed"
    );
    let entries: Vec<String> = std::fs::read_dir(cache.join("nixdisk"))
        .expect("the cache was filled")
        .map(|e| {
            e.expect("an entry")
                .file_name()
                .to_string_lossy()
                .into_owned()
        })
        .collect();
    assert!(
        entries
            .iter()
            .all(|e| e.starts_with("vmlinux-") || e.starts_with("initramfs-")),
        "only finished cache entries: {entries:?}"
    );
    // The builds are deterministic (the default): had they crossed wires
    // (a shared socket, disk or staging tree), the images would differ.
    let sums: Vec<String> = outs
        .iter()
        .map(|out| {
            let sum = build::run(Command::new("sha256sum").arg(out.join("nixos.img")));
            sum.split_whitespace().next().expect("a sum").to_owned()
        })
        .collect();
    assert!(
        sums.iter().all(|s| *s == sums[0]),
        "three identical images: {sums:?}"
    );
    for out in &outs {
        let image = out.join("nixos.img");
        let systems = fsck_all(&image, &[]);
        assert_eq!(systems.len(), 1, "{}: one file system", image.display());
        assert_eq!(systems[0].1, "ext4");
        let device = Loop::attach(&image, None);
        let mounts = tempfile::tempdir().expect("a temporary directory");
        let (merged, lower) = mount_root(&device.device, mounts.path());
        verify_store(&merged.point, &closure);
        drop(merged);
        drop(lower);
    }
}
