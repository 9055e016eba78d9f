//! Store-only images from real store paths, checked with the file systems' own
//! tools (no mounting): integrity, the tree by content (modes, symlink
//! targets, contents, hard links), placement at an offset, and byte-identical
//! deterministic builds.

#[path = "store_image/store_tree.rs"]
mod store_tree;

#[path = "store_image/disks.rs"]
mod disks;

use std::collections::BTreeMap;
use std::fs;
use std::io::Write;
use std::os::unix::fs::{FileExt, PermissionsExt};
use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::{Mutex, MutexGuard, OnceLock};

use nixdisk::spec::FsType;
use nixdisk::store_image::{
    REGISTRATION_FILE, Region, StagingMode, StoreFsReport, StoreImageError, StoreImageOptions,
    build_store_fs, stage_closure,
};
use store_tree::{Entry, Snapshot};

const MIB: u64 = 1024 * 1024;
const UUID: &str = "f222513b-ded1-49fa-b591-20ce86a2fe7f";

/// The test closure: four store paths with what a store holds.
struct Fixture {
    paths: Vec<PathBuf>,
    registration: String,
}

fn fixture() -> &'static Fixture {
    static FIXTURE: OnceLock<Fixture> = OnceLock::new();
    FIXTURE.get_or_init(|| {
        let dir = tempfile::tempdir().expect("tempdir");
        let shared =
            b"content shared by several files, linked by the store optimiser (nixdisk test)\n";
        // A single-file store path, and a symlink store path pointing at it.
        let file = dir.path().join("nixdisk-test-file");
        fs::write(&file, b"a store path that is one file\n").expect("write");
        let file_path = store_tree::add_to_store(&file);
        let link = dir.path().join("nixdisk-test-link");
        std::os::unix::fs::symlink(&file_path, &link).expect("symlink");
        let link_path = store_tree::add_to_store(&link);

        let a = dir.path().join("nixdisk-test-a");
        for sub in ["bin", "share/doc", "share/deep/er", "lib", "empty-dir"] {
            fs::create_dir_all(a.join(sub)).expect("mkdir");
        }
        fs::write(a.join("bin/tool"), b"#!/bin/sh\necho tool\n").expect("write");
        fs::set_permissions(a.join("bin/tool"), fs::Permissions::from_mode(0o755)).expect("chmod");
        fs::write(a.join("share/doc/readme"), b"read me\n").expect("write");
        fs::write(a.join("share/doc/readme-again"), b"read me\n").expect("write");
        fs::write(a.join("share/empty"), b"").expect("write");
        fs::write(
            a.join("share/big"),
            store_tree::Rng::new(7).bytes(300 * 1024 + 13),
        )
        .expect("write");
        fs::write(a.join("share/same-1"), shared).expect("write");
        fs::write(a.join("share/deep/er/same-2"), shared).expect("write");
        fs::write(a.join("share/name with spaces"), b"spaces\n").expect("write");
        fs::write(a.join("share/ünïcode-名前"), b"unicode\n").expect("write");
        std::os::unix::fs::symlink("../bin/tool", a.join("lib/relative")).expect("symlink");
        std::os::unix::fs::symlink(&file_path, a.join("lib/absolute")).expect("symlink");
        std::os::unix::fs::symlink("does-not-exist", a.join("lib/dangling")).expect("symlink");
        let a_path = store_tree::add_to_store(&a);

        let b = dir.path().join("nixdisk-test-b");
        fs::create_dir_all(&b).expect("mkdir");
        fs::write(b.join("same-3"), shared).expect("write");
        fs::write(b.join("own"), b"only in b\n").expect("write");
        let b_path = store_tree::add_to_store(&b);

        let paths = store_tree::closure(&[a_path, b_path, file_path, link_path]);
        let registration = store_tree::registration(&paths);
        Fixture {
            paths,
            registration,
        }
    })
}

/// Builds one at a time: staging hard-links store files, which changes their
/// link count and ctime, and mksquashfs (comparing whole `stat` results to
/// find hard links) must not see that happen under it.
fn build(
    paths: &[PathBuf],
    options: &StoreImageOptions,
    image: &Path,
    region: Region,
) -> Result<StoreFsReport, StoreImageError> {
    let _one_at_a_time = one_at_a_time();
    build_store_fs(paths, options, image, region)
}

fn one_at_a_time() -> MutexGuard<'static, ()> {
    static BUILDS: Mutex<()> = Mutex::new(());
    BUILDS
        .lock()
        .unwrap_or_else(|poisoned| poisoned.into_inner())
}

