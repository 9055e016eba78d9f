//! A whole store-only disk: auto size, partition table, and the store file
//! system in the root partition.
//!
//! The flow of `onlyNixStore` builds: measure the closure (plus the
//! registration file) and size the file system with [`crate::sizing`], add the
//! layout's partitions with [`crate::layout`], write the table, then build
//! the file system into the root partition's byte range with
//! [`super::build_store_fs`], with exactly the mkfs options the size was
//! computed for. The report says how much room is left, to check the sizing
//! against reality.

use std::fs::{self, OpenOptions};
use std::path::{Path, PathBuf};

use uuid::Uuid;

use super::{
    REGISTRATION_FILE, Region, StagingMode, StoreFsReport, StoreImageError, StoreImageOptions,
    build_store_fs,
};
use crate::layout::{self, PartitionTable, TableKind};
use crate::reproducible::ext4_inodes;
use crate::sizing::{self, FsSize, TreeStats};
use crate::spec::{DiskSize, FsType, ImageSpec};

/// What building a store disk gave.
#[derive(Debug, Clone)]
pub struct StoreDiskReport {
    /// Size of the whole disk image.
    pub disk_size: u64,
    /// Its partitions.
    pub table: PartitionTable,
    /// The auto size computation, when `diskSize` was auto.
    pub sizing: Option<FsSize>,
    /// The store file system.
    pub fs: StoreFsReport,
    /// Bytes still free in the file system (ext: free blocks; read-only file
    /// systems: the partition's bytes the image does not use).
    pub free_bytes: u64,
}

impl StoreDiskReport {
    /// Free bytes beyond what `additionalSpace` asked for, when auto sized:
    /// the sizing's slack, as a share of the file system.
    pub fn slack(&self, additional_space: u64) -> Option<(u64, f64)> {
        self.sizing.as_ref()?;
        let extra = self.free_bytes.saturating_sub(additional_space);
        Some((extra, extra as f64 / self.fs.region.size as f64))
    }
}

/// Builds the store-only disk `spec` describes, holding `store_paths` (the
/// closure), into the new file `image`; `registration` becomes
/// `nix-path-registration` at the root when given.
pub fn build_store_disk(
    spec: &ImageSpec,
    store_paths: &[PathBuf],
    registration: Option<&str>,
    image: &Path,
) -> Result<StoreDiskReport, StoreImageError> {
    let fs_type = spec.fs_type;
    let uuid = parse_uuid(spec.effective_root_fsuid())?;
    let (sizing, disk_size) = match spec.disk_size {
        DiskSize::Auto => {
            let size = size_store_fs(spec, store_paths, registration)?;
            let disk_size = layout::disk_size_for_root(spec, size.bytes);
            (Some(size), disk_size)
        }
        DiskSize::Fixed(bytes) => (None, bytes.bytes()),
    };
    let table = layout::plan(spec, disk_size)?;
    let file = OpenOptions::new()
        .create_new(true)
        .write(true)
        .open(image)
        .map_err(|e| io("could not create the image", image, e))?;
    file.set_len(disk_size)
        .map_err(|e| io("could not size the image", image, e))?;
    drop(file);
    if table.kind != TableKind::None {
        layout::write_table(&table, image)?;
    }
    let root = layout::root_partition(&table);
    let region = Region {
        offset: root.start,
        size: root.size,
    };
    tracing::info!(
        disk = disk_size,
        offset = region.offset,
        size = region.size,
        layout = spec.partition_table_type.as_str(),
        "store disk laid out"
    );
    let options = StoreImageOptions {
        fs_type,
        label: spec.effective_label().to_owned(),
        uuid: Some(uuid),
        deterministic: spec.deterministic,
        registration: registration.map(str::to_owned),
        staging: StagingMode::Auto,
        mkfs_options: sizing
            .as_ref()
            .map(|s| s.mkfs_options.clone())
            .unwrap_or_default(),
        image_root: None,
    };
    let fs = build_store_fs(store_paths, &options, image, region)?;
    let free_bytes = match fs_type {
        FsType::Ext2 | FsType::Ext3 | FsType::Ext4 => {
            ext4_inodes::free_bytes(image, region.offset)?
        }
        _ => region.size - fs.fs_bytes,
    };
    Ok(StoreDiskReport {
        disk_size,
        table,
        sizing,
        fs,
        free_bytes,
    })
}

/// Sizes the store file system: the closure and the registration file at
/// the root, plus `additionalSpace` free.
fn size_store_fs(
    spec: &ImageSpec,
    store_paths: &[PathBuf],
    registration: Option<&str>,
) -> Result<FsSize, StoreImageError> {
    let scratch = tempfile::tempdir().map_err(|e| {
        io(
            "could not create a scratch directory in",
            &std::env::temp_dir(),
            e,
        )
    })?;
    let mut measured: Vec<PathBuf> = store_paths.to_vec();
    if let Some(text) = registration {
        let file = scratch.path().join(REGISTRATION_FILE);
        fs::write(&file, text).map_err(|e| io("could not write", &file, e))?;
        measured.push(file);
    }
    let stats = TreeStats::measure(&measured)?;
    let size = sizing::fs_size(
        spec.fs_type,
        &stats,
        spec.additional_space.bytes(),
        sizing::default_block_size(spec.fs_type),
    )?;
    tracing::info!(bytes = size.bytes, "store file system sized");
    Ok(size)
}

fn parse_uuid(value: &str) -> Result<Uuid, StoreImageError> {
    Uuid::parse_str(value).map_err(|_| StoreImageError::BadUuid {
        value: value.to_owned(),
    })
}

fn io(action: &'static str, path: &Path, source: std::io::Error) -> StoreImageError {
    StoreImageError::Io {
        action,
        path: path.to_owned(),
        source,
    }
}
