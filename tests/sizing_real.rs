//! Auto sizing checked against the real tools: each generated tree is sized,
//! then really made into a file system of exactly that size with the options
//! the sizing returned; the tool must succeed, the checker must pass, and the
//! space left over (the slack) must be small.

use std::fs;
use std::io::Write;
use std::os::unix::fs::symlink;
use std::path::{Path, PathBuf};
use std::process::Command;

use nixdisk::sizing::{FsSize, TreeStats, fs_size};
use nixdisk::spec::{FsType, MIB};

/// Slack allowed beyond `additional_space`: 5% of the size plus this.
const SLACK_CONSTANT: u64 = 2 * MIB;

/// A small deterministic generator, so trees are the same on every run.
struct Rng(u64);

impl Rng {
    fn next(&mut self) -> u64 {
        // xorshift64*
        self.0 ^= self.0 >> 12;
        self.0 ^= self.0 << 25;
        self.0 ^= self.0 >> 27;
        self.0.wrapping_mul(0x2545_F491_4F6C_DD1D)
    }

    fn below(&mut self, n: u64) -> u64 {
        self.next() % n
    }

    fn bytes(&mut self, len: usize) -> Vec<u8> {
        let mut out = Vec::with_capacity(len + 8);
        while out.len() < len {
            out.extend_from_slice(&self.next().to_le_bytes());
        }
        out.truncate(len);
        out
    }
}

fn write_file(path: &Path, contents: &[u8]) {
    fs::create_dir_all(path.parent().unwrap()).unwrap();
    let mut file = fs::File::create(path).unwrap();
    file.write_all(contents).unwrap();
}

/// A few files, a symlink, an empty file: a tiny store path.
fn tiny_tree(root: &Path) {
    write_file(
        &root.join("hello-1.0/bin/hello"),
        b"#!/bin/sh\necho hello\n",
    );
    write_file(&root.join("hello-1.0/share/doc/README"), b"hello\n");
    write_file(&root.join("hello-1.0/empty"), b"");
    symlink("bin/hello", root.join("hello-1.0/run")).unwrap();
}

/// About 20000 small files (0 to 6 KiB, random data) in 200 directories, with
/// store-like names.
fn many_small_files(root: &Path) {
    let mut rng = Rng(0x1234_5678);
    for d in 0..200 {
        let dir = root.join(format!("{:032}-package-{d}/lib/share", d * 7919));
        for f in 0..100 {
            let len = rng.below(6 * 1024) as usize;
            let name = format!("file-{f}-{}.data", "x".repeat(rng.below(40) as usize));
            write_file(&dir.join(name), &rng.bytes(len));
        }
    }
}

/// A few large files of real (incompressible, non-zero) data.
fn large_files(root: &Path) {
    let mut rng = Rng(42);
    for (i, mib) in [33u64, 17, 45].iter().enumerate() {
        let len = (mib * MIB + rng.below(4096)) as usize;
        write_file(&root.join(format!("big-{i}/blob")), &rng.bytes(len));
    }
}

/// Hard links (kept as one inode by mke2fs), long and short symlinks, and one
/// directory of 5000 entries.
fn links_and_big_directory(root: &Path) {
    let mut rng = Rng(7);
    let pkg = root.join("linked");
    for i in 0..300 {
        let target = pkg.join(format!("data/file-{i}"));
        let len = rng.below(20000) as usize;
        write_file(&target, &rng.bytes(len));
        for copy in 0..3 {
            let link = pkg.join(format!("links-{copy}/file-{i}"));
            fs::create_dir_all(link.parent().unwrap()).unwrap();
            fs::hard_link(&target, &link).unwrap();
        }
    }
    let long_prefix = format!(
        "/nix/store/{}-some-long-dependency-name-1.2.3",
        "a".repeat(32)
    );
    for i in 0..500 {
        let dir = pkg.join("symlinks");
        fs::create_dir_all(&dir).unwrap();
        symlink(
            format!("{long_prefix}/lib/library-{i}.so"),
            dir.join(format!("long-{i}")),
        )
        .unwrap();
        symlink(format!("../data/file-{i}"), dir.join(format!("short-{i}"))).unwrap();
    }
    for i in 0..5000 {
        write_file(
            &pkg.join(format!("wide/entry-with-a-moderately-long-name-{i:05}")),
            b"x",
        );
    }
}

