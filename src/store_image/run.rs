//! Carrying out a [`Step`] list: the thin, effectful half of the store image.

use std::fs::{self, OpenOptions};
use std::io::{Read, Seek, SeekFrom};
use std::path::Path;
use std::process::Command;

use super::StoreImageError;
use super::plan::{Region, Step, ToolCommand};
use crate::host_tool::{command_line, stderr_tail};
use crate::reproducible::ext4_inodes;

const STDERR_TAIL_LINES: usize = 20;

/// Runs `steps` in order, stopping at the first failure.
pub fn run_steps(steps: &[Step]) -> Result<(), StoreImageError> {
    for step in steps {
        run_step(step)?;
    }
    Ok(())
}

fn run_step(step: &Step) -> Result<(), StoreImageError> {
    match step {
        Step::EnsureImageLength { image, len } => ensure_length(image, *len),
        Step::Run(command) => run_tool(command).map(|_| ()),
        Step::FixExt4Times {
            image,
            offset,
            timestamp,
        } => fix_ext4_times(image, *offset, *timestamp),
        Step::SettleAccessTimes { roots } => {
            roots.iter().try_for_each(|root| settle_access_times(root))
        }
        Step::CopyIntoRegion {
            from,
            image,
            region,
        } => copy_into_region(from, image, *region),
    }
}

/// Reads every file and symlink under `path` once (see
/// [`Step::SettleAccessTimes`]): with relatime, the first read after a
/// change of the inode moves its atime, later ones do not.
fn settle_access_times(path: &Path) -> Result<(), StoreImageError> {
    let meta = fs::symlink_metadata(path).map_err(|e| io("could not read", path, e))?;
    if meta.is_dir() {
        for entry in fs::read_dir(path).map_err(|e| io("could not list", path, e))? {
            let entry = entry.map_err(|e| io("could not list", path, e))?;
            settle_access_times(&entry.path())?;
        }
    } else if meta.is_symlink() {
        fs::read_link(path).map_err(|e| io("could not read the symlink", path, e))?;
    } else if meta.is_file() {
        let mut byte = [0u8; 1];
        fs::File::open(path)
            .and_then(|mut file| file.read(&mut byte))
            .map_err(|e| io("could not read", path, e))?;
    }
    Ok(())
}

fn ensure_length(image: &Path, len: u64) -> Result<(), StoreImageError> {
    let file = OpenOptions::new()
        .create(true)
        .truncate(false)
        .write(true)
        .open(image)
        .map_err(|e| io("could not open the image", image, e))?;
    let current = file
        .metadata()
        .map_err(|e| io("could not inspect", image, e))?
        .len();
    if current < len {
        file.set_len(len)
            .map_err(|e| io("could not extend the image", image, e))?;
    }
    Ok(())
}

/// Runs a tool to its end; a failure carries the tail of its stderr.
fn run_tool(command: &ToolCommand) -> Result<std::process::Output, StoreImageError> {
    let line = command_line(command.program, &command.args);
    tracing::debug!(command = %line, env = ?command.env, "running");
    let output = crate::interrupt::run_output(
        Command::new(command.program)
            .args(&command.args)
            .envs(command.env.iter().map(|(k, v)| (k, v))),
    )
    .map_err(|source| StoreImageError::ToolMissing {
        program: command.program,
        source,
    })?;
    if output.status.success() {
        return Ok(output);
    }
    Err(StoreImageError::ToolFailed {
        command: line,
        status: output.status,
        stderr: stderr_tail(&output.stderr, STDERR_TAIL_LINES),
    })
}

fn fix_ext4_times(image: &Path, offset: u64, timestamp: u64) -> Result<(), StoreImageError> {
    let inodes = ext4_inodes::used_inodes(image, offset)?;
    let script_file = tempfile::NamedTempFile::new().map_err(|e| {
        io(
            "could not create a temporary file in",
            &std::env::temp_dir(),
            e,
        )
    })?;
    fs::write(
        script_file.path(),
        ext4_inodes::times_script(&inodes, timestamp),
    )
    .map_err(|e| io("could not write", script_file.path(), e))?;
    let device = format!("{}?offset={offset}", image.display());
    let command = ToolCommand {
        program: "debugfs",
        args: vec![
            "-w".into(),
            "-f".into(),
            script_file.path().into(),
            device.into(),
        ],
        env: Vec::new(),
    };
    tracing::debug!(inodes = inodes.len(), "fixing ext4 ctimes and atimes");
    let output = run_tool(&command)?;
    // debugfs exits 0 even when a command fails; it says so on stderr, where
    // otherwise only its version banner goes.
    let stderr = String::from_utf8_lossy(&output.stderr);
    let complaints: Vec<&str> = stderr
        .lines()
        .filter(|l| !l.starts_with("debugfs "))
        .collect();
    if !complaints.is_empty() {
        return Err(StoreImageError::ToolFailed {
            command: command_line(command.program, &command.args),
            status: output.status,
            stderr: complaints.join("\n"),
        });
    }
    Ok(())
}

fn copy_into_region(from: &Path, image: &Path, region: Region) -> Result<(), StoreImageError> {
    let mut source = fs::File::open(from).map_err(|e| io("could not open", from, e))?;
    let size = source
        .metadata()
        .map_err(|e| io("could not inspect", from, e))?
        .len();
    if size > region.size {
        return Err(StoreImageError::TooSmall {
            needed: size,
            region,
        });
    }
    let mut dest = OpenOptions::new()
        .write(true)
        .open(image)
        .map_err(|e| io("could not open the image", image, e))?;
    dest.seek(SeekFrom::Start(region.offset))
        .map_err(|e| io("could not seek in", image, e))?;
    // std uses copy_file_range here: no copy through user space, and a
    // reflink on file systems that have them.
    std::io::copy(&mut source, &mut dest)
        .map_err(|e| io("could not copy the file system into", image, e))?;
    Ok(())
}

fn io(action: &'static str, path: &Path, source: std::io::Error) -> StoreImageError {
    StoreImageError::Io {
        action,
        path: path.to_owned(),
        source,
    }
}
