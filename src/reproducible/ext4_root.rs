//! Fixed times in a deterministic full image's ext4 root, set on the host
//! after the builder VM is gone.
//!
//! The guest kernel stamps every inode it creates or changes with its own
//! clock (ctime, crtime, atime; mtime of what the bootloader writes) and the
//! superblock with its mount and write times; none of that can be the same
//! in two builds. Afterwards, `debugfs -w` on the image (at the root's
//! offset) sets each used inode's four times (and its random generation)
//! to one fixed instant, `e2fsck -fy` rewrites the checksums seeded by the
//! old generations, the journal is recreated empty, and the superblock's
//! times are set last.

use std::fmt::Write as _;
use std::path::Path;
use std::process::Command;

use super::TimesError;
use crate::reproducible::ext4_inodes;

/// The instant every time is set to: the store's canonical mtime.
pub const FIXED_TIME: u64 = 1;

/// The debugfs script setting the times (and the generation) of `inodes`
/// to `timestamp`.
pub fn inodes_script(inodes: &[u32], timestamp: u64) -> String {
    let mut script = String::with_capacity(inodes.len() * 200);
    for inode in inodes {
        for field in ["ctime", "atime", "mtime", "crtime"] {
            // The extra word holds the nanoseconds (and epoch bits).
            let _ = writeln!(
                script,
                "sif <{inode}> {field} @{timestamp}\nsif <{inode}> {field}_extra 0"
            );
        }
        // The kernel gives each new inode a random generation number.
        let _ = writeln!(script, "sif <{inode}> generation 0");
    }
    script
}

/// The debugfs script setting the superblock's times to `timestamp`.
pub fn superblock_script(timestamp: u64) -> String {
    let mut script = String::new();
    for field in ["mtime", "wtime", "lastcheck"] {
        let _ = writeln!(script, "ssv {field} @{timestamp}");
    }
    script.push_str("ssv kbytes_written 0\n");
    script
}

/// Sets the times of the ext4 file system at byte `offset` of `raw`: the
/// inodes' (with debugfs), then the checksums that covered the old
/// generations (directory and extent blocks: `e2fsck -fy`), then the
/// superblock's.
pub fn fix_ext4_times(raw: &Path, offset: u64, work: &Path) -> Result<(), TimesError> {
    let inodes = ext4_inodes::used_inodes(raw, offset).map_err(|e| TimesError::Times {
        detail: e.to_string(),
    })?;
    let device = format!("{}?offset={offset}", raw.display());
    tracing::debug!(inodes = inodes.len(), "fixing the root's ext4 times");
    debugfs(&device, &inodes_script(&inodes, FIXED_TIME), work)?;
    let output = crate::interrupt::run_output(
        Command::new("e2fsck")
            .args(["-fy", &device])
            .env("E2FSPROGS_FAKE_TIME", FIXED_TIME.to_string()),
    )
    .map_err(super::io("could not run e2fsck on", raw))?;
    // 0: clean, 1: errors corrected (the checksums, as intended).
    if !matches!(output.status.code(), Some(0 | 1)) {
        return Err(TimesError::Times {
            detail: format!(
                "e2fsck -fy {device} ({}): {}",
                output.status,
                String::from_utf8_lossy(&output.stdout)
            ),
        });
    }
    recreate_journal(&device, raw)?;
    debugfs(&device, &superblock_script(FIXED_TIME), work)
}

/// Replaces the journal by an empty one of the same size: after a clean
/// unmount its old transactions are dead, but they are still bytes that
/// depend on when the guest committed.
fn recreate_journal(device: &str, raw: &Path) -> Result<(), TimesError> {
    let tool = |program: &str, args: &[&str]| -> Result<String, TimesError> {
        let output = crate::interrupt::run_output(
            Command::new(program)
                .args(args)
                .arg(device)
                .env("E2FSPROGS_FAKE_TIME", FIXED_TIME.to_string()),
        )
        .map_err(super::io("could not run e2fsprogs on", raw))?;
        if !output.status.success() {
            return Err(TimesError::Times {
                detail: format!(
                    "{program} {} {device} ({}): {}",
                    args.join(" "),
                    output.status,
                    String::from_utf8_lossy(&output.stderr).trim()
                ),
            });
        }
        Ok(String::from_utf8_lossy(&output.stdout).into_owned())
    };
    let header = tool("dumpe2fs", &["-h"])?;
    let Some(kib) = journal_kib(&header) else {
        return Ok(()); // ext2: no journal
    };
    let size = format!("size={}", kib.div_ceil(1024));
    tool("tune2fs", &["-O", "^has_journal"])?;
    tool("tune2fs", &["-J", &size])?;
    Ok(())
}

/// The journal's size from `dumpe2fs -h` ("Total journal size: 4096k").
fn journal_kib(header: &str) -> Option<u64> {
    let line = header
        .lines()
        .find(|l| l.starts_with("Total journal size:"))?;
    let value = line.split(':').nth(1)?.trim();
    match value.strip_suffix('k') {
        Some(k) => k.parse().ok(),
        None => value
            .strip_suffix('M')?
            .parse::<u64>()
            .ok()
            .map(|m| m * 1024),
    }
}

fn debugfs(device: &str, script: &str, work: &Path) -> Result<(), TimesError> {
    let script_file = work.join("times.debugfs");
    std::fs::write(&script_file, script).map_err(super::io("could not write", &script_file))?;
    let output = crate::interrupt::run_output(
        Command::new("debugfs")
            .arg("-w")
            .arg("-f")
            .arg(&script_file)
            .arg(device)
            // debugfs stamps the superblock's write time when it closes.
            .env("E2FSPROGS_FAKE_TIME", FIXED_TIME.to_string()),
    )
    .map_err(super::io("could not run debugfs for", &script_file))?;
    // debugfs exits 0 even when a command fails; it says so on stderr, where
    // otherwise only its version banner goes.
    let stderr = String::from_utf8_lossy(&output.stderr);
    let complaints: Vec<&str> = stderr
        .lines()
        .filter(|l| !l.starts_with("debugfs "))
        .collect();
    if !output.status.success() || !complaints.is_empty() {
        return Err(TimesError::Times {
            detail: format!("debugfs -w {device}: {}", complaints.join("\n")),
        });
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_time_and_the_generation_of_every_inode() {
        assert_eq!(
            inodes_script(&[2, 11], 1),
            "sif <2> ctime @1\nsif <2> ctime_extra 0\nsif <2> atime @1\nsif <2> atime_extra 0\n\
             sif <2> mtime @1\nsif <2> mtime_extra 0\nsif <2> crtime @1\nsif <2> crtime_extra 0\n\
             sif <2> generation 0\n\
             sif <11> ctime @1\nsif <11> ctime_extra 0\nsif <11> atime @1\nsif <11> atime_extra 0\n\
             sif <11> mtime @1\nsif <11> mtime_extra 0\nsif <11> crtime @1\nsif <11> crtime_extra 0\n\
             sif <11> generation 0\n"
        );
    }

    #[test]
    fn journal_size_from_dumpe2fs() {
        let header = "Journal inode:            8\nTotal journal size:       4096k\n";
        assert_eq!(journal_kib(header), Some(4096));
        assert_eq!(journal_kib("Total journal size:       64M\n"), Some(65536));
        assert_eq!(journal_kib("Inode count: 5\n"), None);
    }

    #[test]
    fn the_superblock_times() {
        assert_eq!(
            superblock_script(1),
            "ssv mtime @1\nssv wtime @1\nssv lastcheck @1\nssv kbytes_written 0\n"
        );
    }
}