fn options(fs_type: FsType, deterministic: bool) -> StoreImageOptions {
    StoreImageOptions {
        fs_type,
        label: "nix-store".to_owned(),
        uuid: Some(UUID.parse().expect("uuid")),
        deterministic,
        registration: Some(fixture().registration.clone()),
        staging: StagingMode::Auto,
        mkfs_options: Vec::new(),
        image_root: None,
    }
}

/// An image of `offset + size + 1 MiB` with marker bytes outside the region.
fn image_with_markers(path: &Path, region: Region) {
    let mut file = fs::File::create(path).expect("create image");
    file.set_len(region.end() + MIB).expect("size");
    file.write_all_at(&vec![0xA5; region.offset as usize], 0)
        .expect("head");
    file.write_all_at(&vec![0x5A; MIB as usize], region.end())
        .expect("tail");
    file.flush().expect("flush");
}

fn assert_markers_intact(path: &Path, region: Region) {
    let bytes = fs::read(path).expect("read image");
    assert_eq!(bytes.len() as u64, region.end() + MIB, "image length kept");
    assert!(
        bytes[..region.offset as usize].iter().all(|&b| b == 0xA5),
        "bytes before the region changed"
    );
    assert!(
        bytes[region.end() as usize..].iter().all(|&b| b == 0x5A),
        "bytes after the region changed"
    );
}

fn run(command: &mut Command) -> String {
    let output = command.output().expect("run tool");
    assert!(
        output.status.success(),
        "{command:?} failed:\n{}\n{}",
        String::from_utf8_lossy(&output.stdout),
        String::from_utf8_lossy(&output.stderr)
    );
    String::from_utf8_lossy(&output.stdout).into_owned()
}

/// The region's bytes as a file of their own (for tools without an offset option).
fn region_file(image: &Path, region: Region, dest: &Path) {
    let file = fs::File::open(image).expect("open image");
    let mut bytes = vec![0; region.size as usize];
    file.read_exact_at(&mut bytes, region.offset)
        .expect("read region");
    fs::write(dest, bytes).expect("write region");
}

/// Checks the file system with its own tool, extracts it, and returns the
/// snapshot of the extracted tree with the image's own inode identities.
fn check_and_extract(
    fs_type: FsType,
    image: &Path,
    region: Region,
    work: &Path,
    expected: &Snapshot,
) -> Snapshot {
    let out = work.join("extracted");
    let device = format!("{}?offset={}", image.display(), region.offset);
    let mut snapshot = Snapshot::default();
    match fs_type {
        FsType::Ext4 => {
            run(Command::new("fsck.ext4").args(["-fn", &device]));
            let header = run(Command::new("dumpe2fs").args(["-h", &device]));
            assert!(
                header.contains("Filesystem volume name:   nix-store"),
                "{header}"
            );
            assert!(
                header.contains(&format!("Filesystem UUID:          {UUID}")),
                "{header}"
            );
            fs::create_dir(&out).expect("mkdir");
            run(Command::new("debugfs").args([
                "-R",
                &format!("rdump / {}", out.display()),
                &device,
            ]));
            snapshot.read_into(&out, Path::new(""));
            snapshot.inodes = ext4_inodes(&device, expected);
        }
        FsType::Erofs => {
            let fs_file = work.join("region.erofs");
            region_file(image, region, &fs_file);
            run(Command::new("fsck.erofs")
                .arg(format!("--extract={}", out.display()))
                .arg(&fs_file));
            let superblock = run(Command::new("dump.erofs").arg("-s").arg(&fs_file));
            assert!(superblock.contains(UUID), "{superblock}");
            snapshot.read_into(&out, Path::new(""));
            snapshot.inodes = erofs_inodes(&fs_file, expected);
        }
        FsType::Squashfs => {
            let fs_file = work.join("region.squashfs");
            region_file(image, region, &fs_file);
            // unsquashfs keeps hard links, so the extracted inodes tell them.
            run(Command::new("unsquashfs").arg("-d").arg(&out).arg(&fs_file));
            snapshot.read_into(&out, Path::new(""));
        }
        other => panic!("no checks for {other:?}"),
    }
    snapshot
}

