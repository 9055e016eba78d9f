//! Disk images of the example system made on the host without nixdisk: a
//! staged root (closures, profile links), ext4 and FAT file systems, GPT and
//! MBR disks, and loop devices that are detached on drop.

use std::fs::{self, File, OpenOptions};
use std::io::{self, Seek, SeekFrom};
use std::os::unix::fs::symlink;
use std::path::{Path, PathBuf};
use std::process::Command;

/// One MiB, the unit of every partition offset here.
pub const MIB: u64 = 1024 * 1024;

/// Runs `cmd`, panicking with its output when it fails; returns its stdout.
pub fn run(cmd: &mut Command) -> String {
    let out = cmd
        .output()
        .unwrap_or_else(|e| panic!("cannot run {cmd:?}: {e}"));
    assert!(
        out.status.success(),
        "{cmd:?} failed ({}):\n{}{}",
        out.status,
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).into_owned()
}

/// The store paths of the closure of `paths`.
pub fn closure(paths: &[&Path]) -> Vec<PathBuf> {
    run(Command::new("nix-store").arg("-qR").args(paths))
        .lines()
        .map(PathBuf::from)
        .collect()
}

/// Stages a root file system in `stage`: the closures of `generations` in
/// nix/store, `system-N-link` for each (N counting from 1) and `system`
/// pointing at the last, an empty /boot and the kernel file-system mount
/// points.
pub fn stage_root(stage: &Path, generations: &[&Path]) {
    let store = stage.join("nix/store");
    let profiles = stage.join("nix/var/nix/profiles");
    for dir in [&store, &profiles] {
        fs::create_dir_all(dir).expect("staging directories can be made");
    }
    for dir in ["boot", "dev", "proc", "sys"] {
        fs::create_dir_all(stage.join(dir)).expect("mount points can be made");
    }
    run(Command::new("cp")
        .arg("-a")
        .args(closure(generations))
        .arg(&store));
    for (i, toplevel) in generations.iter().enumerate() {
        symlink(toplevel, profiles.join(format!("system-{}-link", i + 1)))
            .expect("profile link can be made");
    }
    symlink(
        format!("system-{}-link", generations.len()),
        profiles.join("system"),
    )
    .expect("system link can be made");
}

/// Makes an ext4 file system labelled `nixos` in the file `image`, holding
/// `stage`.
pub fn make_ext4(image: &Path, stage: &Path, size_mib: u64) {
    make_ext4_labelled(image, stage, size_mib, "nixos");
}

/// Makes an ext4 file system labelled `label` in the file `image`, holding
/// `stage`.
pub fn make_ext4_labelled(image: &Path, stage: &Path, size_mib: u64, label: &str) {
    run(Command::new("mke2fs")
        .args(["-q", "-F", "-t", "ext4", "-L", label, "-d"])
        .arg(stage)
        .arg(image)
        .arg(format!("{size_mib}M")));
}

/// Makes a FAT file system in the file `image` holding the entries of `dir`
/// (with mtools: this host's kernel has no vfat to mount).
pub fn make_fat(image: &Path, dir: &Path, size_mib: u64, label: &str) {
    File::create(image)
        .and_then(|f| f.set_len(size_mib * MIB))
        .expect("FAT image file can be made");
    run(Command::new("mkfs.vfat").args(["-n", label]).arg(image));
    let entries: Vec<PathBuf> = fs::read_dir(dir)
        .expect("FAT contents can be listed")
        .map(|e| e.expect("FAT contents can be listed").path())
        .collect();
    if !entries.is_empty() {
        run(Command::new("mcopy")
            .args(["-s", "-i"])
            .arg(image)
            .args(entries)
            .arg("::/"));
    }
}

/// Copies the file `part` into `disk` at `offset_mib` MiB.
pub fn place(disk: &Path, part: &Path, offset_mib: u64) {
    let mut src = File::open(part).expect("partition image can be read");
    let mut dst = OpenOptions::new()
        .write(true)
        .open(disk)
        .expect("disk image can be written");
    dst.seek(SeekFrom::Start(offset_mib * MIB))
        .expect("disk image can be sought");
    io::copy(&mut src, &mut dst).expect("partition image is copied into the disk");
}

/// Makes an empty disk image of `size_mib` MiB.
pub fn blank_disk(disk: &Path, size_mib: u64) {
    File::create(disk)
        .and_then(|f| f.set_len(size_mib * MIB))
        .expect("disk image can be made");
}

/// A loop device over (part of) a file, detached on drop.
pub struct Loop {
    /// The device path, e.g. /dev/loop3.
    pub device: PathBuf,
}

impl Loop {
    /// Attaches `file` from `offset_mib` for `size_mib` MiB (the whole file
    /// when `None`).
    pub fn attach(file: &Path, range: Option<(u64, u64)>) -> Loop {
        let mut cmd = Command::new("losetup");
        cmd.args(["-f", "--show"]);
        if let Some((offset_mib, size_mib)) = range {
            cmd.arg("-o")
                .arg((offset_mib * MIB).to_string())
                .arg("--sizelimit")
                .arg((size_mib * MIB).to_string());
        }
        let device = PathBuf::from(run(cmd.arg(file)).trim());
        Loop { device }
    }
}

impl Drop for Loop {
    fn drop(&mut self) {
        let _ = Command::new("losetup").arg("-d").arg(&self.device).status();
    }
}
