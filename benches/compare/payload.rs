//! The synthetic closure: store paths of pseudo-random files added to the
//! Nix store with real Nix, then made part of the example system's closure
//! (its toplevel references them), so a full image installs them with a
//! bootloader like any system.

use std::path::{Path, PathBuf};
use std::process::Command;

/// The shape of a synthetic payload.
#[derive(Debug, Clone, Copy)]
pub struct Shape {
    /// A name for store paths and reports (`300m`).
    pub name: &'static str,
    /// Store paths.
    pub paths: usize,
    /// Files per store path.
    pub files_per_path: usize,
    /// Largest file, in KiB; sizes spread evenly from 1 KiB to this.
    pub max_file_kib: u64,
}

/// About 300 MiB in about 7k files.
pub const SMALL: Shape = Shape {
    name: "300m",
    paths: 20,
    files_per_path: 350,
    max_file_kib: 88,
};

/// About 1.5 GiB in about 14k files.
pub const BIG: Shape = Shape {
    name: "1500m",
    paths: 40,
    files_per_path: 350,
    max_file_kib: 224,
};

/// A small deterministic generator (xorshift64*): the same payload, so the
/// same store paths, on every run.
struct Rng(u64);

impl Rng {
    fn next(&mut self) -> u64 {
        self.0 ^= self.0 >> 12;
        self.0 ^= self.0 << 25;
        self.0 ^= self.0 >> 27;
        self.0.wrapping_mul(0x2545_F491_4F6C_DD1D)
    }
}

/// Writes the payload's store paths into `dir` and adds them to the store;
/// returns their store paths.
pub fn add_to_store(shape: Shape, dir: &Path) -> Vec<PathBuf> {
    let mut rng = Rng(0x6e69_7864_6973_6b00 ^ shape.max_file_kib);
    let mut store_paths = Vec::new();
    for p in 0..shape.paths {
        let root = dir.join(format!("bench-payload-{}-{p:02}", shape.name));
        for f in 0..shape.files_per_path {
            let sub = root.join(format!("d{:02}", f / 50));
            std::fs::create_dir_all(&sub).expect("create the payload directory");
            let size = 1024 + (rng.next() % (shape.max_file_kib * 1024 - 1024)) as usize;
            let mut bytes = vec![0u8; size];
            for chunk in bytes.chunks_mut(8) {
                let word = rng.next().to_le_bytes();
                chunk.copy_from_slice(&word[..chunk.len()]);
            }
            std::fs::write(sub.join(format!("f{f:04}.bin")), bytes).expect("write a payload file");
        }
        let out = Command::new("nix-store")
            .args(["--add-fixed", "--recursive", "sha256"])
            .arg(&root)
            .output()
            .expect("run nix-store (install nix-bin: scripts/setup)");
        assert!(
            out.status.success(),
            "nix-store --add-fixed failed: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        store_paths.push(PathBuf::from(String::from_utf8_lossy(&out.stdout).trim()));
        std::fs::remove_dir_all(&root).expect("remove the payload's source");
    }
    store_paths
}

/// Builds the example system (systemd-boot, for the efi layout) with the
/// payload in its closure; returns the toplevel and the closureInfo.
pub fn system_with(repo: &Path, shape: Shape, payload: &[PathBuf]) -> (PathBuf, PathBuf) {
    let list: Vec<String> = payload.iter().map(|p| p.display().to_string()).collect();
    let out = Command::new(repo.join("scripts/build-example-system"))
        .args([
            "--marker",
            &format!("bench-{}", shape.name),
            "--bootloader",
            "systemd-boot",
        ])
        .args(["--payload", &list.join(" ")])
        .output()
        .expect("run scripts/build-example-system");
    assert!(
        out.status.success(),
        "build-example-system failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    let text = String::from_utf8_lossy(&out.stdout);
    let mut lines = text.lines();
    let toplevel = PathBuf::from(lines.next().expect("a toplevel"));
    let info = PathBuf::from(lines.next().expect("a closureInfo"));
    (toplevel, info)
}

/// The closure's store paths, from its closureInfo.
pub fn closure_paths(info: &Path) -> Vec<PathBuf> {
    std::fs::read_to_string(info.join("store-paths"))
        .expect("read store-paths")
        .lines()
        .map(PathBuf::from)
        .collect()
}

/// Bytes of file content and entries under `paths`.
pub fn measure(paths: &[PathBuf]) -> (u64, u64) {
    fn walk(path: &Path, acc: &mut (u64, u64)) {
        let meta = std::fs::symlink_metadata(path).expect("stat");
        acc.1 += 1;
        if meta.is_dir() {
            for entry in std::fs::read_dir(path).expect("list") {
                walk(&entry.expect("entry").path(), acc);
            }
        } else if meta.is_file() {
            acc.0 += meta.len();
        }
    }
    let mut acc = (0, 0);
    for path in paths {
        walk(path, &mut acc);
    }
    acc
}
