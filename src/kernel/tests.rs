//! Pure parts of the kernel module: release order, module index and
//! resolution, setup-header and ELF note parsing.

use super::modules::module_name;
use super::vmlinux::{Compression, bzimage_payload, bzimage_release, pvh_entry};
use super::*;

#[test]
fn releases_compare_as_versions() {
    let mut r = vec![
        "6.9.0-1-amd64",
        "6.10.0-1-amd64",
        "6.1.0-56-amd64",
        "6.1.0-9-amd64",
    ];
    r.sort_by(|a, b| compare_releases(a, b));
    assert_eq!(
        r,
        [
            "6.1.0-9-amd64",
            "6.1.0-56-amd64",
            "6.9.0-1-amd64",
            "6.10.0-1-amd64"
        ]
    );
}

#[test]
fn module_names_normalize() {
    assert_eq!(
        module_name("kernel/fs/nls/nls_iso8859-1.ko"),
        "nls_iso8859_1"
    );
    assert_eq!(
        module_name("kernel/arch/x86/crypto/crc32c-intel.ko.xz"),
        "crc32c_intel"
    );
    assert_eq!(module_name("/abs/ext4.ko.zst"), "ext4");
}

const DEP: &str = "\
kernel/fs/ext4/ext4.ko: kernel/lib/crc16.ko kernel/fs/mbcache.ko kernel/fs/jbd2/jbd2.ko
kernel/fs/jbd2/jbd2.ko:
kernel/fs/mbcache.ko:
kernel/lib/crc16.ko:
kernel/crypto/crc32c_generic.ko:
kernel/arch/x86/crypto/crc32c-intel.ko:
kernel/fs/fat/vfat.ko: kernel/fs/fat/fat.ko
kernel/fs/fat/fat.ko:
kernel/fs/nls/nls_iso8859-1.ko:
kernel/drivers/a.ko: kernel/drivers/b.ko
kernel/drivers/b.ko:
kernel/drivers/c.ko:
";
const SOFTDEP: &str = "\
# comment
softdep ext4 pre: crypto-crc32c
softdep jbd2 pre: crypto-crc32c
softdep a pre: nonexistent post: c
";
const ALIAS: &str = "\
alias crypto-crc32c crc32c_intel
alias crypto-crc32c crc32c_generic
alias fs-vfat vfat
";
const BUILTIN: &str = "kernel/drivers/virtio/virtio.ko\nkernel/fs/efivarfs/efivarfs.ko\n";

fn names(r: &Resolution) -> Vec<&str> {
    r.load_order.iter().map(|m| m.name.as_str()).collect()
}

#[test]
fn ext4_pulls_softdeps_then_deps_first() {
    let index = ModuleIndex::parse(DEP, SOFTDEP, ALIAS, BUILTIN);
    let r = index.resolve(&["ext4", "vfat", "nls_iso8859-1", "ext4"]);
    assert_eq!(
        names(&r),
        [
            "crc32c_generic",
            "crc32c_intel",
            "jbd2",
            "mbcache",
            "crc16",
            "ext4",
            "fat",
            "vfat",
            "nls_iso8859_1"
        ]
    );
    assert_eq!(
        r.load_order[1].path,
        "kernel/arch/x86/crypto/crc32c-intel.ko"
    );
    assert!(r.builtin.is_empty() && r.missing.is_empty());
}

#[test]
fn post_softdeps_follow_and_unknown_softdeps_are_skipped() {
    let index = ModuleIndex::parse(DEP, SOFTDEP, ALIAS, BUILTIN);
    assert_eq!(names(&index.resolve(&["a"])), ["b", "a", "c"]);
}

#[test]
fn builtin_missing_and_aliases() {
    let index = ModuleIndex::parse(DEP, SOFTDEP, ALIAS, BUILTIN);
    let r = index.resolve(&["efivarfs", "virtio", "no_such_module", "fs-vfat"]);
    assert_eq!(names(&r), ["fat", "vfat"]);
    assert_eq!(r.builtin, ["efivarfs", "virtio"]);
    assert_eq!(r.missing, ["no_such_module"]);
}

/// A minimal ELF64 with one PT_NOTE holding the given notes.
fn elf_with_notes(notes: &[(&[u8], u32, &[u8])]) -> Vec<u8> {
    let mut note_bytes = Vec::new();
    for (name, kind, desc) in notes {
        note_bytes.extend((name.len() as u32).to_le_bytes());
        note_bytes.extend((desc.len() as u32).to_le_bytes());
        note_bytes.extend(kind.to_le_bytes());
        note_bytes.extend(*name);
        note_bytes.resize(note_bytes.len().next_multiple_of(4), 0);
        note_bytes.extend(*desc);
        note_bytes.resize(note_bytes.len().next_multiple_of(4), 0);
    }
    let mut elf = vec![0u8; 64 + 56];
    elf[..6].copy_from_slice(b"\x7fELF\x02\x01");
    elf[0x20..0x28].copy_from_slice(&64u64.to_le_bytes());
    elf[0x36..0x38].copy_from_slice(&56u16.to_le_bytes());
    elf[0x38..0x3a].copy_from_slice(&1u16.to_le_bytes());
    elf[64..68].copy_from_slice(&4u32.to_le_bytes());
    elf[64 + 8..64 + 16].copy_from_slice(&120u64.to_le_bytes());
    elf[64 + 0x20..64 + 0x28].copy_from_slice(&(note_bytes.len() as u64).to_le_bytes());
    elf.extend(note_bytes);
    elf
}

