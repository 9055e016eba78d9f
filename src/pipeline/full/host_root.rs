//! The root file system of a full image made on the host: for ext2/3/4,
//! `mke2fs -d` writes the staged image root with the closure under
//! `nix/store` straight into the root partition's bytes of the raw image, as
//! store-only images are made ([`crate::store_image`]), so the builder VM no
//! longer copies the closure file by file over 9p. The VM still makes the
//! boot partitions and installs the bootloader, which mounts this root.
//! Other file systems (btrfs, xfs) have no such tool here: the guest copies.

use std::path::Path;
use std::thread::{Scope, ScopedJoinHandle};

use uuid::Uuid;

use super::FullImageError;
use crate::builder_vm::{BuilderVm, BuilderVmConfig};
use crate::closure::Closure;
use crate::layout::{self, PartitionTable};
use crate::sizing::FsSize;
use crate::spec::{FsType, ImageSpec};
use crate::store_image::{self, Region, StagingMode, StoreImageError, StoreImageOptions};

/// The timings phase of making the root file system with the closure.
pub const PHASE: &str = "root file system and closure (host mke2fs -d)";

/// Whether nixdisk makes a root of `fs_type` on the host (ext2/3/4).
pub fn makes_root_on_host(fs_type: FsType) -> bool {
    matches!(fs_type, FsType::Ext2 | FsType::Ext3 | FsType::Ext4)
}

/// The root partition's byte range: where `mke2fs -E offset=` writes.
pub fn root_region(table: &PartitionTable) -> Region {
    let root = layout::root_partition(table);
    Region {
        offset: root.start,
        size: root.size,
    }
}

/// The options of the root file system: the spec's label and UUID, the
/// sizing's mkfs options, and the staged image root to hold the store.
pub fn root_fs_options(
    spec: &ImageSpec,
    mkfs_options: &[String],
    staging: &Path,
) -> Result<StoreImageOptions, StoreImageError> {
    let value = spec.effective_root_fsuid();
    let uuid = Uuid::parse_str(value).map_err(|_| StoreImageError::BadUuid {
        value: value.to_owned(),
    })?;
    Ok(StoreImageOptions {
        fs_type: spec.fs_type,
        label: spec.effective_label().to_owned(),
        uuid: Some(uuid),
        deterministic: spec.deterministic,
        registration: None,
        staging: StagingMode::Auto,
        mkfs_options: mkfs_options.to_vec(),
        image_root: Some(staging.to_owned()),
    })
}

/// Makes the root file system with the closure and the staged root in it.
pub fn make_root_fs(
    spec: &ImageSpec,
    closure: &Closure,
    staging: &Path,
    raw: &Path,
    table: &PartitionTable,
    size: &FsSize,
) -> Result<(), FullImageError> {
    let paths: Vec<_> = closure.store_paths().map(Path::to_path_buf).collect();
    let options = root_fs_options(spec, &size.mkfs_options, staging)?;
    store_image::build_store_fs(&paths, &options, raw, root_region(table))?;
    Ok(())
}

/// The root file system being made on a thread of its own while the builder
/// VM starts.
pub struct RootJob<'scope> {
    handle: ScopedJoinHandle<'scope, Result<(), FullImageError>>,
    done: tokio::sync::oneshot::Receiver<()>,
}

impl<'scope> RootJob<'scope> {
    /// Runs `make` on a thread of `scope`.
    pub fn spawn<'env>(
        scope: &'scope Scope<'scope, 'env>,
        make: impl FnOnce() -> Result<(), FullImageError> + Send + 'scope,
    ) -> RootJob<'scope> {
        let (tx, done) = tokio::sync::oneshot::channel();
        let handle = scope.spawn(move || {
            let made = make();
            // Dropped unsent on a panic, which also wakes the waiter.
            let _ = tx.send(());
            made
        });
        RootJob { handle, done }
    }

    /// Resolves when the thread has ended (or is ending, on a panic).
    pub async fn finished(&mut self) {
        let _ = (&mut self.done).await;
    }

    /// The thread's result (waiting for it; a panic carries on here).
    pub fn join(self) -> Result<(), FullImageError> {
        tokio::task::block_in_place(|| self.handle.join())
            .unwrap_or_else(|panic| std::panic::resume_unwind(panic))
    }
}

/// Starts the builder VM while `root` is made on the host, and waits for
/// both. A root that fails first ends the start at once (dropping it kills
/// QEMU and the daemon and removes the run directory); a start that ends
/// first still waits for the root, so no mke2fs is left writing the image.
pub async fn start_alongside(
    config: &BuilderVmConfig,
    root: Option<RootJob<'_>>,
) -> Result<BuilderVm, FullImageError> {
    let Some(mut root) = root else {
        return BuilderVm::start(config)
            .await
            .map_err(super::vm_error("starting"));
    };
    let start = BuilderVm::start(config);
    tokio::pin!(start);
    let started = tokio::select! {
        vm = &mut start => Some(vm),
        () = root.finished() => None,
    };
    let made = root.join();
    match started {
        Some(vm) => {
            let vm = vm.map_err(super::vm_error("starting"))?;
            made?;
            Ok(vm)
        }
        None => {
            made?;
            start.await.map_err(super::vm_error("starting"))
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::spec::PartitionTableType;

    #[test]
    fn only_ext_roots_are_made_on_the_host() {
        assert!(makes_root_on_host(FsType::Ext4));
        assert!(makes_root_on_host(FsType::Ext3));
        assert!(makes_root_on_host(FsType::Ext2));
        assert!(!makes_root_on_host(FsType::Btrfs));
        assert!(!makes_root_on_host(FsType::Xfs));
    }

    #[test]
    fn the_root_region_is_the_root_partition() {
        let spec = ImageSpec {
            partition_table_type: PartitionTableType::Efi,
            ..ImageSpec::default()
        };
        let table = layout::plan(&spec, 1 << 30).expect("plans");
        let root = layout::root_partition(&table);
        assert_eq!(
            root_region(&table),
            Region {
                offset: root.start,
                size: root.size
            }
        );
        assert!(root.start >= 256 << 20, "the ESP comes first");
    }

    #[test]
    fn root_options_carry_the_spec_and_the_staged_root() {
        let spec = ImageSpec {
            deterministic: true,
            ..ImageSpec::default()
        };
        let mkfs = ["-F".to_owned(), "-t".to_owned(), "ext4".to_owned()];
        let options = root_fs_options(&spec, &mkfs, Path::new("/w/image-root")).expect("valid");
        assert_eq!(options.label, spec.effective_label());
        assert_eq!(
            options.uuid.map(|u| u.to_string()),
            Some(spec.effective_root_fsuid().to_lowercase())
        );
        assert_eq!(options.mkfs_options, mkfs);
        assert_eq!(
            options.image_root.as_deref(),
            Some(Path::new("/w/image-root"))
        );
        assert!(options.deterministic && options.registration.is_none());
    }
}
