//! Independent checks of a raw image with the host's own tools: the
//! partition table (`sgdisk -v`, `sfdisk --verify`), every file system
//! (`e2fsck -fn`, `fsck.vfat -n`), and the installed Nix store (`nix store
//! verify`, `nix path-info`) on the root mounted read-only through a
//! read-only loop device with a throw-away overlay on top (Nix wants to
//! write its lock files; the image stays untouched). Every loop device and
//! mount is undone on drop.

use std::path::{Path, PathBuf};
use std::process::Command;

use super::build::run;

/// A read-only loop device over an image or one partition of it (this
/// host's /dev gets no partition nodes for `losetup -P`); detached on drop.
pub struct Loop {
    /// The device, e.g. /dev/loop3.
    pub device: PathBuf,
}

impl Loop {
    /// Attaches `image` read-only: all of it, or `partition`'s bytes.
    pub fn attach(image: &Path, partition: Option<&Partition>) -> Loop {
        let mut cmd = Command::new("losetup");
        cmd.args(["-r", "--show", "-f"]);
        if let Some(p) = partition {
            cmd.arg("-o")
                .arg(p.offset.to_string())
                .arg("--sizelimit")
                .arg(p.size.to_string());
        }
        let device = run(cmd.arg(image));
        Loop {
            device: PathBuf::from(device.trim()),
        }
    }
}

impl Drop for Loop {
    fn drop(&mut self) {
        let _ = Command::new("losetup").arg("-d").arg(&self.device).status();
    }
}

/// One partition of an image's table.
#[derive(Debug, Clone)]
pub struct Partition {
    /// Where it starts, in bytes.
    pub offset: u64,
    /// Its size in bytes.
    pub size: u64,
}

/// A mount, unmounted (lazily, as a last resort) on drop.
pub struct Mount {
    /// The mount point.
    pub point: PathBuf,
}

impl Drop for Mount {
    fn drop(&mut self) {
        let ok = Command::new("umount")
            .arg(&self.point)
            .status()
            .is_ok_and(|s| s.success());
        if !ok {
            let _ = Command::new("umount").arg("-l").arg(&self.point).status();
        }
    }
}

/// The partition table's kind as `sfdisk --json` reports it (`gpt`, `dos`),
/// or `None` for a bare file system.
pub fn table_kind(image: &Path) -> Option<String> {
    let out = Command::new("sfdisk")
        .arg("--json")
        .arg(image)
        .output()
        .expect("sfdisk runs (install fdisk)");
    if !out.status.success() {
        return None;
    }
    let json: serde_json::Value =
        serde_json::from_slice(&out.stdout).expect("sfdisk --json prints JSON");
    json["partitiontable"]["label"].as_str().map(str::to_owned)
}

/// Checks the partition table: `sgdisk -v` finds no problem on GPT, and
/// `sfdisk --verify` accepts MBR (and a hybrid's MBR half).
pub fn verify_table(image: &Path, kind: &str) {
    match kind {
        "gpt" => {
            let out = run(Command::new("sgdisk").arg("-v").arg(image));
            assert!(
                out.contains("No problems found"),
                "sgdisk -v {}:\n{out}",
                image.display()
            );
        }
        "dos" => {
            run(Command::new("sfdisk").arg("--verify").arg(image));
        }
        other => panic!("unexpected partition table {other}"),
    }
}

/// The partitions of `image`'s table (empty for none).
pub fn partitions(image: &Path) -> Vec<Partition> {
    let out = run(Command::new("sfdisk").arg("--json").arg(image));
    let json: serde_json::Value = serde_json::from_str(&out).expect("sfdisk --json prints JSON");
    let table = &json["partitiontable"];
    let sector = table["sectorsize"].as_u64().unwrap_or(512);
    table["partitions"]
        .as_array()
        .expect("a partition list")
        .iter()
        .map(|p| Partition {
            offset: p["start"].as_u64().expect("a start") * sector,
            size: p["size"].as_u64().expect("a size") * sector,
        })
        .collect()
}

/// The file system type `blkid` probes on `device` (`None`: none, e.g. a
/// BIOS boot partition).
pub fn fs_type(device: &Path) -> Option<String> {
    let out = Command::new("blkid")
        .args(["-p", "-o", "value", "-s", "TYPE"])
        .arg(device)
        .output()
        .expect("blkid runs");
    let text = String::from_utf8_lossy(&out.stdout).trim().to_owned();
    (!text.is_empty()).then_some(text)
}

/// Checks every file system of the image with its own fsck (read-only) and
/// returns each partition holding one with its type (`None`: the bare file
/// system of a table-less image).
pub fn fsck_all(image: &Path, partitions: &[Partition]) -> Vec<(Option<Partition>, String)> {
    let targets: Vec<Option<&Partition>> = if partitions.is_empty() {
        vec![None]
    } else {
        partitions.iter().map(Some).collect()
    };
    let mut found = Vec::new();
    for partition in targets {
        let loop_dev = Loop::attach(image, partition);
        let device = &loop_dev.device;
        let Some(fs) = fs_type(device) else {
            continue;
        };
        match fs.as_str() {
            "ext4" | "ext3" | "ext2" => {
                run(Command::new("e2fsck").arg("-fn").arg(device));
            }
            "vfat" => {
                run(Command::new("fsck.vfat").arg("-n").arg(device));
            }
            other => panic!("no check for file system {other} in {partition:?}"),
        }
        found.push((partition.cloned(), fs));
    }
    found
}

/// The root file system mounted read-only with a writable overlay in `work`
/// (which must outlive the returned mounts; drop them first).
pub fn mount_root(device: &Path, work: &Path) -> (Mount, Mount) {
    let lower = work.join("lower");
    let upper = work.join("upper");
    let scratch = work.join("work");
    let merged = work.join("merged");
    for dir in [&lower, &upper, &scratch, &merged] {
        std::fs::create_dir_all(dir).expect("mount points can be made");
    }
    run(Command::new("mount")
        .args(["-t", "ext4", "-o", "ro,noload"])
        .arg(device)
        .arg(&lower));
    let lower_mount = Mount {
        point: lower.clone(),
    };
    run(Command::new("mount")
        .args(["-t", "overlay", "overlay", "-o"])
        .arg(format!(
            "lowerdir={},upperdir={},workdir={}",
            lower.display(),
            upper.display(),
            scratch.display()
        ))
        .arg(&merged));
    (Mount { point: merged }, lower_mount)
}

/// Checks the store installed under `root`: `nix store verify --no-trust
/// --all` passes and `nix path-info --all` lists exactly `closure`.
pub fn verify_store(root: &Path, closure: &[String]) {
    let store = format!("local?root={}", root.display());
    let nix = |args: &[&str]| {
        let mut cmd = Command::new("nix");
        cmd.args(["--extra-experimental-features", "nix-command"])
            .args(args)
            .args(["--store", &store]);
        run(&mut cmd)
    };
    nix(&["store", "verify", "--no-trust", "--all"]);
    let mut listed: Vec<String> = nix(&["path-info", "--all"])
        .lines()
        .map(str::to_owned)
        .collect();
    listed.sort();
    assert_eq!(listed, closure, "the installed store holds the closure");
}