/// Runs a command, returning stdout; fails the test with its output otherwise.
fn run(command: &mut Command) -> String {
    let output = command
        .output()
        .unwrap_or_else(|e| panic!("cannot run {command:?}: {e}"));
    assert!(
        output.status.success(),
        "{command:?} failed ({}):\n{}\n{}",
        output.status,
        String::from_utf8_lossy(&output.stdout),
        String::from_utf8_lossy(&output.stderr)
    );
    String::from_utf8_lossy(&output.stdout).into_owned()
}

fn field(dump: &str, name: &str) -> u64 {
    dump.lines()
        .find_map(|line| line.strip_prefix(name)?.trim().parse().ok())
        .unwrap_or_else(|| panic!("no `{name}` in dumpe2fs output:\n{dump}"))
}

/// Makes an ext file system of exactly the computed size from `tree`,
/// checks it, and returns the free bytes.
fn make_ext(fs: FsType, tree: &Path, size: &FsSize, image: &Path) -> u64 {
    let file = fs::File::create(image).unwrap();
    file.set_len(size.bytes).unwrap();
    drop(file);
    run(Command::new("mke2fs")
        .args(&size.mkfs_options)
        .arg("-q")
        .arg("-d")
        .arg(tree)
        .arg(image));
    assert_eq!(
        fs::metadata(image).unwrap().len(),
        size.bytes,
        "{fs:?}: mke2fs changed the image size"
    );
    run(Command::new("e2fsck").arg("-fn").arg(image));
    let dump = run(Command::new("dumpe2fs").arg("-h").arg(image));
    let block_size = field(&dump, "Block size:");
    let blocks = field(&dump, "Block count:");
    assert!(blocks * block_size <= size.bytes);
    field(&dump, "Free blocks:") * block_size
}

/// Builds a tree once, then checks it with each (file system, block size, additional space).
fn check_ext(name: &str, build: fn(&Path), cases: &[(FsType, u32, u64)]) {
    let work = tempfile::tempdir().unwrap();
    let tree = work.path().join("tree");
    fs::create_dir(&tree).unwrap();
    build(&tree);
    let stats = TreeStats::measure_dir(&tree).unwrap();
    for &(fs, block_size, additional) in cases {
        check_ext_once(name, work.path(), &tree, &stats, fs, block_size, additional);
    }
}

fn check_ext_once(
    name: &str,
    work: &Path,
    tree: &Path,
    stats: &TreeStats,
    fs: FsType,
    block_size: u32,
    additional: u64,
) {
    let size = fs_size(fs, stats, additional, block_size).unwrap();
    let free = make_ext(fs, tree, &size, &work.join("image"));
    let slack = free.checked_sub(additional).unwrap_or_else(|| {
        panic!(
            "{name}: only {free} bytes free, {additional} promised\n{}",
            size.breakdown
        )
    });
    eprintln!(
        "{name} ({fs:?}, {block_size} B blocks, +{additional}): size {} MiB, slack {slack} bytes ({:.2}%)\n{}",
        size.bytes / MIB,
        100.0 * slack as f64 / size.bytes as f64,
        size.breakdown
    );
    // At the smallest size the model makes, the slack is the floor's.
    let floor = nixdisk::sizing::ext4::MIN_BYTES;
    assert!(
        size.bytes == floor || slack <= size.bytes / 20 + SLACK_CONSTANT,
        "{name}: {slack} bytes of slack in {} bytes",
        size.bytes
    );
}

#[test]
fn ext4_tiny_tree() {
    check_ext("tiny", tiny_tree, &[(FsType::Ext4, 4096, 0)]);
}

#[test]
fn ext_many_small_files() {
    check_ext(
        "small files",
        many_small_files,
        &[
            (FsType::Ext4, 4096, 0),
            (FsType::Ext4, 4096, 100 * MIB),
            (FsType::Ext4, 1024, 0),
        ],
    );
}

#[test]
fn ext_large_files() {
    check_ext(
        "large files",
        large_files,
        &[(FsType::Ext4, 4096, 0), (FsType::Ext2, 4096, 3 * MIB)],
    );
}

#[test]
fn ext_links_and_big_directory() {
    check_ext(
        "links",
        links_and_big_directory,
        &[(FsType::Ext4, 4096, 0), (FsType::Ext3, 4096, 0)],
    );
}

/// Free bytes of a vfat image, from mtools' directory listing.
fn vfat_free(image: &Path) -> u64 {
    let listing = run(Command::new("mdir").arg("-i").arg(image).arg("::/"));
    listing
        .lines()
        .find_map(|line| {
            let text = line.trim().strip_suffix("bytes free")?;
            text.replace(' ', "").parse().ok()
        })
        .unwrap_or_else(|| panic!("no free space in mdir output:\n{listing}"))
}

