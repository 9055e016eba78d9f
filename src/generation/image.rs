//! The working copy of an image being changed: a raw disk in a private
//! directory beside the image (a reflink copy of a raw image where the file
//! system allows, a `qemu-img convert` of any other format), converted back
//! to the image's format and renamed over the original only when every step
//! succeeded. Dropping a [`WorkingCopy`] removes the directory, so a failure
//! leaves the original untouched and nothing beside it.

use std::path::{Path, PathBuf};
use std::process::Command;

use super::GenerationError;
use crate::boot_test::ImageFormat;
use crate::interrupt::{DirGuard, run_output};
use crate::spec;

/// A raw copy of an image, in a temporary directory beside it.
pub struct WorkingCopy {
    image: PathBuf,
    format: ImageFormat,
    raw: PathBuf,
    // Dropped before `dir`: after a signal nixdisk removes the directory
    // itself if this copy did not unwind in time.
    _guard: DirGuard,
    dir: tempfile::TempDir,
}

impl WorkingCopy {
    /// Checks `image` is a disk image nixdisk writes and makes the raw copy.
    pub fn create(image: &Path) -> Result<WorkingCopy, GenerationError> {
        let not_an_image = |reason: String| GenerationError::NotAnImage {
            path: image.to_owned(),
            reason,
        };
        let metadata = std::fs::metadata(image).map_err(|e| not_an_image(e.to_string()))?;
        if !metadata.is_file() {
            return Err(not_an_image("it is not a regular file".into()));
        }
        let format = image_format(image).map_err(not_an_image)?;
        let parent = match image.parent() {
            Some(dir) if !dir.as_os_str().is_empty() => dir.to_owned(),
            _ => PathBuf::from("."),
        };
        // Beside the image, so the final rename stays on one file system.
        let dir = tempfile::Builder::new()
            .prefix(".nixdisk-generation-")
            .tempdir_in(&parent)
            .map_err(|source| GenerationError::Io {
                what: "could not create a working directory in",
                path: parent.clone(),
                source,
            })?;
        let guard = DirGuard::register(dir.path());
        let raw = dir.path().join("disk.raw");
        let mut copy = Command::new(if format == ImageFormat::Raw {
            "cp"
        } else {
            "qemu-img"
        });
        if format == ImageFormat::Raw {
            copy.args(["--reflink=auto", "--sparse=always"]);
        } else {
            copy.args(["convert", "-q", "-f", format.as_str(), "-O", "raw"]);
        }
        copy.arg(image).arg(&raw);
        run_tool(&mut copy, "copy the image")?;
        Ok(WorkingCopy {
            image: image.to_owned(),
            format,
            raw,
            _guard: guard,
            dir,
        })
    }

    /// The raw disk the builder VM works on.
    pub fn raw(&self) -> &Path {
        &self.raw
    }

    /// The private directory (removed on drop), for other scratch files.
    pub fn dir(&self) -> &Path {
        self.dir.path()
    }

    /// The image's format.
    pub fn format(&self) -> ImageFormat {
        self.format
    }

    /// Converts the raw copy back to the image's format (with the options
    /// `nixdisk build` writes it with) and renames it over the image, keeping
    /// the image's permissions.
    pub fn replace_original(self) -> Result<(), GenerationError> {
        let result = self
            .dir
            .path()
            .join(format!("result.{}", self.format.as_str()));
        let spinner =
            crate::progress::spinner(format!("writing the {} image", self.format.as_str()));
        let converted =
            crate::convert::convert(output_format(self.format), &self.raw, &result, false);
        spinner.finish_and_clear();
        converted?;
        let io = |what: &'static str, path: &Path| {
            let path = path.to_owned();
            move |source| GenerationError::Io { what, path, source }
        };
        let permissions = std::fs::metadata(&self.image)
            .map_err(io("could not read the permissions of", &self.image))?
            .permissions();
        std::fs::set_permissions(&result, permissions)
            .map_err(io("could not set the permissions of", &result))?;
        std::fs::rename(&result, &self.image)
            .map_err(io("could not replace the image", &self.image))?;
        Ok(())
    }
}

/// The format `qemu-img info` sees, if nixdisk writes it.
fn image_format(image: &Path) -> Result<ImageFormat, String> {
    let output = Command::new("qemu-img")
        .args(["info", "--output=json"])
        .arg(image)
        .output()
        .map_err(|e| format!("qemu-img cannot run: {e}"))?;
    if !output.status.success() {
        return Err(crate::host_tool::stderr_tail(&output.stderr, 5));
    }
    let name = crate::boot_test::probe::format_from_info(&String::from_utf8_lossy(&output.stdout))?;
    ImageFormat::from_name(&name).ok_or_else(|| {
        format!(
            "its format is {name}; nixdisk writes {}",
            ImageFormat::ALL.map(ImageFormat::as_str).join(", ")
        )
    })
}

/// How `nixdisk build` writes `format`.
fn output_format(format: ImageFormat) -> spec::ImageFormat {
    match format {
        ImageFormat::Raw => spec::ImageFormat::Raw,
        ImageFormat::Qcow2 => spec::ImageFormat::Qcow2,
        ImageFormat::Vdi => spec::ImageFormat::Vdi,
        ImageFormat::Vpc => spec::ImageFormat::Vpc,
        ImageFormat::Vmdk => spec::ImageFormat::Vmdk,
        ImageFormat::Vhdx => spec::ImageFormat::Vhdx,
    }
}

fn run_tool(cmd: &mut Command, what: &'static str) -> Result<(), GenerationError> {
    // Through the interrupt registry: a signal kills it at once.
    let output = run_output(cmd).map_err(|source| GenerationError::Tool {
        what,
        command: format!("{cmd:?}"),
        detail: source.to_string(),
    })?;
    if output.status.success() {
        return Ok(());
    }
    Err(GenerationError::Tool {
        what,
        command: format!("{cmd:?}"),
        detail: format!(
            "{}: {}",
            output.status,
            crate::host_tool::stderr_tail(&output.stderr, 10)
        ),
    })
}
