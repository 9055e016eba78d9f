//! Properties of planned tables over random disk sizes, boot sizes and layouts.

use proptest::prelude::*;

use super::*;
use crate::spec::{ImageSpec, MIB};

fn spec(layout: PartitionTableType) -> ImageSpec {
    ImageSpec {
        partition_table_type: layout,
        ..ImageSpec::default()
    }
}

fn any_layout() -> impl Strategy<Value = PartitionTableType> {
    proptest::sample::select(PartitionTableType::ALL.to_vec())
}

/// Checks what every planned table must satisfy.
fn check_invariants(table: &PartitionTable) {
    let gpt_end = table.disk_size.saturating_sub(33 * SECTOR_SIZE);
    let mut sorted: Vec<&Partition> = table.partitions.iter().collect();
    sorted.sort_by_key(|p| p.start);
    for pair in sorted.windows(2) {
        assert!(pair[0].end() <= pair[1].start, "overlap: {pair:?}");
    }
    for p in &table.partitions {
        assert!(p.size > 0, "{p:?}");
        assert!(p.end() <= table.disk_size, "{p:?}");
        if table.kind == TableKind::None {
            continue;
        }
        assert_eq!(p.start % MIB, 0, "{p:?}");
        assert_eq!(p.size % MIB, 0, "{p:?}");
        // The first MiB holds the MBR and the primary GPT.
        assert!(p.start >= MIB, "{p:?}");
        if table.kind.has_gpt() {
            assert!(p.end() <= gpt_end, "{p:?} runs into the backup GPT");
        }
    }
    // Root takes all that is left: less than one MiB stays unused at the end.
    let root_limit = if table.kind.has_gpt() {
        gpt_end
    } else {
        table.disk_size
    };
    assert!(root_limit - table.root().end() < MIB);
}

proptest! {
    #[test]
    fn plans_are_aligned_disjoint_and_inside_the_disk(
        layout in any_layout(),
        // Small disks find the minimum, large ones the 2 TiB limit of MBR.
        disk_size in prop_oneof![0u64..(2u64 << 30), 0u64..(4u64 << 40)],
        boot_size in 0u64..(2u64 << 30),
    ) {
        let spec = ImageSpec { boot_size: ByteSize(boot_size), ..spec(layout) };
        match plan(&spec, disk_size) {
            Ok(table) => {
                prop_assert!(disk_size >= minimum_disk_size(&spec));
                check_invariants(&table);
                prop_assert_eq!(plan(&spec, disk_size).unwrap(), table);
            }
            Err(LayoutError::DiskTooSmall { minimum_bytes, .. }) => {
                prop_assert!(disk_size < minimum_bytes);
                prop_assert_eq!(minimum_bytes, minimum_disk_size(&spec));
            }
            Err(LayoutError::BootSizeTooSmall { minimum, .. }) => prop_assert!(boot_size < minimum.bytes()),
            Err(LayoutError::TooLargeForMbr { .. }) => prop_assert!(disk_size > (2u64 << 40)),
            Err(other) => prop_assert!(false, "unexpected error {other}"),
        }
    }

    #[test]
    fn disk_size_for_root_is_the_smallest_disk_that_holds_root(
        layout in any_layout(),
        root_bytes in 0u64..(1u64 << 40),
        boot_mib in 101u64..2048,
    ) {
        let spec = ImageSpec { boot_size: ByteSize::mib(boot_mib), ..spec(layout) };
        let disk = disk_size_for_root(&spec, root_bytes);
        prop_assert_eq!(disk % MIB, 0);
        let table = plan(&spec, disk).unwrap();
        prop_assert!(table.root().size >= root_bytes);
        let smaller = disk - MIB;
        match plan(&spec, smaller) {
            Ok(table) => prop_assert!(table.root().size < root_bytes.max(1)),
            Err(error) => {
                let too_small = matches!(error, LayoutError::DiskTooSmall { .. });
                prop_assert!(too_small, "unexpected error {}", error);
            }
        }
    }
}
