//! Exact plans for each file system type.

use std::path::PathBuf;

use uuid::Uuid;

use super::*;

const UUID: &str = "f222513b-ded1-49fa-b591-20ce86a2fe7f";

fn plan(fs_type: FsType, source: FsSource, timestamp: Option<u64>) -> StoreFsPlan {
    StoreFsPlan {
        fs_type,
        source,
        image: "/w/disk.raw".into(),
        region: Region {
            offset: 1 << 20,
            size: 64 << 20,
        },
        label: "nix-store".into(),
        uuid: Some(Uuid::parse_str(UUID).unwrap()),
        timestamp,
        scratch: "/w/s/fs.img".into(),
        bind_mounts: None,
        mkfs_options: Vec::new(),
    }
}

fn tree() -> FsSource {
    FsSource::Tree("/w/s/tree".into())
}

fn argv(step: &Step) -> (String, Vec<(&'static str, String)>) {
    match step {
        Step::Run(command) => (
            crate::host_tool::command_line(command.program, &command.args),
            command.env.clone(),
        ),
        other => panic!("expected a command, got {other:?}"),
    }
}

#[test]
fn deterministic_ext4_fixes_uuid_seed_and_times() {
    let steps = plan(FsType::Ext4, tree(), Some(1)).steps().unwrap();
    assert_eq!(steps.len(), 3);
    assert_eq!(
        steps[0],
        Step::EnsureImageLength {
            image: "/w/disk.raw".into(),
            len: 65 << 20
        }
    );
    assert_eq!(
        argv(&steps[1]),
        (
            format!(
                "mke2fs -q -F -t ext4 -b 4096 -L nix-store -U {UUID} \
                 -E offset=1048576,root_owner=0:0,hash_seed={UUID} -d /w/s/tree /w/disk.raw 65536k"
            ),
            vec![("E2FSPROGS_FAKE_TIME", "1".to_owned())]
        )
    );
    assert_eq!(
        steps[2],
        Step::FixExt4Times {
            image: "/w/disk.raw".into(),
            offset: 1 << 20,
            timestamp: 1
        }
    );
}

#[test]
fn non_deterministic_ext4_leaves_seed_and_times_alone() {
    let mut plan = plan(FsType::Ext3, tree(), None);
    plan.uuid = None;
    let steps = plan.steps().unwrap();
    assert_eq!(steps.len(), 2);
    assert_eq!(
        argv(&steps[1]),
        (
            "mke2fs -q -F -t ext3 -b 4096 -L nix-store -E offset=1048576,root_owner=0:0 -d /w/s/tree /w/disk.raw 65536k"
                .to_owned(),
            vec![]
        )
    );
}

#[test]
fn ext4_checks_region_label_and_uuid() {
    let mut odd = plan(FsType::Ext4, tree(), Some(1));
    odd.region.size += 512;
    assert!(matches!(
        odd.steps(),
        Err(StoreImageError::BadRegion { .. })
    ));
    let mut long = plan(FsType::Ext4, tree(), Some(1));
    long.label = "a-label-of-17-ch!".into();
    assert!(matches!(
        long.steps(),
        Err(StoreImageError::LabelTooLong { max: 16, .. })
    ));
    let mut no_uuid = plan(FsType::Ext4, tree(), Some(1));
    no_uuid.uuid = None;
    assert!(matches!(
        no_uuid.steps(),
        Err(StoreImageError::DeterministicWithoutUuid)
    ));
    let paths = plan(FsType::Ext4, FsSource::Paths(vec![]), Some(1));
    assert!(matches!(
        paths.steps(),
        Err(StoreImageError::NeedsStaging { .. })
    ));
}

#[test]
fn erofs_is_built_apart_and_copied_in() {
    let steps = plan(FsType::Erofs, tree(), Some(1)).steps().unwrap();
    assert_eq!(
        argv(&steps[0]).0,
        format!("mkfs.erofs --quiet -x -1 --all-root -T1 -U{UUID} /w/s/fs.img /w/s/tree")
    );
    assert_eq!(
        steps[1..],
        [
            Step::EnsureImageLength {
                image: "/w/disk.raw".into(),
                len: 65 << 20
            },
            Step::CopyIntoRegion {
                from: "/w/s/fs.img".into(),
                image: "/w/disk.raw".into(),
                region: Region {
                    offset: 1 << 20,
                    size: 64 << 20
                }
            }
        ]
    );
}

#[test]
fn squashfs_takes_the_store_paths_directly() {
    let paths = FsSource::Paths(vec![
        PathBuf::from("/nix/store/a-x"),
        PathBuf::from("/w/s/reg/nix-path-registration"),
    ]);
    let steps = plan(FsType::Squashfs, paths, Some(1)).steps().unwrap();
    assert_eq!(
        steps[0],
        Step::SettleAccessTimes {
            roots: vec![
                "/nix/store/a-x".into(),
                "/w/s/reg/nix-path-registration".into()
            ]
        }
    );
    assert_eq!(
        argv(&steps[1]).0,
        "mksquashfs /nix/store/a-x /w/s/reg/nix-path-registration /w/s/fs.img -noappend -quiet -no-progress \
         -no-xattrs -all-root -root-mode 0755 -comp zstd -keep-as-directory \
         -reproducible -mkfs-time 1 -all-time 1"
    );
    assert!(matches!(steps[3], Step::CopyIntoRegion { .. }));
    let staged = plan(FsType::Squashfs, tree(), None).steps().unwrap();
    assert_eq!(
        argv(&staged[1]).0,
        "mksquashfs /w/s/tree /w/s/fs.img -noappend -quiet -no-progress -no-xattrs -all-root -root-mode 0755 \
         -comp zstd -not-reproducible"
    );
}

#[test]
fn other_file_systems_are_refused_with_the_allowed_ones() {
    for fs_type in [FsType::Btrfs, FsType::Xfs, FsType::Vfat] {
        let error = plan(fs_type, tree(), Some(1)).steps().unwrap_err();
        assert!(
            error
                .to_string()
                .contains("use ext4, ext3, ext2, erofs or squashfs"),
            "{error}"
        );
    }
}

#[test]
fn tool_failures_about_space_get_a_hint() {
    assert!(space_hint("mke2fs: Could not allocate block in ext2 filesystem").contains("diskSize"));
    assert_eq!(space_hint("mke2fs: Bad magic number"), "");
    let gone = "mount: /w/root/nix/store/abc-x: special device /nix/store/abc-x does not exist.";
    assert!(
        space_hint(gone).contains("vanished"),
        "{}",
        space_hint(gone)
    );
}

#[test]
fn bind_mounts_wrap_the_tool_in_a_mount_namespace() {
    let mut plan = plan(FsType::Ext4, tree(), Some(1));
    plan.bind_mounts = Some("/w/s/fstab".into());
    let steps = plan.steps().unwrap();
    let (line, env) = argv(&steps[1]);
    assert_eq!(
        line,
        format!(
            "unshare --mount --propagation private -- sh -e -c mount -a -T \"$1\"; shift; exec \"$@\" sh /w/s/fstab \
             mke2fs -q -F -t ext4 -b 4096 -L nix-store -U {UUID} \
             -E offset=1048576,root_owner=0:0,hash_seed={UUID} -d /w/s/tree /w/disk.raw 65536k"
        )
    );
    assert_eq!(env, vec![("E2FSPROGS_FAKE_TIME", "1".to_owned())]);
    plan.fs_type = FsType::Erofs;
    assert!(
        argv(&plan.steps().unwrap()[0])
            .0
            .starts_with("unshare --mount")
    );
}

#[test]
fn sized_ext4_takes_the_sizing_options() {
    let mut plan = plan(FsType::Ext4, tree(), None);
    plan.mkfs_options = ["-F", "-t", "ext4", "-b", "4096", "-N", "96", "-m", "0"]
        .map(String::from)
        .into();
    let steps = plan.steps().unwrap();
    assert_eq!(
        argv(&steps[1]).0,
        format!(
            "mke2fs -q -F -t ext4 -b 4096 -N 96 -m 0 -L nix-store -U {UUID} \
             -E offset=1048576,root_owner=0:0 -d /w/s/tree /w/disk.raw 65536k"
        )
    );
}
