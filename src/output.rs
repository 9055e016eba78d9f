//! The output directory: image file names, hydra-build-products, postVM, and the atomic rename at the end.
//!
//! All work happens in a temporary directory created beside the final `--out`
//! (so on the same file system); it is renamed to `--out` only by
//! [`OutputDir::finish`], once everything succeeded. On an error, or when the
//! [`OutputDir`] is dropped unfinished, the temporary directory is removed:
//! a failed build leaves nothing behind.

use std::fs;
use std::io::Write;
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::process::Command;

use tempfile::TempDir;
use thiserror::Error;

use crate::host_tool::stderr_tail;
use crate::spec::ImageFormat;

/// Name of the EFI variables file written beside the image (`touchEFIVars`).
pub const EFI_VARS_FILE: &str = "efi-vars.fd";

/// Hydra's build products list, relative to the output directory.
pub const HYDRA_BUILD_PRODUCTS: &str = "nix-support/hydra-build-products";

/// How many trailing lines of postVM's stderr an error carries.
const POST_VM_STDERR_LINES: usize = 20;

/// What went wrong with the output directory.
#[derive(Debug, Error)]
pub enum OutputError {
    /// `--out` already holds something; nixdisk never overwrites it.
    #[error(
        "the output directory {path} already exists and is not empty\nhint: remove it (rm -r {path}) or pass another --out"
    )]
    OutExists {
        /// The `--out` path.
        path: PathBuf,
    },
    /// `--out` exists and is not a directory.
    #[error(
        "the output path {path} exists and is not a directory\nhint: remove it or pass another --out"
    )]
    OutNotADirectory {
        /// The `--out` path.
        path: PathBuf,
    },
    /// `--out` has no usable parent directory.
    #[error(
        "the output path {path} has no parent directory to build in\nhint: pass a path such as ./result"
    )]
    NoParent {
        /// The `--out` path.
        path: PathBuf,
    },
    /// A file-system operation on the output failed.
    #[error("{action} {path}: {source}")]
    Io {
        /// What nixdisk was doing.
        action: &'static str,
        /// The path involved.
        path: PathBuf,
        /// The error from the operating system.
        source: std::io::Error,
    },
    /// The postVM script could not be started.
    #[error("could not start postVM with `sh`: {source}")]
    PostVmSpawn {
        /// The error from the operating system.
        source: std::io::Error,
    },
    /// The postVM script failed.
    #[error(
        "postVM failed ({status}); the image was not published.\nlast lines of its stderr:\n{stderr}"
    )]
    PostVmFailed {
        /// How the script ended.
        status: std::process::ExitStatus,
        /// The tail of its standard error.
        stderr: String,
    },
}

/// The file name of the image: `<baseName>.<extension>`.
pub fn image_file_name(base_name: &str, format: ImageFormat) -> String {
    format!("{base_name}.{}", format.extension())
}

/// The line nixpkgs appends to `nix-support/hydra-build-products` for an image
/// at `image` (the final path): `file <format>-image <path>`, where qcow2
/// variants count as `qcow2`, as in make-disk-image.
pub fn hydra_build_product_line(format: ImageFormat, image: &Path) -> String {
    format!(
        "file {}-image {}\n",
        format.qemu_img_format(),
        image.display()
    )
}

/// An output directory under construction: a temporary directory beside the
/// final path, published by [`OutputDir::finish`].
#[derive(Debug)]
pub struct OutputDir {
    final_path: PathBuf,
    temp: TempDir,
    // Removes the temporary directory after Ctrl-C even when the build
    // thread does not unwind in time.
    _on_signal: crate::interrupt::DirGuard,
}

