//! The `nix-store --load-db` text format, read and written.
//!
//! One record per path, one field a line: the path, its NAR hash, its NAR
//! size, its deriver (an empty line when unknown), the number of references,
//! then the references, one a line. nixpkgs' `closureInfo` writes hashes as
//! `sha256:<base32>`; `nix-store --dump-db` writes bare base16. Both are read
//! and normalised to `sha256:<base16>`, the form Nix's database stores; the
//! writer emits that form, which `--load-db` accepts.

use std::path::Path;

use super::store_path::store_path;
use super::{ClosureError, StorePathInfo};

/// Length of a SHA-256 digest in bytes.
const SHA256_BYTES: usize = 32;

/// Turns a NAR hash as Nix prints it (`sha256:<base16>`, `sha256:<base32>`
/// or bare base16 of 64 digits) into `sha256:<base16>`. Returns `None` when
/// the text is not a SHA-256 hash in one of those forms.
pub fn normalise_nar_hash(text: &str) -> Option<String> {
    let digest = text.strip_prefix("sha256:").unwrap_or(text);
    let bytes = match digest.len() {
        64 => decode_base16(digest)?,
        // Base32 only with its prefix: a bare 52-character string is too
        // easily something else.
        52 if text.starts_with("sha256:") => nix_base32::from_nix_base32(digest)?,
        _ => return None,
    };
    (bytes.len() == SHA256_BYTES).then(|| format!("sha256:{}", encode_base16(&bytes)))
}

fn decode_base16(text: &str) -> Option<Vec<u8>> {
    if !text.bytes().all(|b| b.is_ascii_hexdigit()) {
        return None;
    }
    (0..text.len())
        .step_by(2)
        .map(|i| u8::from_str_radix(&text[i..i + 2], 16).ok())
        .collect()
}

fn encode_base16(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

/// Reads registration text. `file` names its source in error messages.
/// Paths come back in the text's order; [`super::Closure::new`] sorts and
/// checks them.
pub fn parse_registration(text: &str, file: &Path) -> Result<Vec<StorePathInfo>, ClosureError> {
    let mut lines = Lines {
        inner: text.lines().enumerate(),
        file,
        last_line: 0,
    };
    let mut infos = Vec::new();
    let mut seen = std::collections::HashSet::new();
    while let Some((line, path_text)) = lines.next_record_start() {
        let path = store_path(file, line, path_text, "a store path")?;
        if !seen.insert(path.clone()) {
            return Err(ClosureError::Duplicate {
                file: file.to_owned(),
                line,
                path,
            });
        }
        let (hash_line, hash_text) = lines.field("the NAR hash")?;
        if hash_text.is_empty() || hash_text.starts_with('/') {
            return Err(ClosureError::MissingHashes {
                file: file.to_owned(),
                line: hash_line,
                value: hash_text.to_owned(),
            });
        }
        let nar_hash = normalise_nar_hash(hash_text).ok_or_else(|| ClosureError::Malformed {
            file: file.to_owned(),
            line: hash_line,
            problem: format!(
                "`{hash_text}` is not a NAR hash: expected sha256:<52 base32 digits>, sha256:<64 hex digits> or 64 hex digits"
            ),
        })?;
        let nar_size = lines.number("the NAR size in bytes")?;
        let (deriver_line, deriver_text) = lines.field("the deriver (or an empty line)")?;
        let deriver = match deriver_text {
            "" => None,
            text => Some(store_path(
                file,
                deriver_line,
                text,
                "a deriver store path or an empty line",
            )?),
        };
        let count = lines.number("the number of references")?;
        let mut references = Vec::new();
        for _ in 0..count {
            let (ref_line, ref_text) = lines.field("a reference")?;
            references.push(store_path(
                file,
                ref_line,
                ref_text,
                "a reference (a store path)",
            )?);
        }
        infos.push(StorePathInfo {
            path,
            nar_hash,
            nar_size,
            references,
            deriver,
        });
    }
    Ok(infos)
}

/// The lines of a registration with their 1-based numbers.
struct Lines<'a, I> {
    inner: I,
    file: &'a Path,
    last_line: usize,
}

impl<'a, I: Iterator<Item = (usize, &'a str)>> Lines<'a, I> {
    /// The next non-empty line, where a record starts; `None` at the end.
    fn next_record_start(&mut self) -> Option<(usize, &'a str)> {
        loop {
            let (index, text) = self.inner.next()?;
            self.last_line = index + 1;
            if !text.trim().is_empty() {
                return Some((index + 1, text.trim_end()));
            }
        }
    }

    fn field(&mut self, expected: &str) -> Result<(usize, &'a str), ClosureError> {
        match self.inner.next() {
            Some((index, text)) => {
                self.last_line = index + 1;
                Ok((index + 1, text.trim_end()))
            }
            None => Err(ClosureError::Malformed {
                file: self.file.to_owned(),
                line: self.last_line + 1,
                problem: format!("the text ends where {expected} was expected"),
            }),
        }
    }

    fn number(&mut self, expected: &str) -> Result<u64, ClosureError> {
        let (line, text) = self.field(expected)?;
        text.parse().map_err(|_| ClosureError::Malformed {
            file: self.file.to_owned(),
            line,
            problem: format!("`{text}` is not {expected} (a whole number)"),
        })
    }
}

/// Writes path infos as registration text, in the given order, with
/// `sha256:<base16>` hashes.
pub fn render_registration(paths: &[StorePathInfo]) -> String {
    let mut text = String::new();
    for info in paths {
        text.push_str(&format!("{}\n", info.path.display()));
        text.push_str(&format!("{}\n", info.nar_hash));
        text.push_str(&format!("{}\n", info.nar_size));
        if let Some(deriver) = &info.deriver {
            text.push_str(&format!("{}", deriver.display()));
        }
        text.push('\n');
        text.push_str(&format!("{}\n", info.references.len()));
        for reference in &info.references {
            text.push_str(&format!("{}\n", reference.display()));
        }
    }
    text
}
