//! Whole store-only disks with `diskSize = "auto"`: several closures, three
//! file systems, several layouts; each image is checked and its slack
//! beyond additionalSpace measured.

use std::fs;
use std::path::PathBuf;
use std::process::Command;
use std::sync::OnceLock;

use nixdisk::spec::{ByteSize, DiskSize, FsType, ImageSpec, PartitionTableType};
use nixdisk::store_image::{Region, build_store_disk};

use super::{MIB, fixture, one_at_a_time, run, store_tree, verify_image};

/// additionalSpace of these tests: small, so that slack shows.
const ADDITIONAL: u64 = 8 * MIB;

/// A named closure and its registration.
struct Closure {
    name: &'static str,
    paths: Vec<PathBuf>,
    registration: String,
}

/// Closures of different shapes: the tiny fixture (with hard links), tens of
/// thousands of small files, and a few large files.
fn closures() -> &'static [Closure] {
    static CLOSURES: OnceLock<Vec<Closure>> = OnceLock::new();
    CLOSURES.get_or_init(|| {
        let dir = tempfile::tempdir().expect("tempdir");
        let small = dir.path().join("nixdisk-test-many-small");
        store_tree::write_bulk_tree(&small, 11, 200, 20_000, 24 * MIB);
        let small = store_tree::add_to_store(&small);
        let large = dir.path().join("nixdisk-test-few-large");
        fs::create_dir(&large).expect("mkdir");
        let mut rng = store_tree::Rng::new(5);
        for i in 0..3 {
            fs::write(
                large.join(format!("large-{i}")),
                rng.bytes((20 + i) as usize * MIB as usize + 12345),
            )
            .expect("write");
        }
        let large = store_tree::add_to_store(&large);
        let make = |name, paths: Vec<PathBuf>| Closure {
            name,
            registration: store_tree::registration(&paths),
            paths,
        };
        vec![
            make("tiny with hard links", fixture().paths.clone()),
            make("20k small files", vec![small]),
            make("a few large files", vec![large]),
        ]
    })
}

fn spec(fs_type: FsType, layout: PartitionTableType) -> ImageSpec {
    ImageSpec {
        only_nix_store: true,
        install_boot_loader: false,
        copy_channel: false,
        fs_type,
        partition_table_type: layout,
        disk_size: DiskSize::Auto,
        additional_space: ByteSize::mib(8),
        ..ImageSpec::default()
    }
}

fn check_disk(fs_type: FsType, layout: PartitionTableType) -> Vec<String> {
    let mut lines = Vec::new();
    for closure in closures() {
        let work = tempfile::tempdir().expect("tempdir");
        let image = work.path().join("disk.img");
        let report = {
            let _one_at_a_time = one_at_a_time();
            build_store_disk(
                &spec(fs_type, layout),
                &closure.paths,
                Some(&closure.registration),
                &image,
            )
            .unwrap_or_else(|e| panic!("{} on {fs_type:?}/{layout:?}: {e}", closure.name))
        };
        assert_eq!(fs::metadata(&image).expect("stat").len(), report.disk_size);
        if layout != PartitionTableType::None && layout != PartitionTableType::Legacy {
            run(Command::new("sgdisk").arg("-v").arg(&image));
        }
        let region = Region {
            offset: report.fs.region.offset,
            size: report.fs.region.size,
        };
        verify_image(
            fs_type,
            &image,
            region,
            work.path(),
            &closure.paths,
            &closure.registration,
        );
        let (extra, share) = report.slack(ADDITIONAL).expect("auto sized");
        lines.push(format!(
            "{fs_type:?} on {layout:?}, {}: fs {} MiB, free {} KiB, slack beyond additionalSpace {} KiB = {:.2}%",
            closure.name,
            region.size / MIB,
            report.free_bytes / 1024,
            extra / 1024,
            share * 100.0
        ));
        assert!(
            report.free_bytes >= ADDITIONAL || fs_type != FsType::Ext4,
            "ext4 keeps additionalSpace free: {}",
            lines.last().expect("line")
        );
        // ext4 has a least size: there the slack is the floor's, not the model's.
        let sized = report.sizing.as_ref().expect("auto sized").bytes;
        if fs_type == FsType::Ext4 && sized == nixdisk::sizing::ext4::MIN_BYTES {
            let line = lines.last_mut().expect("line");
            line.push_str(" (the sizing's 16 MiB ext4 floor)");
        } else if fs_type == FsType::Ext4 {
            let line = lines.last().expect("line");
            assert!(share <= 0.05, "ext4 slack above 5%: {line}");
        }
    }
    lines
}

#[test]
fn auto_sized_ext4_disks_fit_with_little_slack() {
    let mut lines = check_disk(FsType::Ext4, PartitionTableType::Legacy);
    lines.extend(check_disk(FsType::Ext4, PartitionTableType::Efi));
    println!("{}", lines.join("\n"));
}

#[test]
fn auto_sized_erofs_and_squashfs_disks_fit() {
    let mut lines = check_disk(FsType::Erofs, PartitionTableType::Hybrid);
    lines.extend(check_disk(FsType::Squashfs, PartitionTableType::None));
    println!("{}", lines.join("\n"));
}

#[test]
fn deterministic_store_disks_are_byte_identical() {
    let closure = &closures()[0];
    for (fs_type, layout) in [
        (FsType::Ext4, PartitionTableType::Hybrid),
        (FsType::Erofs, PartitionTableType::Legacy),
    ] {
        let images: Vec<Vec<u8>> = (0..2)
            .map(|_| {
                let work = tempfile::tempdir().expect("tempdir");
                let image = work.path().join("disk.img");
                let _one_at_a_time = one_at_a_time();
                build_store_disk(
                    &spec(fs_type, layout),
                    &closure.paths,
                    Some(&closure.registration),
                    &image,
                )
                .expect("build");
                fs::read(&image).expect("read")
            })
            .collect();
        assert!(
            images[0] == images[1],
            "{fs_type:?} on {layout:?}: two builds differ"
        );
    }
}
