//! Store paths for store-image tests and the benchmark: generated trees added
//! to the real Nix store, and snapshots of trees for comparing by content.

#![allow(dead_code)] // Shared by the test and the benchmark, which use different parts.

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::fs;
use std::os::unix::fs::{MetadataExt, PermissionsExt};
use std::path::{Path, PathBuf};
use std::process::Command;

/// Adds `path` to the Nix store with the store optimiser on, so identical
/// files (in it and in paths added before) become hard links, as on a
/// machine with `auto-optimise-store`.
pub fn add_to_store(path: &Path) -> PathBuf {
    let output = Command::new("nix-store")
        .args(["--option", "auto-optimise-store", "true", "--add"])
        .arg(path)
        .output()
        .expect("run nix-store --add");
    assert!(
        output.status.success(),
        "nix-store --add: {}",
        String::from_utf8_lossy(&output.stderr)
    );
    PathBuf::from(String::from_utf8(output.stdout).expect("utf-8 path").trim())
}

/// The closure of `paths` according to Nix (`nix-store -qR`).
pub fn closure(paths: &[PathBuf]) -> Vec<PathBuf> {
    let output = Command::new("nix-store")
        .arg("-qR")
        .args(paths)
        .output()
        .expect("run nix-store -qR");
    assert!(
        output.status.success(),
        "nix-store -qR: {}",
        String::from_utf8_lossy(&output.stderr)
    );
    String::from_utf8(output.stdout)
        .expect("utf-8")
        .lines()
        .map(PathBuf::from)
        .collect()
}

/// The registration of `paths` (`nix-store --dump-db`), as closureInfo has it.
pub fn registration(paths: &[PathBuf]) -> String {
    let output = Command::new("nix-store")
        .arg("--dump-db")
        .args(paths)
        .output()
        .expect("run nix-store --dump-db");
    assert!(
        output.status.success(),
        "nix-store --dump-db: {}",
        String::from_utf8_lossy(&output.stderr)
    );
    String::from_utf8(output.stdout).expect("utf-8")
}

/// A small deterministic generator, so trees (and their store paths) repeat.
pub struct Rng(u64);

impl Rng {
    pub fn new(seed: u64) -> Rng {
        Rng(seed.wrapping_mul(0x9E37_79B9_7F4A_7C15) | 1)
    }

    pub fn next(&mut self) -> u64 {
        // xorshift64*
        self.0 ^= self.0 >> 12;
        self.0 ^= self.0 << 25;
        self.0 ^= self.0 >> 27;
        self.0.wrapping_mul(0x2545_F491_4F6C_DD1D)
    }

    pub fn bytes(&mut self, len: usize) -> Vec<u8> {
        let mut out = Vec::with_capacity(len + 8);
        while out.len() < len {
            out.extend_from_slice(&self.next().to_le_bytes());
        }
        out.truncate(len);
        out
    }
}

/// Writes a tree of `dirs` directories and `files` files holding about
/// `total_bytes` in all (sizes skewed small, as in a real store), plus a
/// symlink per directory.
pub fn write_bulk_tree(root: &Path, seed: u64, dirs: usize, files: usize, total_bytes: u64) {
    let mut rng = Rng::new(seed);
    fs::create_dir_all(root).expect("mkdir");
    let dir_paths: Vec<PathBuf> = (0..dirs)
        .map(|d| {
            // Two levels: a few top directories with sub-directories.
            let path = root.join(format!("top{}", d % 16)).join(format!("dir{d}"));
            fs::create_dir_all(&path).expect("mkdir");
            std::os::unix::fs::symlink(format!("../dir{}", (d + 1) % dirs), path.join("next"))
                .expect("symlink");
            path
        })
        .collect();
    // Skewed sizes: most files small, a few large; scaled to total_bytes.
    let weights: Vec<u64> = (0..files)
        .map(|_| {
            let r = rng.next();
            if r % 100 == 0 {
                200_000 + r % 2_000_000
            } else {
                200 + r % 30_000
            }
        })
        .collect();
    let sum: u64 = weights.iter().sum();
    for (i, weight) in weights.iter().enumerate() {
        let len = (u128::from(*weight) * u128::from(total_bytes) / u128::from(sum)) as usize;
        let path = dir_paths[i % dirs].join(format!("file{i}"));
        fs::write(&path, rng.bytes(len)).expect("write");
        if i % 7 == 0 {
            fs::set_permissions(&path, fs::Permissions::from_mode(0o755)).expect("chmod");
        }
    }
}

/// One entry of a tree, as the comparisons see it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Entry {
    /// A directory and its permission bits.
    Dir { mode: u32, mtime: i64 },
    /// A regular file, its permission bits and contents.
    File {
        mode: u32,
        mtime: i64,
        contents: Vec<u8>,
    },
    /// A symlink and its target.
    Symlink { target: PathBuf },
}

/// A tree read from disk: entries by path relative to its root, and the
/// inode identity of each regular file (for hard-link groups).
#[derive(Debug, Default)]
pub struct Snapshot {
    pub entries: BTreeMap<PathBuf, Entry>,
    pub inodes: BTreeMap<PathBuf, (u64, u64)>,
}

impl Snapshot {
    /// Reads the tree at `root`, naming its entries `prefix/<relative path>`.
    pub fn read_into(&mut self, root: &Path, prefix: &Path) {
        let meta = fs::symlink_metadata(root).expect("lstat");
        let mode = meta.mode() & 0o7777;
        let kind = meta.file_type();
        if kind.is_symlink() {
            let target = fs::read_link(root).expect("readlink");
            self.entries
                .insert(prefix.to_owned(), Entry::Symlink { target });
        } else if kind.is_file() {
            let contents = fs::read(root).expect("read");
            self.entries.insert(
                prefix.to_owned(),
                Entry::File {
                    mode,
                    mtime: meta.mtime(),
                    contents,
                },
            );
            self.inodes
                .insert(prefix.to_owned(), (meta.dev(), meta.ino()));
        } else if kind.is_dir() {
            self.entries.insert(
                prefix.to_owned(),
                Entry::Dir {
                    mode,
                    mtime: meta.mtime(),
                },
            );
            for child in fs::read_dir(root).expect("readdir") {
                let name = child.expect("entry").file_name();
                self.read_into(&root.join(&name), &prefix.join(&name));
            }
        } else {
            panic!("unexpected file type at {}", root.display());
        }
    }

    /// The hard-link groups: sets of paths sharing an inode, those with more
    /// than one path only.
    pub fn link_groups(&self) -> BTreeSet<BTreeSet<PathBuf>> {
        let mut groups: HashMap<(u64, u64), BTreeSet<PathBuf>> = HashMap::new();
        for (path, inode) in &self.inodes {
            groups.entry(*inode).or_default().insert(path.clone());
        }
        groups.into_values().filter(|g| g.len() > 1).collect()
    }
}

/// The snapshot the image should hold: each store path under its base name.
pub fn closure_snapshot(paths: &[PathBuf]) -> Snapshot {
    let mut snapshot = Snapshot::default();
    for path in paths {
        snapshot.read_into(path, Path::new(path.file_name().expect("store path name")));
    }
    snapshot
}

/// Total size of the files of a tree, hard links counted once.
pub fn tree_bytes(paths: &[PathBuf]) -> u64 {
    let snapshot = closure_snapshot(paths);
    let mut seen = BTreeSet::new();
    snapshot
        .entries
        .iter()
        .filter_map(|(path, entry)| match entry {
            Entry::File { contents, .. } if seen.insert(snapshot.inodes[path]) => {
                Some(contents.len() as u64)
            }
            _ => None,
        })
        .sum()
}
