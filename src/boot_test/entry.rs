//! `--entry N`: boot a chosen entry instead of the default. On SeaBIOS the
//! bootloader is GRUB ([`super::entry_grub`]); on OVMF, systemd-boot (this
//! module), or GRUB for EFI when the ESP has no systemd-boot entries.
//!
//! The choice is written where systemd-boot reads it, on the throwaway
//! overlay only: `default <entry>` in the ESP's `loader/loader.conf`. The ESP
//! is copied out of the overlay (`qemu-img dd`), edited with mtools (the host
//! may have no vfat driver), and the changed 64 KiB chunks are written back
//! into the overlay with `qemu-io`; the image itself is never touched.
//!
//! Entry N is `loader/entries/nixos-generation-N.conf` when the image has it
//! (a NixOS generation number, stable across removed generations), else the
//! N-th entry file in version order (`entry-2.conf` before `entry-10.conf`).
//!
//! Not done here: an `LoaderEntryDefault`/`LoaderEntryOneShot` EFI variable
//! would need an OVMF variable-store writer.

use std::cmp::Ordering;
use std::ffi::OsStr;
use std::io::Read;
use std::path::{Path, PathBuf};

use super::BootError;
use super::probe::{self, GptEntry};
use super::run::tool;
use crate::layout::{ESP_TYPE, XBOOTLDR_TYPE};
use crate::qemu::RunDir;
use nixdisk_firmware::FirmwareKind;

/// The granularity of the write-back into the overlay.
pub const CHUNK: usize = 64 * 1024;

/// The EFI system partition among the GPT entries read from `head`.
pub fn esp_of(head: &[u8]) -> Option<GptEntry> {
    probe::gpt_entries(head)
        .into_iter()
        .find(|e| e.type_guid == ESP_TYPE)
}

/// The entry file `n` names among the file names of `loader/entries`.
pub fn pick_entry(names: &[String], n: u32) -> Option<String> {
    let generation = format!("nixos-generation-{n}.conf");
    if names.contains(&generation) {
        return Some(generation);
    }
    let mut entries: Vec<&String> = names.iter().filter(|n| n.ends_with(".conf")).collect();
    entries.sort_by(|a, b| version_cmp(a, b));
    let index = usize::try_from(n).ok()?.checked_sub(1)?;
    entries.get(index).map(|s| (*s).clone())
}

/// Compares names with digit runs as numbers (`a-2` before `a-10`).
pub fn version_cmp(a: &str, b: &str) -> Ordering {
    let (mut a, mut b) = (a.as_bytes(), b.as_bytes());
    loop {
        match (a.first(), b.first()) {
            (None, None) => return Ordering::Equal,
            (None, Some(_)) => return Ordering::Less,
            (Some(_), None) => return Ordering::Greater,
            (Some(x), Some(y)) if x.is_ascii_digit() && y.is_ascii_digit() => {
                let run = |s: &[u8]| s.iter().take_while(|c| c.is_ascii_digit()).count();
                let (na, nb) = (run(a), run(b));
                let strip = |s: &[u8]| {
                    let zeros = s.iter().take_while(|&&c| c == b'0').count();
                    s[zeros..].to_vec()
                };
                let (da, db) = (strip(&a[..na]), strip(&b[..nb]));
                let order = da.len().cmp(&db.len()).then_with(|| da.cmp(&db));
                if order != Ordering::Equal {
                    return order;
                }
                a = &a[na..];
                b = &b[nb..];
            }
            (Some(x), Some(y)) => {
                if x != y {
                    return x.cmp(y);
                }
                a = &a[1..];
                b = &b[1..];
            }
        }
    }
}

/// `loader.conf` with its `default` set to `entry` (other lines kept).
pub fn with_default(conf: &str, entry: &str) -> String {
    let mut out: String = conf
        .lines()
        .filter(|line| line.split_whitespace().next() != Some("default"))
        .map(|line| format!("{line}\n"))
        .collect();
    out.push_str(&format!("default {entry}\n"));
    out
}

