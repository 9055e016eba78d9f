//! Conversion of the raw image to the output format with qemu-img.
//!
//! [`convert_plan`] decides what to do (a rename for raw, a `qemu-img convert`
//! argv for the others) and [`convert`] carries it out. The argv follows
//! nixpkgs' make-disk-image (`qemu-img convert -f raw -O <format> [-c]`), with
//! these additions: `qcow2-zstd` (`-c -o compression_type=zstd`), vmdk and
//! vhdx, and a fixed-size VHD for `vpc` as Azure requires it (nixpkgs' Azure
//! module does that conversion itself in its postVM).

use std::ffi::OsString;
use std::path::{Path, PathBuf};
use std::process::Command;

use thiserror::Error;

use crate::host_tool::{command_line, stderr_tail};
use crate::spec::ImageFormat;

/// The program run for conversions.
pub const QEMU_IMG: &str = "qemu-img";

/// How many trailing lines of a failed command's stderr an error carries.
const STDERR_TAIL_LINES: usize = 20;

/// What went wrong while converting the image.
#[derive(Debug, Error)]
pub enum ConvertError {
    /// qemu-img could not be started at all.
    #[error("could not run `{program}`: {source}\nhint: install qemu-utils (it provides qemu-img)")]
    Spawn {
        /// The program that failed to start.
        program: String,
        /// The error from the operating system.
        source: std::io::Error,
    },
    /// qemu-img ran and failed.
    #[error("`{command}` failed ({status}):\n{stderr}")]
    Failed {
        /// The whole command line, for the user to rerun.
        command: String,
        /// How it ended.
        status: std::process::ExitStatus,
        /// The tail of its standard error.
        stderr: String,
    },
    /// Moving the raw image into place failed.
    #[error("could not move the raw image {from} to {to}: {source}")]
    Rename {
        /// The raw image.
        from: PathBuf,
        /// Where it should have gone.
        to: PathBuf,
        /// The error from the operating system.
        source: std::io::Error,
    },
}

/// What turning the raw image into the output file takes.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ConvertPlan {
    /// The output is raw: the image only moves (same file system, no copy).
    Rename {
        /// The raw image.
        from: PathBuf,
        /// The output file.
        to: PathBuf,
    },
    /// Run `qemu-img` with these arguments.
    QemuImg {
        /// Arguments after the program name.
        args: Vec<OsString>,
    },
}

/// The `-o` creation options qemu-img gets for a format, if any.
pub fn creation_options(format: ImageFormat) -> Option<&'static str> {
    match format {
        ImageFormat::Qcow2Zstd => Some("compression_type=zstd"),
        // Azure takes only fixed VHDs whose size is exactly the disk's;
        // without force_size qemu-img rounds the size to a CHS geometry.
        ImageFormat::Vpc => Some("subformat=fixed,force_size=on"),
        _ => None,
    }
}

/// Plans the conversion of the raw image `raw` to `dest` in `format`.
///
/// `deterministic` rules out `-W` (out-of-order writes): with it, qemu-img
/// allocates clusters in whatever order its coroutines finish, so two runs
/// give different bytes. Without determinism `-W` lets compression run on
/// every core.
pub fn convert_plan(
    format: ImageFormat,
    raw: &Path,
    dest: &Path,
    deterministic: bool,
) -> ConvertPlan {
    if format == ImageFormat::Raw {
        return ConvertPlan::Rename {
            from: raw.to_owned(),
            to: dest.to_owned(),
        };
    }
    let mut args: Vec<OsString> = ["convert", "-q", "-f", "raw", "-O", format.qemu_img_format()]
        .into_iter()
        .map(OsString::from)
        .collect();
    if matches!(
        format,
        ImageFormat::Qcow2Compressed | ImageFormat::Qcow2Zstd
    ) {
        args.push("-c".into());
    }
    if let Some(options) = creation_options(format) {
        args.push("-o".into());
        args.push(options.into());
    }
    if !deterministic {
        args.push("-W".into());
    }
    args.push(raw.as_os_str().to_owned());
    args.push(dest.as_os_str().to_owned());
    ConvertPlan::QemuImg { args }
}

