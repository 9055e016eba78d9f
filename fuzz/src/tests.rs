//! The seeds of the partition-table target are tables nixdisk's own writer
//! makes: this test writes every layout on a few disk sizes and compares
//! with the committed seeds. `NIXDISK_FUZZ_WRITE_SEEDS=1 cargo test` (in
//! `fuzz/`, with `CARGO_TARGET_DIR=../target` to reuse the main build)
//! rewrites them after a change of the writer.

use std::path::Path;

use nixdisk::layout::{plan, read_table_from, write_table_to};
use nixdisk::spec::{ByteSize, FsType, ImageSpec, MIB, PartitionTableType};

use super::{SparseDisk, TableInput, crc32};

#[test]
fn crc32_check_value() {
    assert_eq!(crc32(b"123456789"), 0xCBF4_3926);
}

/// Every layout on a small, a middling and a 3 GiB disk; GPT layouts also
/// with random GUIDs. Names say what each seed is.
fn seeds() -> Vec<(String, Vec<u8>)> {
    let mut seeds = Vec::new();
    for layout in PartitionTableType::ALL {
        for disk_mib in [130, 700, 3072] {
            for deterministic in [true, false] {
                let spec = ImageSpec {
                    partition_table_type: layout,
                    boot_size: ByteSize::mib(100 + 16),
                    deterministic,
                    ..ImageSpec::default()
                };
                let table = plan(&spec, disk_mib * MIB).expect("a planned table");
                if !deterministic && !table.kind.has_gpt() {
                    continue;
                }
                let mut disk = SparseDisk::new(disk_mib * MIB);
                write_table_to(&table, &mut disk, Path::new("seed")).expect("written");
                let read = read_table_from(&mut disk, Path::new("seed"), FsType::Ext4);
                assert_eq!(read.expect("reads back"), table);
                let ids = if deterministic { "fixed" } else { "random" };
                let name = format!("{}-{disk_mib}m-{ids}", layout.as_str().replace('+', "-"));
                seeds.push((name, TableInput::encode(&mut disk, deterministic)));
            }
        }
    }
    seeds
}

#[test]
fn partition_table_seeds_are_the_writers_tables() {
    let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("seeds/partition_table");
    let write = std::env::var_os("NIXDISK_FUZZ_WRITE_SEEDS").is_some();
    for (name, bytes) in seeds() {
        let path = dir.join(&name);
        if write {
            std::fs::create_dir_all(&dir).unwrap();
            std::fs::write(&path, &bytes).unwrap();
            continue;
        }
        let committed = std::fs::read(&path).unwrap_or_else(|e| panic!("{name}: {e}"));
        // Random GUIDs differ from run to run: those compare by size and flags.
        if name.ends_with("-fixed") {
            assert!(committed == bytes, "{name}: the writer's table changed");
        } else {
            assert_eq!(committed[..5], bytes[..5], "{name}");
        }
    }
}