/// The byte ranges (offset, length), in `chunk` steps, where `a` and `b`
/// differ; adjacent changed chunks are merged.
pub fn changed_ranges<A: Read, B: Read>(
    mut a: A,
    mut b: B,
    chunk: usize,
) -> std::io::Result<Vec<(u64, u64)>> {
    let mut ranges: Vec<(u64, u64)> = Vec::new();
    let (mut buf_a, mut buf_b) = (vec![0u8; chunk], vec![0u8; chunk]);
    let mut offset = 0u64;
    loop {
        let la = read_full(&mut a, &mut buf_a)?;
        let lb = read_full(&mut b, &mut buf_b)?;
        let len = la.max(lb);
        if len == 0 {
            return Ok(ranges);
        }
        if la != lb || buf_a[..la] != buf_b[..lb] {
            match ranges.last_mut() {
                Some((start, length)) if *start + *length == offset => *length += len as u64,
                _ => ranges.push((offset, len as u64)),
            }
        }
        offset += len as u64;
    }
}

fn read_full<R: Read>(reader: &mut R, buf: &mut [u8]) -> std::io::Result<usize> {
    let mut filled = 0;
    while filled < buf.len() {
        match reader.read(&mut buf[filled..])? {
            0 => break,
            n => filled += n,
        }
    }
    Ok(filled)
}

/// Makes the bootloader `firmware` starts on `overlay` (qcow2) boot entry
/// `n`: GRUB's on BIOS; systemd-boot's on UEFI, else GRUB for EFI's.
pub(super) async fn select_on_overlay(
    qemu_img: &Path,
    overlay: &Path,
    n: u32,
    firmware: FirmwareKind,
    run: &RunDir,
) -> Result<(), BootError> {
    if firmware == FirmwareKind::Bios {
        return super::entry_grub::select_on_overlay(qemu_img, overlay, n, run).await;
    }
    match select_systemd_boot(qemu_img, overlay, n, run).await {
        Err(systemd_boot @ BootError::Entry { .. }) => {
            super::entry_grub::select_on_overlay(qemu_img, overlay, n, run)
                .await
                .map_err(|_| systemd_boot)
        }
        other => other,
    }
}

/// Makes systemd-boot on `overlay` (qcow2) boot entry `n` by default.
async fn select_systemd_boot(
    qemu_img: &Path,
    overlay: &Path,
    n: u32,
    run: &RunDir,
) -> Result<(), BootError> {
    let entry_error = |reason: String| BootError::Entry { entry: n, reason };
    let head_path = run.join("entry-head.raw");
    dd(qemu_img, overlay, 0, probe::HEAD_BYTES as u64, &head_path).await?;
    let head = read(&head_path)?;
    let esp = esp_of(&head).ok_or_else(|| {
        entry_error("the image has no EFI system partition (only systemd-boot entries can be chosen so far)".into())
    })?;
    let esp_path = run.join("esp.raw");
    dd(qemu_img, overlay, esp.start, esp.size, &esp_path).await?;
    let original = run.join("esp.orig");
    std::fs::copy(&esp_path, &original).map_err(|source| BootError::Image {
        path: original.clone(),
        source,
    })?;

    // systemd-boot reads entries from the ESP and from an XBOOTLDR
    // partition (the efixbootldr layout), loader.conf from the ESP alone.
    let mut names = entry_names(&esp_path).await;
    if let Some(xbootldr) = probe::gpt_entries(&head)
        .into_iter()
        .find(|e| e.type_guid == XBOOTLDR_TYPE)
    {
        let xbootldr_path = run.join("xbootldr.raw");
        dd(
            qemu_img,
            overlay,
            xbootldr.start,
            xbootldr.size,
            &xbootldr_path,
        )
        .await?;
        if let Some(more) = entry_names(&xbootldr_path).await {
            names.get_or_insert_with(Vec::new).extend(more);
        }
    }
    let names = names.ok_or_else(|| {
        entry_error("no loader/entries directory on the ESP or XBOOTLDR partition: is the bootloader systemd-boot?".into())
    })?;
    let chosen = pick_entry(&names, n).ok_or_else(|| {
        entry_error(format!(
            "loader/entries holds {}; entry {n} is neither nixos-generation-{n}.conf nor within their count",
            if names.is_empty() { "no entries".to_owned() } else { names.join(", ") }
        ))
    })?;
    tracing::info!(entry = %chosen, "selecting the boot entry");
    let conf = mtool(
        "mtype",
        &[
            "-i".as_ref(),
            esp_path.as_os_str(),
            "::/loader/loader.conf".as_ref(),
        ],
    )
    .await
    .unwrap_or_default();
    let new_conf = run.join("loader.conf");
    std::fs::write(&new_conf, with_default(&conf, &chosen)).map_err(|source| BootError::Image {
        path: new_conf.clone(),
        source,
    })?;
    mtool(
        "mcopy",
        &[
            "-o".as_ref(),
            "-i".as_ref(),
            esp_path.as_os_str(),
            new_conf.as_os_str(),
            "::/loader/loader.conf".as_ref(),
        ],
    )
    .await?;
    write_back(qemu_img, overlay, &original, &esp_path, esp.start, run).await
}

