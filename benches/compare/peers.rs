//! The floor and the peers, each making a GPT disk with one ext4 partition
//! holding the closure under `nix/store`, converted to qcow2 like nixdisk's.

use std::path::{Path, PathBuf};
use std::process::Command;

use crate::timed;

/// Where the root partition starts (1 MiB, as sfdisk aligns it).
const OFFSET: u64 = 1 << 20;
/// What the backup GPT needs at the end.
const GPT_TAIL: u64 = 1 << 20;

/// `tree/nix/store/<name>`, hard links to the store's files (the same tree
/// for every peer; made once, outside the timings).
pub fn stage_tree(paths: &[PathBuf], tree: &Path) {
    remove_tree(tree);
    let store = tree.join("nix/store");
    std::fs::create_dir_all(&store).expect("tree");
    for path in paths {
        let status = Command::new("cp")
            .arg("-al")
            .arg(path)
            .arg(&store)
            .status()
            .expect("cp");
        assert!(status.success(), "cp -al {} failed", path.display());
    }
}

/// Every file under `paths`, concatenated into `blob` (what the guest
/// writes to its disk to measure the disk's rate).
pub fn concatenate(paths: &[PathBuf], blob: &Path) {
    let list: Vec<String> = paths.iter().map(|p| format!("'{}'", p.display())).collect();
    let status = Command::new("sh")
        .arg("-c")
        .arg(format!(
            "find {} -type f -print0 | xargs -0 cat > '{}'",
            list.join(" "),
            blob.display()
        ))
        .status()
        .expect("sh");
    assert!(status.success(), "concatenating the closure failed");
}

/// Removes a staged tree (its directories are read-only copies of the store's).
pub fn remove_tree(tree: &Path) {
    if tree.exists() {
        let _ = Command::new("chmod").args(["-R", "u+w"]).arg(tree).status();
        std::fs::remove_dir_all(tree).expect("remove the tree");
    }
}

fn blank(path: &Path, size: u64) {
    let _ = std::fs::remove_file(path);
    std::fs::File::create(path)
        .and_then(|f| f.set_len(size))
        .expect("blank image");
}

fn convert(raw: &Path, qcow2: &Path) -> Command {
    let mut c = Command::new("qemu-img");
    c.args(["convert", "-f", "raw", "-O", "qcow2"])
        .arg(raw)
        .arg(qcow2);
    c
}

/// sfdisk + `mke2fs -d` at the partition's offset + qemu-img convert.
pub fn floor(tree: &Path, disk: u64, work: &Path) -> f64 {
    let raw = work.join("floor.raw");
    let qcow2 = work.join("floor.qcow2");
    let _ = std::fs::remove_file(&qcow2);
    blank(&raw, disk);
    let fs_bytes = (disk - OFFSET - GPT_TAIL) / 4096 * 4096;
    let mut seconds = 0.0;
    let mut sfdisk = Command::new("sfdisk");
    sfdisk
        .arg("-q")
        .arg(&raw)
        .stdin(std::process::Stdio::piped());
    let started = std::time::Instant::now();
    let mut child = sfdisk.spawn().expect("sfdisk");
    use std::io::Write;
    child
        .stdin
        .take()
        .expect("stdin")
        .write_all(
            format!(
                "label: gpt\nstart=2048, size={}, type=linux\n",
                fs_bytes / 512
            )
            .as_bytes(),
        )
        .expect("sfdisk script");
    assert!(child.wait().expect("sfdisk").success(), "sfdisk failed");
    seconds += started.elapsed().as_secs_f64();
    seconds += timed(
        Command::new("mke2fs")
            .args(["-q", "-F", "-t", "ext4", "-b", "4096", "-L", "nixos"])
            .args(["-E", &format!("offset={OFFSET}"), "-d"])
            .arg(tree)
            .arg(&raw)
            .arg(format!("{}k", fs_bytes / 1024)),
    );
    seconds += timed(&mut convert(&raw, &qcow2));
    let _ = std::fs::remove_file(&raw);
    let _ = std::fs::remove_file(&qcow2);
    seconds
}

fn installed(program: &str) -> bool {
    Command::new("sh")
        .args(["-c", &format!("command -v {program}")])
        .output()
        .is_ok_and(|o| o.status.success())
}