/// Converts the raw image `raw` into `dest` in `format`.
///
/// For raw output the image is renamed; otherwise `raw` is left in place for
/// the caller to remove (it may still want it, e.g. for a comparison).
pub fn convert(
    format: ImageFormat,
    raw: &Path,
    dest: &Path,
    deterministic: bool,
) -> Result<(), ConvertError> {
    match convert_plan(format, raw, dest, deterministic) {
        ConvertPlan::Rename { from, to } => {
            tracing::debug!(from = %from.display(), to = %to.display(), "raw output: renaming");
            std::fs::rename(&from, &to).map_err(|source| ConvertError::Rename { from, to, source })
        }
        ConvertPlan::QemuImg { args } => {
            tracing::info!(format = format.qemu_img_format(), dest = %dest.display(), "converting the image");
            run_qemu_img(&args)
        }
    }
}

/// Runs qemu-img with `args`, turning a failure into an error carrying its stderr.
fn run_qemu_img(args: &[OsString]) -> Result<(), ConvertError> {
    let output =
        crate::interrupt::run_output(Command::new(QEMU_IMG).args(args)).map_err(|source| {
            ConvertError::Spawn {
                program: QEMU_IMG.to_owned(),
                source,
            }
        })?;
    if output.status.success() {
        return Ok(());
    }
    Err(ConvertError::Failed {
        command: command_line(QEMU_IMG, args),
        status: output.status,
        stderr: stderr_tail(&output.stderr, STDERR_TAIL_LINES),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn args(format: ImageFormat, deterministic: bool) -> Vec<String> {
        match convert_plan(
            format,
            Path::new("/t/nixos.raw"),
            Path::new("/o/x"),
            deterministic,
        ) {
            ConvertPlan::QemuImg { args } => args
                .iter()
                .map(|a| a.to_string_lossy().into_owned())
                .collect(),
            ConvertPlan::Rename { .. } => panic!("{format:?} should convert"),
        }
    }

    #[test]
    fn raw_is_a_rename() {
        assert_eq!(
            convert_plan(ImageFormat::Raw, Path::new("/t/a"), Path::new("/o/b"), true),
            ConvertPlan::Rename {
                from: "/t/a".into(),
                to: "/o/b".into()
            }
        );
    }

    #[test]
    fn argv_per_format() {
        let base = "convert -q -f raw -O";
        let cases = [
            (
                ImageFormat::Qcow2,
                format!("{base} qcow2 /t/nixos.raw /o/x"),
            ),
            (
                ImageFormat::Qcow2Compressed,
                format!("{base} qcow2 -c /t/nixos.raw /o/x"),
            ),
            (
                ImageFormat::Qcow2Zstd,
                format!("{base} qcow2 -c -o compression_type=zstd /t/nixos.raw /o/x"),
            ),
            (ImageFormat::Vdi, format!("{base} vdi /t/nixos.raw /o/x")),
            (
                ImageFormat::Vpc,
                format!("{base} vpc -o subformat=fixed,force_size=on /t/nixos.raw /o/x"),
            ),
            (ImageFormat::Vmdk, format!("{base} vmdk /t/nixos.raw /o/x")),
            (ImageFormat::Vhdx, format!("{base} vhdx /t/nixos.raw /o/x")),
        ];
        for (format, expected) in cases {
            assert_eq!(args(format, true).join(" "), expected, "{format:?}");
        }
    }

    #[test]
    fn out_of_order_writes_only_when_not_deterministic() {
        assert!(!args(ImageFormat::Qcow2Zstd, true).contains(&"-W".to_owned()));
        assert_eq!(
            args(ImageFormat::Qcow2Zstd, false).join(" "),
            "convert -q -f raw -O qcow2 -c -o compression_type=zstd -W /t/nixos.raw /o/x"
        );
    }
}