fn check_vfat(name: &str, build: fn(&Path), additional: u64) {
    let work = tempfile::tempdir().unwrap();
    let tree = work.path().join("tree");
    fs::create_dir(&tree).unwrap();
    build(&tree);
    let stats = TreeStats::measure_dir(&tree).unwrap();
    let size = fs_size(FsType::Vfat, &stats, additional, 4096).unwrap();
    let image = work.path().join("image");
    fs::File::create(&image)
        .unwrap()
        .set_len(size.bytes)
        .unwrap();
    run(Command::new("mkfs.vfat")
        .args(&size.mkfs_options)
        .arg("-n")
        .arg("TEST")
        .arg(&image));
    let entries: Vec<PathBuf> = fs::read_dir(&tree)
        .unwrap()
        .map(|e| e.unwrap().path())
        .collect();
    run(Command::new("mcopy")
        .arg("-s")
        .arg("-i")
        .arg(&image)
        .args(&entries)
        .arg("::/"));
    run(Command::new("fsck.vfat").arg("-n").arg(&image));
    let free = vfat_free(&image);
    let slack = free
        .checked_sub(additional)
        .unwrap_or_else(|| panic!("{name}: {free} free"));
    eprintln!(
        "{name} (vfat): size {} MiB, slack {slack} bytes ({:.2}%)\n{}",
        size.bytes / MIB,
        100.0 * slack as f64 / size.bytes as f64,
        size.breakdown
    );
    assert!(
        slack <= size.bytes / 10 + SLACK_CONSTANT,
        "{name}: {slack} bytes of slack"
    );
}

/// A boot-partition-like tree: kernels, initrds, loader entries.
fn boot_tree(root: &Path) {
    let mut rng = Rng(99);
    for generation in 0..3 {
        let dir = root.join("EFI/nixos");
        write_file(
            &dir.join(format!("kernel-generation-{generation}.efi")),
            &rng.bytes(9 * MIB as usize),
        );
        write_file(
            &dir.join(format!("initrd-generation-{generation}.efi")),
            &rng.bytes(14 * MIB as usize),
        );
        write_file(
            &root.join(format!("loader/entries/nixos-generation-{generation}.conf")),
            b"title NixOS\nlinux /EFI/nixos/kernel.efi\n",
        );
    }
    write_file(&root.join("EFI/BOOT/BOOTX64.EFI"), &rng.bytes(100_000));
}

#[test]
fn vfat_boot_tree() {
    check_vfat("boot", boot_tree, 0);
    check_vfat("boot + 64M", boot_tree, 64 * MIB);
}

#[test]
fn vfat_many_small_files() {
    check_vfat("small files", many_small_files, 0);
}

/// Builds the read-only images and checks the computed size is an upper bound.
fn check_read_only(name: &str, build: fn(&Path)) {
    let work = tempfile::tempdir().unwrap();
    let tree = work.path().join("tree");
    fs::create_dir(&tree).unwrap();
    build(&tree);
    let stats = TreeStats::measure_dir(&tree).unwrap();
    let image = work.path().join("image");
    let commands: [(FsType, Command); 3] = [
        (FsType::Erofs, {
            let mut c = Command::new("mkfs.erofs");
            c.arg("--quiet").arg(&image).arg(&tree);
            c
        }),
        // Uncompressed: the bound must hold even where compression gains nothing.
        (FsType::Squashfs, {
            let mut c = Command::new("mksquashfs");
            c.arg(&tree)
                .arg(&image)
                .args(["-noappend", "-quiet", "-noI", "-noD", "-noF", "-noX"]);
            c
        }),
        (FsType::Squashfs, {
            let mut c = Command::new("mksquashfs");
            c.arg(&tree).arg(&image).args(["-noappend", "-quiet"]);
            c
        }),
    ];
    for (fs, mut command) in commands {
        let size = fs_size(fs, &stats, 0, nixdisk::sizing::default_block_size(fs)).unwrap();
        let _ = fs::remove_file(&image);
        run(&mut command);
        let made = fs::metadata(&image).unwrap().len();
        eprintln!(
            "{name} ({fs:?}, {:?}): computed {} bytes, made {made} bytes ({:.1}% of the bound)",
            command.get_program(),
            size.bytes,
            100.0 * made as f64 / size.bytes as f64
        );
        assert!(
            made <= size.bytes,
            "{name}: {fs:?} image of {made} bytes exceeds the computed {}",
            size.bytes
        );
    }
}

