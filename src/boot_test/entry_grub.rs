//! `--entry N` for GRUB: a one-shot `next_entry` in GRUB's environment block.
//!
//! NixOS's grub.cfg (and the example system's) loads `$prefix/grubenv` and
//! boots `next_entry` once when it is set, as `grub-reboot` arranges. The
//! file system holding `grub/grub.cfg` (the root's `/boot`, or a /boot
//! partition) is copied out of the throwaway overlay, `grubenv` is written
//! into it (debugfs for ext2/3/4, mtools for FAT), and the changed chunks go
//! back into the overlay; the image itself is never touched.
//!
//! Entry N is the menu entry with id `nixos-generation-N` when grub.cfg has
//! one, else the N-th menu entry (GRUB counts from 0, so `N-1`).

use std::ffi::OsStr;
use std::path::Path;

use super::BootError;
use super::entry::{dd, mtool, read, write_back};
use super::probe::{self, HEAD_BYTES};
use super::run::tool;
use crate::qemu::RunDir;

/// The size of a GRUB environment block.
pub const GRUBENV_SIZE: usize = 1024;

/// A GRUB environment block holding `vars`, padded with `#` as
/// `grub-editenv` writes it.
pub fn grubenv(vars: &[(&str, &str)]) -> Vec<u8> {
    let mut block = b"# GRUB Environment Block\n".to_vec();
    for (key, value) in vars {
        block.extend_from_slice(format!("{key}={value}\n").as_bytes());
    }
    block.resize(GRUBENV_SIZE.max(block.len()), b'#');
    block
}

/// The menu entries of a grub.cfg, in order: each one's `--id` if it has
/// one, else its title.
pub fn menu_entries(cfg: &str) -> Vec<String> {
    cfg.lines()
        .map(str::trim_start)
        .filter(|line| line.starts_with("menuentry "))
        .map(|line| {
            let words: Vec<&str> = line.split_whitespace().collect();
            match words.iter().position(|w| *w == "--id") {
                Some(i) if i + 1 < words.len() => words[i + 1].trim_matches(['"', '\'']).to_owned(),
                _ => line
                    .split(['"', '\''])
                    .nth(1)
                    .unwrap_or_default()
                    .to_owned(),
            }
        })
        .collect()
}

/// The `next_entry` value that boots entry `n` of `entries`.
pub fn pick_grub_entry(entries: &[String], n: u32) -> Option<String> {
    let generation = format!("nixos-generation-{n}");
    if entries.contains(&generation) {
        return Some(generation);
    }
    let index = usize::try_from(n).ok()?.checked_sub(1)?;
    (index < entries.len()).then(|| index.to_string())
}

/// The file system of a partition's first bytes: ext2/3/4 or FAT.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum FsKind {
    /// ext2, ext3 or ext4 (superblock magic 0xEF53 at 1080).
    Ext,
    /// FAT12/16/32 (a boot sector naming FAT).
    Fat,
}

/// Which file system `head` (at least 2 KiB of a partition) starts.
pub fn fs_kind(head: &[u8]) -> Option<FsKind> {
    if head.len() >= 1082 && head[1080..1082] == [0x53, 0xef] {
        return Some(FsKind::Ext);
    }
    let fat = |at: usize| head.get(at..at + 3) == Some(b"FAT");
    (head.len() >= 512 && head[510..512] == [0x55, 0xaa] && (fat(54) || fat(82)))
        .then_some(FsKind::Fat)
}

/// The partitions of a disk from its first bytes: GPT entries, else the
/// used MBR entries, as (start, size) in bytes.
pub fn partitions(head: &[u8]) -> Vec<(u64, u64)> {
    let gpt = probe::gpt_entries(head);
    if !gpt.is_empty() {
        return gpt.iter().map(|e| (e.start, e.size)).collect();
    }
    if head.len() < 512 || head[510..512] != [0x55, 0xaa] {
        return Vec::new();
    }
    (0..4)
        .map(|i| &head[446 + 16 * i..446 + 16 * (i + 1)])
        .filter(|entry| entry[4] != 0)
        .map(|entry| {
            let word = |at: usize| {
                u32::from_le_bytes([entry[at], entry[at + 1], entry[at + 2], entry[at + 3]])
            };
            (u64::from(word(8)) * 512, u64::from(word(12)) * 512)
        })
        .filter(|(_, size)| *size > 0)
        .collect()
}

/// Makes GRUB on `overlay` (qcow2) boot entry `n` once.
pub(super) async fn select_on_overlay(
    qemu_img: &Path,
    overlay: &Path,
    n: u32,
    run: &RunDir,
) -> Result<(), BootError> {
    let entry_error = |reason: String| BootError::Entry { entry: n, reason };
    let head_path = run.join("grub-head.raw");
    dd(qemu_img, overlay, 0, HEAD_BYTES as u64, &head_path).await?;
    let head = read(&head_path)?;
    for (index, (start, size)) in partitions(&head).into_iter().enumerate() {
        let part_head = run.join(&format!("grub-part-{index}.head"));
        let probe_len = size.min(64 * 1024);
        dd(qemu_img, overlay, start, probe_len, &part_head).await?;
        let Some(kind) = fs_kind(&read(&part_head)?) else {
            continue;
        };
        let fs = run.join(&format!("grub-part-{index}.raw"));
        dd(qemu_img, overlay, start, size, &fs).await?;
        let Some((dir, cfg)) = find_grub_cfg(kind, &fs).await else {
            continue;
        };
        let entries = menu_entries(&cfg);
        let chosen = pick_grub_entry(&entries, n).ok_or_else(|| {
            entry_error(format!(
                "{dir}/grub.cfg has the menu entries [{}]; entry {n} is neither nixos-generation-{n} nor within their count",
                entries.join(", ")
            ))
        })?;
        tracing::info!(entry = %chosen, "selecting the GRUB entry (next_entry in {dir}/grubenv)");
        let original = run.join(&format!("grub-part-{index}.orig"));
        std::fs::copy(&fs, &original).map_err(|source| BootError::Image {
            path: original.clone(),
            source,
        })?;
        let env = run.join("grubenv");
        std::fs::write(&env, grubenv(&[("next_entry", &chosen)])).map_err(|source| {
            BootError::Image {
                path: env.clone(),
                source,
            }
        })?;
        write_grubenv(kind, &fs, &env, &format!("{dir}/grubenv")).await?;
        return write_back(qemu_img, overlay, &original, &fs, start, run).await;
    }
    Err(entry_error(
        "no partition holds grub/grub.cfg or boot/grub/grub.cfg: is the bootloader GRUB?".into(),
    ))
}

