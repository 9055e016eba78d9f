//! The host side of one `contents` entry: its sources walked into
//! [`Placement`]s, following make-disk-image's rsync rules (see the parent
//! module).

use std::os::unix::fs::{FileTypeExt, MetadataExt};
use std::path::Path;

use super::{ContentsError, Placement, PlacementKind};

/// Walks sources of one entry into placements.
pub(super) struct Walker {
    pub(super) index: usize,
    pub(super) mode: Option<u32>,
    pub(super) out: Vec<Placement>,
}

impl Walker {
    fn io(&self, path: &Path) -> impl FnOnce(std::io::Error) -> ContentsError {
        let (index, path) = (self.index, path.to_owned());
        move |source| ContentsError::Io {
            index,
            path,
            source,
        }
    }

    pub(super) fn glob(&mut self, pattern: &str, target: &Path) -> Result<(), ContentsError> {
        let options = glob::MatchOptions {
            case_sensitive: true,
            require_literal_separator: true,
            require_literal_leading_dot: true,
        };
        let bad = |reason: String| ContentsError::BadGlob {
            index: self.index,
            pattern: pattern.to_owned(),
            reason,
        };
        let mut matches = Vec::new();
        for found in glob::glob_with(pattern, options).map_err(|e| bad(e.to_string()))? {
            matches.push(found.map_err(|e| bad(e.to_string()))?);
        }
        if matches.is_empty() {
            return Err(ContentsError::GlobMatchedNothing {
                index: self.index,
                pattern: pattern.to_owned(),
            });
        }
        matches.sort();
        if !target.as_os_str().is_empty() {
            self.out
                .push(self.placement(Path::new(pattern), target, PlacementKind::Dir, 0o755));
        }
        for found in matches {
            // A match has a file name: globs never end in `..` here.
            let name = found.file_name().map(Path::new).unwrap_or(Path::new(""));
            self.walk(&found, &target.join(name))?;
        }
        Ok(())
    }

    /// A non-glob source: a directory (or a link to one) gives its contents
    /// to the target; anything else is placed at the target.
    pub(super) fn top(
        &mut self,
        source: &Path,
        written: &str,
        target: &Path,
    ) -> Result<(), ContentsError> {
        let missing = || ContentsError::MissingSource {
            index: self.index,
            source_path: written.to_owned(),
        };
        let link = std::fs::symlink_metadata(source).map_err(|_| missing())?;
        let followed = std::fs::metadata(source);
        match followed {
            Ok(meta) if meta.is_dir() && link.file_type().is_symlink() => {
                let resolved = std::fs::canonicalize(source).map_err(self.io(source))?;
                self.walk(&resolved, target)
            }
            _ => self.walk(source, target),
        }
    }

    fn walk(&mut self, source: &Path, target: &Path) -> Result<(), ContentsError> {
        let meta = std::fs::symlink_metadata(source).map_err(self.io(source))?;
        let file_type = meta.file_type();
        let own_mode = self.mode.unwrap_or(meta.mode() & 0o7777);
        if file_type.is_symlink() {
            let link = std::fs::read_link(source).map_err(self.io(source))?;
            self.out
                .push(self.placement(source, target, PlacementKind::Symlink(link), 0));
        } else if file_type.is_file() {
            self.out
                .push(self.placement(source, target, PlacementKind::File, own_mode));
        } else if file_type.is_dir() {
            self.out
                .push(self.placement(source, target, PlacementKind::Dir, own_mode));
            let mut children = Vec::new();
            for child in std::fs::read_dir(source).map_err(self.io(source))? {
                children.push(child.map_err(self.io(source))?.file_name());
            }
            children.sort();
            for name in children {
                self.walk(&source.join(&name), &target.join(&name))?;
            }
        } else {
            let kind = if file_type.is_fifo() {
                "FIFO"
            } else if file_type.is_socket() {
                "socket"
            } else {
                "device"
            };
            return Err(ContentsError::Unsupported {
                index: self.index,
                path: source.to_owned(),
                kind,
            });
        }
        Ok(())
    }

    fn placement(&self, source: &Path, target: &Path, kind: PlacementKind, mode: u32) -> Placement {
        Placement {
            index: self.index,
            source: source.to_owned(),
            target: target.to_owned(),
            kind,
            mode,
        }
    }
}