/// The file names in `loader/entries` of the FAT file system in `fs`, or
/// `None` when it has no such directory.
async fn entry_names(fs: &Path) -> Option<Vec<String>> {
    let listing = mtool(
        "mdir",
        &[
            "-b".as_ref(),
            "-i".as_ref(),
            fs.as_os_str(),
            "::/loader/entries".as_ref(),
        ],
    )
    .await
    .ok()?;
    Some(
        listing
            .lines()
            .filter_map(|l| l.trim().rsplit('/').next())
            .filter(|n| !n.is_empty())
            .map(str::to_owned)
            .collect(),
    )
}

/// Writes the chunks of `edited` that differ from `original` into `overlay`
/// at `base` + their offset.
pub(super) async fn write_back(
    qemu_img: &Path,
    overlay: &Path,
    original: &Path,
    edited: &Path,
    base: u64,
    run: &RunDir,
) -> Result<(), BootError> {
    let open = |path: &Path| {
        std::fs::File::open(path).map_err(|source| BootError::Image {
            path: path.to_owned(),
            source,
        })
    };
    let ranges = changed_ranges(open(original)?, open(edited)?, CHUNK).map_err(|source| {
        BootError::Image {
            path: edited.to_owned(),
            source,
        }
    })?;
    let bytes = read(edited)?;
    let mut args: Vec<std::ffi::OsString> = vec!["-f".into(), "qcow2".into()];
    for (index, (offset, length)) in ranges.iter().enumerate() {
        let piece = run.join(&format!("chunk-{index}.bin"));
        let (start, end) = (*offset as usize, (*offset + *length) as usize);
        std::fs::write(&piece, &bytes[start..end]).map_err(|source| BootError::Image {
            path: piece.clone(),
            source,
        })?;
        args.push("-c".into());
        args.push(
            format!(
                "write -q -s {} {} {}",
                piece.display(),
                base + offset,
                length
            )
            .into(),
        );
    }
    args.push(overlay.into());
    let qemu_io = sibling(qemu_img, "qemu-io");
    let refs: Vec<&OsStr> = args.iter().map(|a| a.as_os_str()).collect();
    tool(&qemu_io, &refs).await.map(drop)
}

/// `length` bytes at `offset` of the qcow2 `image`, copied to `out`.
///
/// Through QEMU's raw driver with `offset` and `size` over the qcow2 (`qemu-img
/// convert --image-opts`): `qemu-img dd` counts `count` from the start of
/// the input rather than from `skip` in some QEMU versions (7.2), so a
/// window read with it comes out short by its offset.
/// Reads a file nixdisk copied out of the image, naming it on failure.
pub(super) fn read(path: &Path) -> Result<Vec<u8>, BootError> {
    std::fs::read(path).map_err(|source| BootError::Image {
        path: path.to_owned(),
        source,
    })
}

pub(super) async fn dd(
    qemu_img: &Path,
    image: &Path,
    offset: u64,
    length: u64,
    out: &Path,
) -> Result<(), BootError> {
    let options = window_options(image, offset, length);
    let args: [&OsStr; 6] = [
        "convert".as_ref(),
        "-O".as_ref(),
        "raw".as_ref(),
        "--image-opts".as_ref(),
        options.as_ref(),
        out.as_os_str(),
    ];
    let _ = std::fs::remove_file(out);
    tool(qemu_img, &args).await.map(drop)
}

/// The `--image-opts` of the window of `length` bytes at `offset` of the
/// qcow2 `image` (commas in the file name doubled, as QEMU's option syntax
/// wants).
pub fn window_options(image: &Path, offset: u64, length: u64) -> String {
    format!(
        "driver=raw,offset={offset},size={length},file.driver=qcow2,file.file.driver=file,file.file.filename={}",
        image.display().to_string().replace(',', ",,")
    )
}