/// systemd-repart with a root partition of ext4 from CopyFiles, then
/// qemu-img convert; `None` when it is not installed.
pub fn repart(tree: &Path, disk: u64, work: &Path) -> Option<f64> {
    if !installed("systemd-repart") {
        return None;
    }
    let defs = work.join("repart.d");
    let _ = std::fs::remove_dir_all(&defs);
    std::fs::create_dir_all(&defs).expect("repart.d");
    std::fs::write(
        defs.join("10-root.conf"),
        format!(
            "[Partition]\nType=root\nFormat=ext4\nLabel=nixos\nCopyFiles={}:/\n",
            tree.display()
        ),
    )
    .expect("repart definition");
    let raw = work.join("repart.raw");
    let qcow2 = work.join("repart.qcow2");
    let _ = std::fs::remove_file(&raw);
    let _ = std::fs::remove_file(&qcow2);
    let mut seconds = timed(
        Command::new("systemd-repart")
            .args(["--empty=create", "--dry-run=no", "--no-pager"])
            .arg(format!("--size={disk}"))
            .arg(format!("--definitions={}", defs.display()))
            .arg(&raw),
    );
    seconds += timed(&mut convert(&raw, &qcow2));
    let _ = std::fs::remove_file(&raw);
    let _ = std::fs::remove_file(&qcow2);
    Some(seconds)
}

/// libguestfs' virt-make-fs (its appliance VM under TCG); `None` when it
/// is not installed.
pub fn virt_make_fs(tree: &Path, disk: u64, work: &Path) -> Option<f64> {
    if !installed("virt-make-fs") {
        return None;
    }
    let qcow2 = work.join("virt-make-fs.qcow2");
    let _ = std::fs::remove_file(&qcow2);
    let seconds = timed(
        Command::new("virt-make-fs")
            .env("LIBGUESTFS_BACKEND", "direct")
            .env("LIBGUESTFS_BACKEND_SETTINGS", "force_tcg")
            .args(["--partition=gpt", "--type=ext4", "--format=qcow2"])
            .arg(format!("--size={disk}"))
            .arg(tree)
            .arg(&qcow2),
    );
    let _ = std::fs::remove_file(&qcow2);
    Some(seconds)
}

/// The virtual size of a disk image.
pub fn virtual_size(image: &Path) -> u64 {
    let out = Command::new("qemu-img")
        .args(["info", "--output=json"])
        .arg(image)
        .output()
        .expect("qemu-img info");
    let info: serde_json::Value = serde_json::from_slice(&out.stdout).expect("qemu-img json");
    info["virtual-size"].as_u64().expect("virtual-size")
}

fn first_line(program: &str, args: &[&str]) -> String {
    Command::new(program)
        .args(args)
        .output()
        .ok()
        .map(|o| {
            let text = if o.stdout.is_empty() {
                o.stderr
            } else {
                o.stdout
            };
            String::from_utf8_lossy(&text)
                .lines()
                .next()
                .unwrap_or("")
                .trim()
                .to_owned()
        })
        .filter(|l| !l.is_empty())
        .unwrap_or_else(|| "not installed".to_owned())
}

/// The machine, tool versions and date, as markdown lines.
pub fn machine() -> String {
    let cpuinfo = std::fs::read_to_string("/proc/cpuinfo").unwrap_or_default();
    let model = cpuinfo
        .lines()
        .find_map(|l| l.strip_prefix("model name"))
        .map(|l| l.trim_start_matches([' ', '\t', ':']).to_owned())
        .unwrap_or_default();
    let cpus = cpuinfo
        .lines()
        .filter(|l| l.starts_with("processor"))
        .count();
    let meminfo = std::fs::read_to_string("/proc/meminfo").unwrap_or_default();
    let mem_gib = meminfo
        .lines()
        .find_map(|l| l.strip_prefix("MemTotal:"))
        .and_then(|l| l.split_whitespace().next()?.parse::<f64>().ok())
        .map_or(0.0, |kib| kib / 1048576.0);
    format!(
        "- date: {}\n- machine: {cpus} CPUs ({model}), {mem_gib:.0} GiB, no usable KVM (TCG)\n\
         - nixdisk {}; {}; {}; mke2fs {}; {}; {}; host kernel {}\n",
        first_line("date", &["-u", "+%Y-%m-%d %H:%M UTC"]),
        env!("CARGO_PKG_VERSION"),
        first_line("qemu-system-x86_64", &["--version"]),
        first_line("qemu-img", &["--version"]),
        first_line("sh", &["-c", "mke2fs -V 2>&1 | head -1"]),
        first_line("systemd-repart", &["--version"]),
        first_line(
            "sh",
            &[
                "-c",
                "dpkg-query -W -f='libguestfs-tools ${Version}' libguestfs-tools"
            ]
        ),
        first_line("uname", &["-r"]),
    )
}
