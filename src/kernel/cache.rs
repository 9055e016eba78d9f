//! nixdisk's content-keyed cache (extracted vmlinux, built initramfs):
//! `$XDG_CACHE_HOME/nixdisk` or `~/.cache/nixdisk`, or a directory given.
//!
//! Entries are named by a hash of what they are made from and written to a
//! temporary file then renamed into place, so parallel runs can share the
//! cache: a reader sees either no file or a complete one.

use std::io::{self, Write};
use std::path::{Path, PathBuf};

use sha2::{Digest, Sha256};

/// The cache directory.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Cache {
    dir: PathBuf,
}

/// Errors of the cache.
#[derive(Debug, thiserror::Error)]
pub enum CacheError {
    /// Neither `$XDG_CACHE_HOME` nor `$HOME` is set.
    #[error("no cache directory: neither $XDG_CACHE_HOME nor $HOME is set; hint: pass --cache-dir")]
    NoHome,
    /// Creating or writing a cache entry failed.
    #[error("cannot write the cache entry `{}`: {source}", path.display())]
    Write {
        /// The entry or its directory.
        path: PathBuf,
        /// The I/O error.
        source: io::Error,
    },
}

impl Cache {
    /// The cache at `dir` (created on first write).
    pub fn at(dir: impl Into<PathBuf>) -> Self {
        Self { dir: dir.into() }
    }

    /// `dir` if given, else `$XDG_CACHE_HOME/nixdisk`, else `~/.cache/nixdisk`.
    pub fn from_env(dir: Option<&Path>) -> Result<Self, CacheError> {
        if let Some(dir) = dir {
            return Ok(Self::at(dir));
        }
        let var = |name| {
            std::env::var_os(name)
                .filter(|v| !v.is_empty())
                .map(PathBuf::from)
        };
        let base = var("XDG_CACHE_HOME")
            .or_else(|| var("HOME").map(|h| h.join(".cache")))
            .ok_or(CacheError::NoHome)?;
        Ok(Self::at(base.join("nixdisk")))
    }

    /// The cache directory.
    pub fn dir(&self) -> &Path {
        &self.dir
    }

    /// The path of the entry `name` (it may not exist yet).
    pub fn entry(&self, name: &str) -> PathBuf {
        self.dir.join(name)
    }

    /// The entry `name` if it exists.
    pub fn get(&self, name: &str) -> Option<PathBuf> {
        let path = self.entry(name);
        path.is_file().then_some(path)
    }

    /// Stores the entry `name`, whose bytes `fill` writes, atomically.
    /// `fill`'s own error type is kept; I/O errors of the cache itself become
    /// `E` through `From<CacheError>`.
    pub fn put<E: From<CacheError>>(
        &self,
        name: &str,
        fill: impl FnOnce(&mut dyn Write) -> Result<(), E>,
    ) -> Result<PathBuf, E> {
        let path = self.entry(name);
        let err = |path: &Path| {
            let path = path.to_path_buf();
            move |source| CacheError::Write { path, source }
        };
        std::fs::create_dir_all(&self.dir).map_err(err(&self.dir))?;
        let mut tmp = tempfile::NamedTempFile::new_in(&self.dir).map_err(err(&self.dir))?;
        {
            let mut out = io::BufWriter::new(tmp.as_file_mut());
            fill(&mut out)?;
            out.flush().map_err(err(&path))?;
        }
        tmp.as_file().sync_all().map_err(err(&path))?;
        tmp.persist(&path).map_err(|e| err(&path)(e.error))?;
        Ok(path)
    }
}

/// Lower-case hex SHA-256 of `bytes`.
pub fn sha256_hex(bytes: &[u8]) -> String {
    hex(&Sha256::digest(bytes))
}

/// Lower-case hex of `bytes`.
pub fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}