impl OutputDir {
    /// Prepares an output for `out`: checks that `out` is free (missing, or an
    /// empty directory) and creates the temporary directory beside it.
    pub fn create(out: &Path) -> Result<OutputDir, OutputError> {
        let final_path = std::path::absolute(out).map_err(|source| OutputError::Io {
            action: "could not resolve the output path",
            path: out.to_owned(),
            source,
        })?;
        check_free(&final_path)?;
        let (parent, name) = match (final_path.parent(), final_path.file_name()) {
            (Some(parent), Some(name)) => (parent, name),
            _ => return Err(OutputError::NoParent { path: final_path }),
        };
        let temp = tempfile::Builder::new()
            .prefix(&format!(".{}.nixdisk-", name.to_string_lossy()))
            .tempdir_in(parent)
            .map_err(|source| OutputError::Io {
                action: "could not create a temporary output directory in",
                path: parent.to_owned(),
                source,
            })?;
        tracing::debug!(temp = %temp.path().display(), out = %final_path.display(), "output directory prepared");
        let _on_signal = crate::interrupt::DirGuard::register(temp.path());
        Ok(OutputDir {
            final_path,
            temp,
            _on_signal,
        })
    }

    /// The temporary directory everything is written into.
    pub fn path(&self) -> &Path {
        self.temp.path()
    }

    /// The path the output directory gets when finished.
    pub fn final_path(&self) -> &Path {
        &self.final_path
    }

    /// Where the image file is written now (inside the temporary directory).
    pub fn image_path(&self, base_name: &str, format: ImageFormat) -> PathBuf {
        self.path().join(image_file_name(base_name, format))
    }

    /// Where the image file will be once finished.
    pub fn final_image_path(&self, base_name: &str, format: ImageFormat) -> PathBuf {
        self.final_path.join(image_file_name(base_name, format))
    }

    /// Appends the image's line to `nix-support/hydra-build-products`,
    /// naming the image by its final path.
    pub fn add_hydra_build_product(
        &self,
        base_name: &str,
        format: ImageFormat,
    ) -> Result<(), OutputError> {
        let support = self.path().join("nix-support");
        fs::create_dir_all(&support).map_err(|source| io("could not create", &support, source))?;
        let list = self.path().join(HYDRA_BUILD_PRODUCTS);
        let line = hydra_build_product_line(format, &self.final_image_path(base_name, format));
        fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(&list)
            .and_then(|mut file| file.write_all(line.as_bytes()))
            .map_err(|source| io("could not write", &list, source))
    }

    /// Copies the EFI variables store `vars` to `efi-vars.fd` (mode 0644).
    pub fn add_efi_vars(&self, vars: &Path) -> Result<PathBuf, OutputError> {
        let dest = self.path().join(EFI_VARS_FILE);
        fs::copy(vars, &dest)
            .map_err(|source| io("could not copy the EFI variables from", vars, source))?;
        fs::set_permissions(&dest, fs::Permissions::from_mode(0o644))
            .map_err(|source| io("could not set the mode of", &dest, source))?;
        Ok(dest)
    }

    /// Runs the user's postVM shell code with `sh -e -c`, as nixpkgs runs it
    /// after the image is made: `out` (the temporary output directory, where
    /// its files must go) and `diskImage` in the environment, the temporary
    /// directory as working directory. An empty script does nothing.
    pub fn run_post_vm(&self, script: &str, disk_image: &Path) -> Result<(), OutputError> {
        if script.trim().is_empty() {
            return Ok(());
        }
        tracing::info!("running postVM");
        // In its own process group, killed with everything it started when
        // the build is interrupted.
        let output = crate::interrupt::run_output_inheriting_stdout(
            Command::new("sh")
                .arg("-e")
                .arg("-c")
                .arg(script)
                .env("out", self.path())
                .env("diskImage", disk_image)
                .current_dir(self.path()),
        )
        .map_err(|source| OutputError::PostVmSpawn { source })?;
        if !output.stderr.is_empty() {
            tracing::debug!(stderr = %String::from_utf8_lossy(&output.stderr), "postVM stderr");
        }
        if output.status.success() {
            Ok(())
        } else {
            Err(OutputError::PostVmFailed {
                status: output.status,
                stderr: stderr_tail(&output.stderr, POST_VM_STDERR_LINES),
            })
        }
    }

