//! Arbitrary bytes at both ends of a disk of arbitrary size (GPT checksums
//! optionally made valid, so mutations get past them) into the partition
//! table reader: it may refuse the disk but never panic, and a table it
//! reads, written by nixdisk's writer onto a blank disk of the same size,
//! reads back equal.

#![no_main]

use std::path::Path;

use libfuzzer_sys::fuzz_target;
use nixdisk::layout::{read_table_from, write_table_to};
use nixdisk::spec::FsType;
use nixdisk_fuzz::{SparseDisk, TableInput};

fuzz_target!(|input: &[u8]| {
    let Some(input) = TableInput::parse(input) else {
        return;
    };
    let path = Path::new("fuzz.img");
    let mut disk = input.disk();
    let table = match read_table_from(&mut disk, path, FsType::Ext4) {
        Ok(table) => table,
        Err(error) => {
            assert!(!error.to_string().is_empty());
            return;
        }
    };
    let mut blank = SparseDisk::new(input.disk_size);
    if write_table_to(&table, &mut blank, path).is_err() {
        return;
    }
    let again = read_table_from(&mut blank, path, FsType::Ext4).expect("a written table reads");
    assert_eq!(again, table);
});