/// Runs an mtools program (on an image file, so no drive check).
pub(super) async fn mtool(program: &str, args: &[&OsStr]) -> Result<String, BootError> {
    // mtools rejects geometries it does not know unless MTOOLS_SKIP_CHECK
    // is set; `env` sets it for this command alone.
    let mut full: Vec<&OsStr> = vec!["MTOOLS_SKIP_CHECK=1".as_ref(), program.as_ref()];
    full.extend_from_slice(args);
    tool(Path::new("env"), &full).await
}

/// `name` in the directory of `tool` (or on PATH when `tool` is a bare name).
fn sibling(tool: &Path, name: &str) -> PathBuf {
    match tool.parent() {
        Some(dir) if !dir.as_os_str().is_empty() => dir.join(name),
        _ => PathBuf::from(name),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn names(list: &[&str]) -> Vec<String> {
        list.iter().map(|s| (*s).to_owned()).collect()
    }

    #[test]
    fn generations_by_number_else_version_order() {
        let nixos = names(&[
            "nixos-generation-10.conf",
            "nixos-generation-2.conf",
            "nixos-generation-3.conf",
        ]);
        assert_eq!(
            pick_entry(&nixos, 2).as_deref(),
            Some("nixos-generation-2.conf")
        );
        assert_eq!(
            pick_entry(&nixos, 10).as_deref(),
            Some("nixos-generation-10.conf")
        );
        // Generation 1 was removed: entry 1 is the oldest left.
        assert_eq!(
            pick_entry(&nixos, 1).as_deref(),
            Some("nixos-generation-2.conf")
        );
        let plain = names(&["b-10.conf", "b-9.conf", "a.conf", "notes.txt"]);
        assert_eq!(pick_entry(&plain, 1).as_deref(), Some("a.conf"));
        assert_eq!(pick_entry(&plain, 2).as_deref(), Some("b-9.conf"));
        assert_eq!(pick_entry(&plain, 3).as_deref(), Some("b-10.conf"));
        assert_eq!(pick_entry(&plain, 4), None);
        assert_eq!(pick_entry(&plain, 0), None);
    }

    #[test]
    fn version_order() {
        assert_eq!(version_cmp("a-2", "a-10"), Ordering::Less);
        assert_eq!(version_cmp("a-010", "a-10"), Ordering::Equal);
        assert_eq!(version_cmp("a", "a-1"), Ordering::Less);
        assert_eq!(version_cmp("b", "a-1"), Ordering::Greater);
    }

    #[test]
    fn default_is_replaced_or_added() {
        assert_eq!(
            with_default(
                "timeout 3\ndefault nixos-generation-2.conf\nconsole-mode keep\n",
                "nixos-generation-1.conf"
            ),
            "timeout 3\nconsole-mode keep\ndefault nixos-generation-1.conf\n"
        );
        assert_eq!(with_default("", "a.conf"), "default a.conf\n");
        // `default-foo` is another key, kept.
        assert_eq!(
            with_default("defaultx 1", "a.conf"),
            "defaultx 1\ndefault a.conf\n"
        );
    }

    #[test]
    fn windows_are_raw_over_the_qcow2() {
        assert_eq!(
            window_options(Path::new("/run/a,b/overlay.qcow2"), 1 << 20, 4096),
            "driver=raw,offset=1048576,size=4096,file.driver=qcow2,file.file.driver=file,file.file.filename=/run/a,,b/overlay.qcow2"
        );
    }

    #[test]
    fn changed_chunks_are_found_and_merged() {
        let a = vec![0u8; 10 * 4];
        let mut b = a.clone();
        b[5] = 1; // chunk 1
        b[9] = 1; // chunk 2
        b[30] = 1; // chunk 7
        let ranges = changed_ranges(&a[..], &b[..], 4).expect("in memory");
        assert_eq!(ranges, [(4, 8), (28, 4)]);
        assert_eq!(changed_ranges(&a[..], &a[..], 4).expect("in memory"), []);
        // A longer edited file: the tail counts as changed.
        let longer = [a.clone(), vec![0; 2]].concat();
        assert_eq!(
            changed_ranges(&a[..], &longer[..], 4).expect("in memory"),
            [(40, 2)]
        );
    }
}