/// Image inode numbers of the expected tree's files, from `debugfs ls -p`.
fn ext4_inodes(device: &str, expected: &Snapshot) -> BTreeMap<PathBuf, (u64, u64)> {
    let mut script = String::new();
    for (path, entry) in &expected.entries {
        if matches!(entry, Entry::Dir { .. }) {
            script.push_str(&format!("ls -p \"/{}\"\n", path.display()));
        }
    }
    let script_file = tempfile::NamedTempFile::new().expect("script");
    fs::write(script_file.path(), script).expect("write script");
    let listing = run(Command::new("debugfs")
        .arg("-f")
        .arg(script_file.path())
        .arg(device));
    let mut inodes = BTreeMap::new();
    let mut dir = PathBuf::new();
    for line in listing.lines() {
        if let Some(rest) = line.strip_prefix("debugfs: ls -p \"/") {
            dir = PathBuf::from(rest.trim_end_matches('"'));
        } else if let Some(fields) = line.strip_prefix('/') {
            // /ino/mode/uid/gid/name/size/
            let parts: Vec<&str> = fields.split('/').collect();
            if parts.len() >= 6 && parts[1].starts_with("10") {
                inodes.insert(
                    dir.join(parts[4]),
                    (0, parts[0].parse().expect("inode number")),
                );
            }
        }
    }
    inodes
}

/// Image inode ids (NIDs) of the expected tree's files, from `dump.erofs --ls`.
fn erofs_inodes(fs_file: &Path, expected: &Snapshot) -> BTreeMap<PathBuf, (u64, u64)> {
    let mut inodes = BTreeMap::new();
    for (path, entry) in &expected.entries {
        if !matches!(entry, Entry::Dir { .. }) {
            continue;
        }
        let listing = run(Command::new("dump.erofs")
            .arg("--ls")
            .arg(format!("--path=/{}", path.display()))
            .arg(fs_file));
        for line in listing
            .lines()
            .skip_while(|l| !l.contains("FILENAME"))
            .skip(1)
        {
            let line = line.trim_start();
            let (nid, rest) = line.split_once(char::is_whitespace).expect("nid column");
            let (kind, name) = rest
                .trim_start()
                .split_once(char::is_whitespace)
                .expect("type column");
            let name = name.trim_start();
            // Type 1 is a regular file.
            if kind == "1" {
                inodes.insert(path.join(name), (0, nid.parse().expect("nid")));
            }
        }
    }
    inodes
}

/// Builds a store image and checks everything about it.
fn build_and_check(fs_type: FsType, region: Region) {
    build_and_check_staged(fs_type, region, StagingMode::Auto);
}

fn build_and_check_staged(fs_type: FsType, region: Region, staging: StagingMode) {
    let fixture = fixture();
    let work = tempfile::tempdir().expect("tempdir");
    let image = work.path().join("disk.img");
    if region.offset > 0 {
        image_with_markers(&image, region);
    }
    let options = StoreImageOptions {
        staging,
        ..options(fs_type, true)
    };
    let report = build(&fixture.paths, &options, &image, region)
        .unwrap_or_else(|e| panic!("{fs_type:?} at {region:?}: {e}"));
    if fs_type != FsType::Squashfs {
        let stats = report.staging.expect("staged");
        // As root, Auto means bind mounts; the fixture has two directory paths.
        let binds = staging.resolve() == StagingMode::BindMounts;
        assert_eq!(stats.bind_mounts, if binds { 2 } else { 0 }, "{stats:?}");
    }
    assert!(report.fs_bytes <= region.size);
    if region.offset > 0 {
        assert_markers_intact(&image, region);
    } else {
        assert_eq!(
            fs::metadata(&image).expect("stat").len(),
            region.size,
            "bare image is the region"
        );
    }

    let groups = verify_image(
        fs_type,
        &image,
        region,
        work.path(),
        &fixture.paths,
        &fixture.registration,
    );
    assert!(groups >= 2, "the fixture has hard links");
}