#[test]
fn pvh_note_is_found_among_other_notes() {
    let elf = elf_with_notes(&[
        (b"GNU\0", 3, b"abcdefgh"),
        (b"Xen\0", 5, b"xen-3.0\0"),
        (b"Xen\0", 18, &0x0100_0000u32.to_le_bytes()),
    ]);
    assert_eq!(pvh_entry(&elf), Some(0x0100_0000));
    let without = elf_with_notes(&[(b"Xen\0", 5, b"xen-3.0\0")]);
    assert_eq!(pvh_entry(&without), None);
    assert_eq!(pvh_entry(b"\x7fELF\x02\x01truncated"), None);
    assert_eq!(pvh_entry(b"MZ not an elf"), None);
}

#[test]
fn setup_header_payload_and_release() {
    let mut image = vec![0u8; 3 * 512 + 64];
    image[0x1f1] = 1; // one setup sector: protected-mode code at 1024
    image[0x202..0x206].copy_from_slice(b"HdrS");
    image[0x206..0x208].copy_from_slice(&0x020fu16.to_le_bytes());
    image[0x20e..0x210].copy_from_slice(&0x100u16.to_le_bytes()); // version string at 0x300
    image[0x300..0x310].copy_from_slice(b"6.1.0-9-amd64 (x");
    image[0x248..0x24c].copy_from_slice(&16u32.to_le_bytes());
    image[0x24c..0x250].copy_from_slice(&8u32.to_le_bytes());
    image[1024 + 16..1024 + 24].copy_from_slice(&[0xfd, b'7', b'z', b'X', b'Z', 0, 1, 2]);
    let (payload, compression) = bzimage_payload(&image).expect("payload");
    assert_eq!((payload.len(), compression), (8, Compression::Xz));
    assert_eq!(bzimage_release(&image).as_deref(), Some("6.1.0-9-amd64"));
    image[0x24c..0x250].copy_from_slice(&4096u32.to_le_bytes());
    assert!(
        bzimage_payload(&image)
            .expect_err("out of range")
            .contains("outside")
    );
    assert!(bzimage_payload(b"plain text").is_err());
}

#[test]
fn explicit_kernel_errors_name_the_path() {
    let dir = tempfile::tempdir().expect("tempdir");
    let search = KernelSearch {
        kernel: Some(dir.path().join("vmlinuz-9.9")),
        ..KernelSearch::default()
    };
    let err = discover(&search).expect_err("missing kernel");
    assert!(err.to_string().contains("vmlinuz-9.9"), "{err}");
    std::fs::write(dir.path().join("vmlinuz-9.9"), b"not a kernel").expect("write");
    let search = KernelSearch {
        modules_root: dir.path().to_path_buf(),
        ..search
    };
    let err = discover(&search).expect_err("no modules");
    assert!(
        matches!(err, KernelError::ModulesMissing { ref release, .. } if release == "9.9"),
        "{err}"
    );
}

#[test]
fn discovery_picks_the_newest_kernel_with_modules() {
    let dir = tempfile::tempdir().expect("tempdir");
    let (boot, root) = (dir.path().join("boot"), dir.path().join("modules"));
    for release in ["6.1.0-9", "6.1.0-10", "6.2.0-1"] {
        std::fs::create_dir_all(&boot).expect("mkdir");
        std::fs::write(boot.join(format!("vmlinuz-{release}")), b"k").expect("write");
    }
    for release in ["6.1.0-9", "6.1.0-10"] {
        std::fs::create_dir_all(root.join(release)).expect("mkdir");
        std::fs::write(root.join(release).join("modules.dep"), b"").expect("write");
    }
    let search = KernelSearch {
        boot_dir: boot.clone(),
        modules_root: root.clone(),
        nixos_system: None,
        ..KernelSearch::default()
    };
    let k = discover(&search).expect("found");
    assert_eq!(
        (k.release.as_str(), k.image),
        ("6.1.0-10", boot.join("vmlinuz-6.1.0-10"))
    );
    let empty = KernelSearch {
        boot_dir: dir.path().join("nothing"),
        ..search
    };
    let err = discover(&empty).expect_err("none");
    assert!(
        err.to_string().contains("nothing") && err.to_string().contains("hint:"),
        "{err}"
    );
}

#[test]
fn module_names_follow_the_file_system_and_firmware() {
    use crate::spec::FsType;
    let ext4 = builder_module_names(FsType::Ext4, false);
    assert!(
        ext4.contains(&"ext4")
            && !ext4.contains(&"xfs")
            && !ext4.contains(&"btrfs")
            && !ext4.contains(&"efivarfs")
    );
    assert_eq!(builder_module_names(FsType::Ext2, false), ext4);
    let xfs = builder_module_names(FsType::Xfs, true);
    assert_eq!(&xfs[BASE_MODULES.len()..], ["xfs", "efivarfs"]);
    assert_eq!(builder_module_names(FsType::Vfat, false), BASE_MODULES);
}

#[test]
fn hostile_elf_headers_do_not_panic() {
    let mut elf = elf_with_notes(&[(b"Xen\0", 18, &1u32.to_le_bytes())]);
    elf[0x20..0x28].copy_from_slice(&u64::MAX.to_le_bytes());
    assert_eq!(pvh_entry(&elf), None);
    let mut elf = elf_with_notes(&[(b"Xen\0", 18, &1u32.to_le_bytes())]);
    elf[64 + 8..64 + 16].copy_from_slice(&(u64::MAX - 2).to_le_bytes());
    assert_eq!(pvh_entry(&elf), None);
    let mut elf = elf_with_notes(&[(b"Xen\0", 18, &1u32.to_le_bytes())]);
    elf[120..124].copy_from_slice(&u32::MAX.to_le_bytes()); // namesz
    assert_eq!(pvh_entry(&elf), None);
}