#[test]
fn read_only_images_stay_within_the_bound() {
    check_read_only("small files", many_small_files);
    check_read_only("links", links_and_big_directory);
    check_read_only("large files", large_files);
}

/// btrfs made with `mkfs.btrfs --rootdir` into a file of the computed size.
#[test]
fn btrfs_holds_the_tree_at_the_computed_size() {
    for (name, build) in [
        ("small files", many_small_files as fn(&Path)),
        ("large files", large_files),
    ] {
        let work = tempfile::tempdir().unwrap();
        let tree = work.path().join("tree");
        fs::create_dir(&tree).unwrap();
        build(&tree);
        let stats = TreeStats::measure_dir(&tree).unwrap();
        let size = fs_size(FsType::Btrfs, &stats, 0, 4096).unwrap();
        let image = work.path().join("image");
        fs::File::create(&image)
            .unwrap()
            .set_len(size.bytes)
            .unwrap();
        run(Command::new("mkfs.btrfs")
            .arg("-q")
            .arg("--rootdir")
            .arg(&tree)
            .arg(&image));
        run(Command::new("btrfs")
            .args(["check", "--readonly"])
            .arg(&image));
        let super_block = run(Command::new("btrfs")
            .args(["inspect-internal", "dump-super"])
            .arg(&image));
        let used = field(&super_block, "bytes_used");
        // mkfs.btrfs --rootdir enlarges a regular file to its own, far larger
        // estimate; on a device of the computed size what counts is the use.
        let file = fs::metadata(&image).unwrap().len();
        eprintln!(
            "{name} (btrfs): size {} MiB, {used} bytes used ({:.1}%), mkfs.btrfs made the file {} MiB",
            size.bytes / MIB,
            100.0 * used as f64 / size.bytes as f64,
            file / MIB
        );
        assert!(
            used <= size.bytes,
            "{name}: btrfs uses {used} bytes, more than the computed {}",
            size.bytes
        );
    }
}

/// An mkfs.xfs prototype file describing `dir` (xfsprogs 6.1 has no
/// `-d DIR`): the tree's files are copied from their paths.
fn xfs_proto(dir: &Path, out: &mut String) {
    let mut entries: Vec<_> = fs::read_dir(dir)
        .unwrap()
        .map(|e| e.unwrap().path())
        .collect();
    entries.sort();
    for path in entries {
        let name = path.file_name().unwrap().to_string_lossy().into_owned();
        let meta = fs::symlink_metadata(&path).unwrap();
        if meta.file_type().is_symlink() {
            let target = fs::read_link(&path).unwrap();
            out.push_str(&format!("{name} l--777 0 0 {}\n", target.display()));
        } else if meta.is_dir() {
            out.push_str(&format!("{name} d--755 0 0\n"));
            xfs_proto(&path, out);
            out.push_str("$\n");
        } else {
            out.push_str(&format!("{name} ---644 0 0 {}\n", path.display()));
        }
    }
}

/// xfs made with `mkfs.xfs -p PROTO` into a file of the computed size.
#[test]
fn xfs_holds_the_tree_at_the_computed_size() {
    for (name, build) in [
        ("small files", many_small_files as fn(&Path)),
        ("large files", large_files),
    ] {
        let work = tempfile::tempdir().unwrap();
        let tree = work.path().join("tree");
        fs::create_dir(&tree).unwrap();
        build(&tree);
        let stats = TreeStats::measure_dir(&tree).unwrap();
        let size = fs_size(FsType::Xfs, &stats, 0, 4096).unwrap();
        let mut proto = String::from("/dev/null\n0 0\nd--755 0 0\n");
        xfs_proto(&tree, &mut proto);
        proto.push_str("$\n");
        let proto_file = work.path().join("proto");
        fs::write(&proto_file, proto).unwrap();
        let image = work.path().join("image");
        fs::File::create(&image)
            .unwrap()
            .set_len(size.bytes)
            .unwrap();
        run(Command::new("mkfs.xfs")
            .arg("-q")
            .arg("-p")
            .arg(&proto_file)
            .arg(&image));
        assert_eq!(fs::metadata(&image).unwrap().len(), size.bytes);
        run(Command::new("xfs_repair").arg("-n").arg(&image));
        let sb = run(Command::new("xfs_db")
            .arg("-r")
            .args(["-c", "sb 0", "-c", "print fdblocks"])
            .arg(&image));
        let free = field(&sb, "fdblocks =") * 4096;
        eprintln!(
            "{name} (xfs): size {} MiB, {free} bytes free ({:.1}%)",
            size.bytes / MIB,
            100.0 * free as f64 / size.bytes as f64
        );
    }
}