/// Checks the store file system in `region` of `image` with its own tools
/// and compares its tree with `paths` by content; returns the number of
/// hard-link groups it checked.
fn verify_image(
    fs_type: FsType,
    image: &Path,
    region: Region,
    work: &Path,
    paths: &[PathBuf],
    registration: &str,
) -> usize {
    let expected = store_tree::closure_snapshot(paths);
    let mut found = check_and_extract(fs_type, image, region, work, &expected);

    // The root, the registration and (ext only) lost+found, then the closure.
    assert!(matches!(
        found.entries.remove(Path::new("")),
        Some(Entry::Dir { mode: 0o755, .. })
    ));
    match found.entries.remove(Path::new(REGISTRATION_FILE)) {
        Some(Entry::File {
            mode,
            contents,
            mtime,
        }) => {
            assert_eq!(mode, 0o444);
            assert_eq!(mtime, 1);
            assert_eq!(contents, registration.as_bytes());
        }
        other => panic!("no registration file: {other:?}"),
    }
    found.inodes.remove(Path::new(REGISTRATION_FILE));
    if fs_type == FsType::Ext4 {
        assert!(matches!(
            found.entries.remove(Path::new("lost+found")),
            Some(Entry::Dir { .. })
        ));
    }
    let found_paths: Vec<_> = found.entries.keys().collect();
    let expected_paths: Vec<_> = expected.entries.keys().collect();
    assert_eq!(found_paths, expected_paths, "{fs_type:?}: the same paths");
    for (path, entry) in &expected.entries {
        assert_eq!(
            &found.entries[path],
            entry,
            "{fs_type:?}: {}",
            path.display()
        );
    }
    let groups = expected.link_groups();
    assert_eq!(found.link_groups(), groups, "{fs_type:?}: hard links kept");
    groups.len()
}

#[test]
fn ext4_bare() {
    build_and_check(FsType::Ext4, Region::whole(64 * MIB));
}

#[test]
fn ext4_at_one_mib() {
    build_and_check(
        FsType::Ext4,
        Region {
            offset: MIB,
            size: 64 * MIB,
        },
    );
}

#[test]
fn ext4_at_one_mib_from_hard_links() {
    build_and_check_staged(
        FsType::Ext4,
        Region {
            offset: MIB,
            size: 64 * MIB,
        },
        StagingMode::HardLinks,
    );
}

#[test]
fn erofs_at_one_mib_from_hard_links() {
    build_and_check_staged(
        FsType::Erofs,
        Region {
            offset: MIB,
            size: 16 * MIB,
        },
        StagingMode::HardLinks,
    );
}

#[test]
fn erofs_bare() {
    build_and_check(FsType::Erofs, Region::whole(16 * MIB));
}

#[test]
fn erofs_at_one_mib() {
    build_and_check(
        FsType::Erofs,
        Region {
            offset: MIB,
            size: 16 * MIB,
        },
    );
}

#[test]
fn squashfs_bare() {
    build_and_check(FsType::Squashfs, Region::whole(16 * MIB));
}

#[test]
fn squashfs_at_one_mib() {
    build_and_check(
        FsType::Squashfs,
        Region {
            offset: MIB,
            size: 16 * MIB,
        },
    );
}

#[test]
fn deterministic_builds_are_byte_identical() {
    let fixture = fixture();
    let region = Region {
        offset: MIB,
        size: 64 * MIB,
    };
    let mut failures = Vec::new();
    let cases = [
        (FsType::Ext4, StagingMode::BindMounts),
        (FsType::Ext4, StagingMode::HardLinks),
        (FsType::Erofs, StagingMode::BindMounts),
        (FsType::Erofs, StagingMode::HardLinks),
        (FsType::Squashfs, StagingMode::Auto),
    ];
    let mut by_type: BTreeMap<String, Vec<u8>> = BTreeMap::new();
    for (fs_type, staging) in cases {
        let options = StoreImageOptions {
            staging,
            ..options(fs_type, true)
        };
        let images: Vec<Vec<u8>> = (0..2)
            .map(|_| {
                // A fresh directory each time: staging paths and ctimes differ.
                let work = tempfile::tempdir().expect("tempdir");
                let image = work.path().join("disk.img");
                build(&fixture.paths, &options, &image, region).expect("build");
                fs::read(&image).expect("read")
            })
            .collect();
        let differing: Vec<usize> = (0..images[0].len())
            .filter(|&i| images[0][i] != images[1][i])
            .collect();
        if !differing.is_empty() {
            failures.push(format!(
                "{fs_type:?} from {staging:?}: {} bytes differ, first at {:?}",
                differing.len(),
                &differing[..differing.len().min(8)]
            ));
        }
        // Bind mounts and hard links make the same bytes.
        let [first, _] = <[Vec<u8>; 2]>::try_from(images).expect("two images");
        if let Some(other) = by_type.insert(format!("{fs_type:?}"), first) {
            if other != by_type[&format!("{fs_type:?}")] {
                failures.push(format!("{fs_type:?}: staging modes give different images"));
            }
        }
    }
    assert!(
        failures.is_empty(),
        "two deterministic builds differ: {failures:#?}"
    );
}

