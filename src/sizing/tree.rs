//! What a file tree holds, as file systems count it: the one effect of sizing.
//!
//! [`TreeStats::measure`] walks trees with `lstat` (never following symlinks)
//! and records, per file system object, what any file system needs to store
//! it: the sizes of regular files (hard-linked files once, by device and
//! inode), the name lengths of every directory's entries, the target lengths
//! of symlinks. The models in the sibling modules turn that into blocks.

use std::collections::HashSet;
use std::os::unix::fs::{FileTypeExt, MetadataExt};
use std::path::{Path, PathBuf};

use super::SizingError;

/// One directory: the byte lengths of its entries' names (`.` and `..` not included).
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct DirectoryStats {
    /// Name lengths in bytes, in the order `readdir` gave them.
    pub name_lengths: Vec<u16>,
}

/// The contents of a tree, reduced to what sizing needs.
///
/// The tree has one root directory (`directories[0]`); the measured paths are
/// its entries, or its contents for [`TreeStats::measure_dir`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TreeStats {
    /// Sizes in bytes of regular files, one per inode.
    pub file_sizes: Vec<u64>,
    /// Every directory, the root first.
    pub directories: Vec<DirectoryStats>,
    /// Target lengths in bytes of symlinks.
    pub symlink_targets: Vec<u64>,
    /// Sizes of the regular files met again through another hard link: one
    /// entry per extra name. File systems without hard links store copies.
    pub hard_links: Vec<u64>,
    /// Device nodes, fifos and sockets: an inode each, no data.
    pub special_files: u64,
}

impl Default for TreeStats {
    fn default() -> Self {
        Self::empty()
    }
}

impl TreeStats {
    /// A tree holding only an empty root directory.
    pub fn empty() -> Self {
        TreeStats {
            file_sizes: Vec::new(),
            directories: vec![DirectoryStats::default()],
            symlink_targets: Vec::new(),
            hard_links: Vec::new(),
            special_files: 0,
        }
    }

    /// Measures a tree whose root directory holds `paths` as entries, under
    /// their base names: the store paths at the root of a store image, or in
    /// `/nix/store` after [`TreeStats::nest_under`].
    pub fn measure<P: AsRef<Path>>(paths: &[P]) -> Result<Self, SizingError> {
        let mut walker = Walker::default();
        for path in paths {
            let path = path.as_ref();
            let name = path.file_name().ok_or_else(|| SizingError::NoName {
                path: path.to_owned(),
            })?;
            walker.stats.directories[0]
                .name_lengths
                .push(name_length(name));
            walker.visit(path)?;
        }
        Ok(walker.stats)
    }

    /// Measures the tree below `dir`: its contents become the root's entries,
    /// as `mke2fs -d DIR` copies them.
    pub fn measure_dir(dir: &Path) -> Result<Self, SizingError> {
        let mut walker = Walker::default();
        walker.read_entries(dir, 0)?;
        Ok(walker.stats)
    }

    /// Puts this tree below a chain of new directories (`["nix", "store"]`
    /// turns the root into `/nix/store`).
    pub fn nest_under(mut self, components: &[&str]) -> Self {
        // The new root holds components[0], the directory components[i]
        // holds components[i + 1], and the old root is the last component.
        let mut directories: Vec<DirectoryStats> = components
            .iter()
            .map(|name| DirectoryStats {
                name_lengths: vec![name_length(std::ffi::OsStr::new(name))],
            })
            .collect();
        directories.append(&mut self.directories);
        self.directories = directories;
        self
    }

    /// Adds another tree measured at the same root: its root entries join
    /// this root, its other objects are added.
    pub fn merge(mut self, other: TreeStats) -> Self {
        let mut other_dirs = other.directories.into_iter();
        if let Some(root) = other_dirs.next() {
            self.directories[0].name_lengths.extend(root.name_lengths);
        }
        self.directories.extend(other_dirs);
        self.file_sizes.extend(other.file_sizes);
        self.symlink_targets.extend(other.symlink_targets);
        self.hard_links.extend(other.hard_links);
        self.special_files += other.special_files;
        self
    }

    /// Adds `other` below `components` of this tree (`["etc"]` for a
    /// `contents` entry targeting `/etc/...`, `["nix", "store"]` for store
    /// paths). Directories on the way that already exist are counted again:
    /// a few bytes over, never under.
    pub fn place_at(self, components: &[&str], other: TreeStats) -> Self {
        self.merge(other.nest_under(components))
    }

    /// The number of inodes the tree needs (root included).
    pub fn inodes(&self) -> u64 {
        (self.file_sizes.len() + self.directories.len() + self.symlink_targets.len()) as u64
            + self.special_files
    }

    /// The sum of the regular files' sizes (each inode once).
    pub fn file_bytes(&self) -> u64 {
        self.file_sizes.iter().sum()
    }

    /// The number of directory entries in the tree (hard links included).
    pub fn entries(&self) -> u64 {
        self.directories
            .iter()
            .map(|d| d.name_lengths.len() as u64)
            .sum()
    }
}

fn name_length(name: &std::ffi::OsStr) -> u16 {
    // Linux names are at most 255 bytes.
    u16::try_from(name.len()).unwrap_or(u16::MAX)
}

#[derive(Debug, Default)]
struct Walker {
    stats: TreeStats,
    seen_inodes: HashSet<(u64, u64)>,
}

impl Walker {
    fn visit(&mut self, path: &Path) -> Result<(), SizingError> {
        let meta = std::fs::symlink_metadata(path).map_err(|source| SizingError::Walk {
            path: path.to_owned(),
            source,
        })?;
        let kind = meta.file_type();
        if kind.is_dir() {
            let index = self.stats.directories.len();
            self.stats.directories.push(DirectoryStats::default());
            self.read_entries(path, index)?;
        } else if kind.is_file() {
            if meta.nlink() > 1 && !self.seen_inodes.insert((meta.dev(), meta.ino())) {
                self.stats.hard_links.push(meta.len());
            } else {
                self.stats.file_sizes.push(meta.len());
            }
        } else if kind.is_symlink() {
            self.stats.symlink_targets.push(meta.len());
        } else if kind.is_block_device()
            || kind.is_char_device()
            || kind.is_fifo()
            || kind.is_socket()
        {
            self.stats.special_files += 1;
        }
        Ok(())
    }

    fn read_entries(&mut self, dir: &Path, index: usize) -> Result<(), SizingError> {
        let walk_error = |source| SizingError::Walk {
            path: dir.to_owned(),
            source,
        };
        let mut children: Vec<PathBuf> = Vec::new();
        for entry in std::fs::read_dir(dir).map_err(walk_error)? {
            let entry = entry.map_err(walk_error)?;
            self.stats.directories[index]
                .name_lengths
                .push(name_length(&entry.file_name()));
            children.push(entry.path());
        }
        for child in children {
            self.visit(&child)?;
        }
        Ok(())
    }
}