/// The GRUB directory (`/boot/grub` or `/grub`) of the file system in `fs`
/// and its grub.cfg.
async fn find_grub_cfg(kind: FsKind, fs: &Path) -> Option<(&'static str, String)> {
    for dir in ["/boot/grub", "/grub"] {
        let cfg = format!("{dir}/grub.cfg");
        let text = match kind {
            FsKind::Ext => debugfs(fs, false, &format!("cat {cfg}")).await,
            FsKind::Fat => {
                let path = format!("::{cfg}");
                mtool("mtype", &["-i".as_ref(), fs.as_os_str(), path.as_ref()]).await
            }
        };
        match text {
            Ok(text) if text.contains("menuentry") => return Some((dir, text)),
            _ => {}
        }
    }
    None
}

/// Replaces `target` in the file system in `fs` with the host file `env`.
async fn write_grubenv(kind: FsKind, fs: &Path, env: &Path, target: &str) -> Result<(), BootError> {
    match kind {
        FsKind::Ext => {
            // debugfs's write refuses an existing name; the rm may find none.
            let _ = debugfs(fs, true, &format!("rm {target}")).await;
            debugfs(fs, true, &format!("write {} {target}", env.display())).await?;
            let listed = debugfs(fs, false, &format!("stat {target}")).await?;
            if !listed.contains(&format!("Size: {GRUBENV_SIZE}")) {
                return Err(BootError::Tool {
                    command: format!("debugfs -w -R 'write {} {target}'", env.display()),
                    message: format!("{target} was not written:\n{listed}"),
                });
            }
            Ok(())
        }
        FsKind::Fat => {
            let path = format!("::{target}");
            mtool(
                "mcopy",
                &[
                    "-o".as_ref(),
                    "-i".as_ref(),
                    fs.as_os_str(),
                    env.as_os_str(),
                    path.as_ref(),
                ],
            )
            .await
            .map(drop)
        }
    }
}

/// Runs one debugfs request on the file system image `fs`.
async fn debugfs(fs: &Path, write: bool, request: &str) -> Result<String, BootError> {
    let mut args: Vec<&OsStr> = Vec::new();
    if write {
        args.push("-w".as_ref());
    }
    args.extend(["-R".as_ref(), request.as_ref(), fs.as_os_str()]);
    tool(Path::new("debugfs"), &args).await
}

#[cfg(test)]
mod tests {
    use super::*;

    const CFG: &str = "set default=nixos-generation-2\n\
        menuentry \"NixOS - Configuration 1\" --id nixos-generation-1 {\n  linux /k\n}\n\
        menuentry \"NixOS - Configuration 2\" --id nixos-generation-2 {\n}\n\
        menuentry 'Plain' {\n}\n";

    #[test]
    fn entries_by_generation_id_else_position() {
        let entries = menu_entries(CFG);
        assert_eq!(
            entries,
            ["nixos-generation-1", "nixos-generation-2", "Plain"]
        );
        assert_eq!(
            pick_grub_entry(&entries, 1).as_deref(),
            Some("nixos-generation-1")
        );
        assert_eq!(pick_grub_entry(&entries, 3).as_deref(), Some("2"));
        assert_eq!(pick_grub_entry(&entries, 4), None);
        assert_eq!(pick_grub_entry(&entries, 0), None);
    }

    #[test]
    fn the_environment_block_is_one_kib_of_padding() {
        let block = grubenv(&[("next_entry", "nixos-generation-1")]);
        assert_eq!(block.len(), GRUBENV_SIZE);
        let text = String::from_utf8(block).expect("ASCII");
        assert!(text.starts_with("# GRUB Environment Block\nnext_entry=nixos-generation-1\n#"));
        assert!(text.trim_end_matches('#').ends_with('\n'));
    }

    #[test]
    fn file_systems_and_mbr_partitions_are_recognised() {
        let mut ext = vec![0u8; 2048];
        ext[1080..1082].copy_from_slice(&[0x53, 0xef]);
        assert_eq!(fs_kind(&ext), Some(FsKind::Ext));
        let mut fat = vec![0u8; 512];
        fat[82..87].copy_from_slice(b"FAT32");
        fat[510..512].copy_from_slice(&[0x55, 0xaa]);
        assert_eq!(fs_kind(&fat), Some(FsKind::Fat));
        assert_eq!(fs_kind(&[0u8; 4096]), None);
        let mut mbr = vec![0u8; 512];
        mbr[510..512].copy_from_slice(&[0x55, 0xaa]);
        let entry = &mut mbr[446..462];
        entry[4] = 0x83;
        entry[8..12].copy_from_slice(&2048u32.to_le_bytes());
        entry[12..16].copy_from_slice(&4096u32.to_le_bytes());
        assert_eq!(partitions(&mbr), [(2048 * 512, 4096 * 512)]);
    }
}