#[test]
fn non_deterministic_ext4_is_still_valid() {
    let fixture = fixture();
    let work = tempfile::tempdir().expect("tempdir");
    let image = work.path().join("disk.img");
    let mut options = options(FsType::Ext4, false);
    options.uuid = None;
    build(&fixture.paths, &options, &image, Region::whole(32 * MIB)).expect("build");
    run(Command::new("fsck.ext4").arg("-fn").arg(&image));
}

#[test]
fn too_small_a_region_says_so() {
    let fixture = fixture();
    let work = tempfile::tempdir().expect("tempdir");
    for fs_type in [FsType::Ext4, FsType::Erofs, FsType::Squashfs] {
        let image = work.path().join(format!("{fs_type:?}.img"));
        let error = build(
            &fixture.paths,
            &options(fs_type, true),
            &image,
            Region::whole(64 * 1024),
        )
        .expect_err("the closure cannot fit in 64 KiB");
        assert!(
            error.to_string().contains("diskSize"),
            "{fs_type:?}: {error}"
        );
    }
    let left: Vec<_> = fs::read_dir(work.path())
        .expect("readdir")
        .map(|e| e.expect("entry").file_name())
        .collect();
    assert!(
        left.iter()
            .all(|name| !name.to_string_lossy().starts_with(".nixdisk-store-")),
        "scratch left: {left:?}"
    );
}

#[test]
fn staging_on_another_file_system_copies_and_keeps_links() {
    // /dev/shm is a tmpfs: hard links from the store fail there with EXDEV.
    let shm = Path::new("/dev/shm");
    if fs::metadata(shm).is_err() {
        panic!("/dev/shm is needed to test the copy fallback");
    }
    let fixture = fixture();
    let scratch = tempfile::tempdir_in(shm).expect("tempdir in /dev/shm");
    let root = scratch.path().join("tree");
    let guard = one_at_a_time();
    let tree =
        stage_closure(&fixture.paths, None, &root, Some(1), StagingMode::HardLinks).expect("stage");
    drop(guard);
    assert!(
        tree.stats().copied > 0,
        "expected copies: {:?}",
        tree.stats()
    );
    let mut staged = Snapshot::default();
    staged.read_into(&root, Path::new(""));
    staged.entries.remove(Path::new(""));
    let expected = store_tree::closure_snapshot(&fixture.paths);
    assert_eq!(staged.entries, expected.entries);
    assert_eq!(staged.link_groups(), expected.link_groups());
    drop(tree);
    assert!(!root.exists(), "the staged tree is removed on drop");
}

/// A store path that is a symlink out of the store (`-> /etc`) lands in the
/// image as that symlink, through the real `nixdisk build`: nothing of what
/// it points to is copied, with bind-mount or hard-link staging alike.
#[test]
fn a_store_path_linking_out_of_the_store_stays_a_link() {
    let source = tempfile::tempdir().expect("temp dir");
    std::os::unix::fs::symlink("/etc", source.path().join("escape")).expect("a link");
    let link = store_tree::add_to_store(&source.path().join("escape"));
    assert!(fs::symlink_metadata(&link).expect("added").is_symlink());
    let name = link.file_name().expect("a name").to_str().expect("UTF-8");
    let spec = serde_json::json!({
        "onlyNixStore": true,
        "additionalPaths": [link],
        "partitionTableType": "none",
    });
    let spec_file = source.path().join("spec.json");
    fs::write(&spec_file, spec.to_string()).expect("the spec");
    let out = source.path().join("out");
    let _one_at_a_time = one_at_a_time();
    run(Command::new(env!("CARGO_BIN_EXE_nixdisk"))
        .args(["build", "-q", "--spec"])
        .arg(&spec_file)
        .arg("--out")
        .arg(&out));
    let image = out.join("nixos.img");
    let stat = run(Command::new("debugfs")
        .args(["-R", &format!("stat /{name}")])
        .arg(&image));
    assert!(stat.contains("Type: symlink"), "{stat}");
    let target = run(Command::new("debugfs")
        .args(["-R", &format!("cat /{name}")])
        .arg(&image));
    let listing = run(Command::new("debugfs").args(["-R", "ls -p /"]).arg(&image));
    let names: Vec<&str> = listing
        .lines()
        .filter_map(|line| line.split('/').nth(5))
        .filter(|n| !n.is_empty() && !n.starts_with('.') && *n != "lost+found")
        .collect();
    assert_eq!(
        names,
        [name],
        "only the link is at the root: {listing}\n{target}"
    );
}