    /// Publishes the output: renames the temporary directory to `--out`.
    ///
    /// Paths of the temporary directory that postVM wrote into
    /// hydra-build-products are rewritten to the final path first.
    pub fn finish(self) -> Result<PathBuf, OutputError> {
        self.rewrite_build_products()?;
        // Checked again: something may have appeared at --out meanwhile.
        check_free(&self.final_path)?;
        fs::set_permissions(self.path(), fs::Permissions::from_mode(0o755))
            .map_err(|source| io("could not set the mode of", self.path(), source))?;
        // rename(2) replaces an empty directory atomically, and fails on a
        // non-empty one, so a racing writer cannot lose its files.
        fs::rename(self.temp.path(), &self.final_path).map_err(|source| match source.kind() {
            std::io::ErrorKind::DirectoryNotEmpty => OutputError::OutExists {
                path: self.final_path.clone(),
            },
            _ => io(
                "could not move the finished output to",
                &self.final_path,
                source,
            ),
        })?;
        // The directory now lives at the final path; nothing is left to delete.
        let _moved = self.temp.keep();
        tracing::info!(out = %self.final_path.display(), "output ready");
        Ok(self.final_path)
    }

    fn rewrite_build_products(&self) -> Result<(), OutputError> {
        let list = self.path().join(HYDRA_BUILD_PRODUCTS);
        let text = match fs::read_to_string(&list) {
            Ok(text) => text,
            Err(error) if error.kind() == std::io::ErrorKind::NotFound => return Ok(()),
            Err(source) => return Err(io("could not read", &list, source)),
        };
        let temp = self.path().to_string_lossy();
        if text.contains(temp.as_ref()) {
            let rewritten = text.replace(temp.as_ref(), &self.final_path.to_string_lossy());
            fs::write(&list, rewritten).map_err(|source| io("could not write", &list, source))?;
        }
        Ok(())
    }
}

/// Fails unless `path` is missing or an empty directory.
fn check_free(path: &Path) -> Result<(), OutputError> {
    match fs::symlink_metadata(path) {
        Err(error) if error.kind() == std::io::ErrorKind::NotFound => Ok(()),
        Err(source) => Err(io("could not inspect", path, source)),
        Ok(meta) if !meta.is_dir() => Err(OutputError::OutNotADirectory {
            path: path.to_owned(),
        }),
        Ok(_) => {
            let mut entries =
                fs::read_dir(path).map_err(|source| io("could not read", path, source))?;
            if entries.next().is_some() {
                Err(OutputError::OutExists {
                    path: path.to_owned(),
                })
            } else {
                Ok(())
            }
        }
    }
}

fn io(action: &'static str, path: &Path, source: std::io::Error) -> OutputError {
    OutputError::Io {
        action,
        path: path.to_owned(),
        source,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn image_names_follow_make_disk_image() {
        assert_eq!(image_file_name("nixos", ImageFormat::Raw), "nixos.img");
        assert_eq!(
            image_file_name("nixos", ImageFormat::Qcow2Zstd),
            "nixos.qcow2"
        );
        assert_eq!(image_file_name("azure", ImageFormat::Vpc), "azure.vhd");
    }

    #[test]
    fn build_product_lines_use_the_qemu_format() {
        let out = Path::new("/r/nixos.qcow2");
        assert_eq!(
            hydra_build_product_line(ImageFormat::Qcow2Compressed, out),
            "file qcow2-image /r/nixos.qcow2\n"
        );
        assert_eq!(
            hydra_build_product_line(ImageFormat::Raw, Path::new("/r/nixos.img")),
            "file raw-image /r/nixos.img\n"
        );
        assert_eq!(
            hydra_build_product_line(ImageFormat::Vpc, Path::new("/r/nixos.vhd")),
            "file vpc-image /r/nixos.vhd\n"
        );
    }
}
