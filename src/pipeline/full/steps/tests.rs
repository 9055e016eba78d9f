use super::*;
use crate::layout;
use crate::spec::PartitionTableType;

fn spec(layout: PartitionTableType) -> ImageSpec {
    ImageSpec {
        system: Some("/nix/store/x-system".into()),
        partition_table_type: layout,
        ..ImageSpec::default()
    }
}

fn inputs() -> StepInputs {
    StepInputs {
        root_mkfs_options: vec![
            "-F".into(),
            "-t".into(),
            "ext4".into(),
            "-N".into(),
            "96".into(),
        ],
        grub_devices: vec![],
        chowns: vec![],
        efi_vars: false,
        root_on_host: false,
    }
}

fn steps_for(layout: PartitionTableType, inputs: &StepInputs) -> Vec<Step> {
    let spec = spec(layout);
    let table = layout::plan(&spec, 1 << 30).unwrap();
    plan_steps(&spec, &table, inputs)
}

#[test]
fn legacy_makes_root_mounts_it_and_installs_the_bootloader() {
    let steps = steps_for(PartitionTableType::Legacy, &inputs());
    let names: Vec<_> = steps.iter().map(|s| s.name).collect();
    assert_eq!(
        names,
        [
            "make file systems",
            "copy the closure",
            "mount boot partitions",
            "install the bootloader",
            "unmount and sync"
        ]
    );
    assert_eq!(
        steps[0].script,
        "E2FSPROGS_FAKE_TIME=1 mke2fs -F -t ext4 -N 96 -L nixos \
         -U f222513b-ded1-49fa-b591-20ce86a2fe7f -E hash_seed=f222513b-ded1-49fa-b591-20ce86a2fe7f \
         /dev/vda1 >/dev/null\nmkdir -p /mnt/root\nmount -o nodelalloc /dev/vda1 /mnt/root\n"
    );
    assert_eq!(steps[2].script, ":\n");
    assert!(steps[3].script.ends_with(
        "NIXOS_INSTALL_BOOTLOADER=1 chroot /mnt/root \
         /nix/var/nix/profiles/system/bin/switch-to-configuration boot\n"
    ));
}

#[test]
fn a_root_made_on_the_host_is_only_mounted() {
    let inputs = StepInputs {
        root_on_host: true,
        ..inputs()
    };
    let steps = steps_for(PartitionTableType::Efi, &inputs);
    let names: Vec<_> = steps.iter().map(|s| s.name).collect();
    assert_eq!(
        names,
        [
            "make boot file systems and mount",
            "install the bootloader",
            "unmount and sync"
        ]
    );
    let esp_id = steps[0]
        .script
        .strip_prefix("mkfs.vfat -n ESP -i ")
        .and_then(|rest| rest.split_once(' '))
        .map(|(id, _)| id)
        .expect("the ESP is made first");
    assert_eq!(
        steps[0].script,
        format!(
            "mkfs.vfat -n ESP -i {esp_id} /dev/vda1 >/dev/null\n\
             mkdir -p /mnt/root\nmount -o nodelalloc /dev/vda2 /mnt/root\n\
             mkdir -p /mnt/root/boot\n\
             mount -t vfat -o codepage=437,iocharset=iso8859-1 /dev/vda1 /mnt/root/boot\n"
        )
    );
    let legacy = steps_for(PartitionTableType::Legacy, &inputs);
    assert_eq!(
        legacy[0].script,
        "mkdir -p /mnt/root\nmount -o nodelalloc /dev/vda1 /mnt/root\n:\n"
    );
}

#[test]
fn efi_formats_and_mounts_the_esp_at_boot() {
    let steps = steps_for(PartitionTableType::Efi, &inputs());
    assert!(
        steps[0].script.starts_with("mkfs.vfat -n ESP -i "),
        "{}",
        steps[0].script
    );
    assert!(steps[0].script.contains(" /dev/vda1 >/dev/null\n"));
    assert!(
        steps[0]
            .script
            .contains("mount -o nodelalloc /dev/vda2 /mnt/root\n")
    );
    assert_eq!(
        steps[2].script,
        "mkdir -p /mnt/root/boot\nmount -t vfat -o codepage=437,iocharset=iso8859-1 /dev/vda1 /mnt/root/boot\n"
    );
}

#[test]
fn efixbootldr_mounts_esp_at_efi_and_xbootldr_at_boot() {
    let steps = steps_for(PartitionTableType::EfiXbootldr, &inputs());
    assert_eq!(
        steps[2].script,
        "mkdir -p /mnt/root/boot\nmount -t vfat -o codepage=437,iocharset=iso8859-1 /dev/vda2 /mnt/root/boot\n\
         mkdir -p /mnt/root/efi\nmount -t vfat -o codepage=437,iocharset=iso8859-1 /dev/vda1 /mnt/root/efi\n"
    );
}

#[test]
fn none_uses_the_whole_disk() {
    let steps = steps_for(PartitionTableType::None, &inputs());
    assert!(steps[0].script.contains(" /dev/vda >/dev/null\n"));
    assert!(
        steps[0]
            .script
            .ends_with("mount -o nodelalloc /dev/vda /mnt/root\n")
    );
}

#[test]
fn grub_devices_link_to_the_target_and_chowns_follow() {
    let mut inputs = inputs();
    inputs.grub_devices = vec!["/dev/vda".into(), "/dev/disk/by-id/x y".into()];
    inputs.chowns = vec![ChownOp {
        index: 0,
        target: "/home/alice".into(),
        uid: 1000,
        gid: 100,
    }];
    let steps = steps_for(PartitionTableType::Legacy, &inputs);
    assert!(steps[3].script.contains(
        "mkdir -p \"$(dirname '/dev/disk/by-id/x y')\"\nln -sfn /dev/vda '/dev/disk/by-id/x y'\n"
    ));
    assert!(!steps[3].script.contains("ln -sfn /dev/vda /dev/vda"));
    assert_eq!(steps[4].name, "set owners of contents");
    assert_eq!(
        steps[4].script,
        "chown -R -h 1000:100 /mnt/root/home/alice\n"
    );
}

#[test]
fn no_bootloader_step_without_install_boot_loader() {
    let spec = ImageSpec {
        install_boot_loader: false,
        ..spec(PartitionTableType::Legacy)
    };
    let table = layout::plan(&spec, 1 << 30).unwrap();
    let steps = plan_steps(&spec, &table, &inputs());
    assert!(steps.iter().all(|s| s.name != "install the bootloader"));
}

#[test]
fn only_deterministic_ext4_is_mounted_without_delayed_allocation() {
    let mut spec = spec(PartitionTableType::None);
    spec.deterministic = false;
    let table = layout::plan(&spec, 1 << 30).unwrap();
    let steps = plan_steps(&spec, &table, &inputs());
    assert!(steps[0].script.ends_with("\nmount /dev/vda /mnt/root\n"));
}

#[test]
fn failed_steps_get_a_hint_from_their_output() {
    use crate::spec::ByteSize;
    let full = "cp: error writing '/mnt/root/nix/store/x/data': No space left on device";
    let fixed = failure_hint(full, Space::Root(DiskSize::Fixed(ByteSize(64 << 20))));
    assert!(
        fixed.starts_with("\nhint: the data outgrew the fixed diskSize"),
        "{fixed}"
    );
    let auto = failure_hint(full, Space::Root(DiskSize::Auto));
    assert!(auto.contains("please report this"), "{auto}");
    let boot = failure_hint(
        "cp: write error: No space left on device",
        Space::Boot(ByteSize(16 << 20)),
    );
    assert!(
        boot.starts_with("\nhint: the boot partition is full: bootSize 16")
            && boot.contains("--boot-size"),
        "{boot}"
    );
    let gone = "cp: cannot stat '/nix/store/abc-x': No such file or directory";
    assert!(failure_hint(gone, Space::Root(DiskSize::Auto)).contains("vanished"));
    assert_eq!(
        failure_hint("mkfs.ext4: bad option", Space::Root(DiskSize::Auto)),
        ""
    );
}

/// What the spec lets through to a script (labels and contents targets with
/// quotes, `$(...)`, backquotes, globs, blanks) reaches the real `sh` as one
/// word with exactly its text, running nothing.
#[test]
fn quoted_spec_values_reach_sh_unchanged() {
    let scratch = tempfile::tempdir().unwrap();
    let witness = scratch.path().join("ran");
    let hostile = [
        format!("$(touch {})", witness.display()),
        format!("`touch {}`", witness.display()),
        format!("x'; touch {}; '", witness.display()),
        "a b\tc *".to_owned(),
        "\"$HOME\" \\ ! # ~ & | ; < > ( ) { } [ ]".to_owned(),
        "-n".to_owned(),
    ];
    for text in hostile {
        let output = std::process::Command::new("sh")
            .arg("-c")
            .arg(format!("printf '%s' {}", quote(&text)))
            .current_dir(scratch.path())
            .output()
            .unwrap();
        assert_eq!(String::from_utf8_lossy(&output.stdout), text);
        assert!(!witness.exists(), "{text:?} ran a command");
    }
    let mut labelled = spec(PartitionTableType::None);
    labelled.label = Some("it's $(x)".into());
    let table = layout::plan(&labelled, 512 * 1024 * 1024).unwrap();
    let script = &plan_steps(&labelled, &table, &inputs())[0].script;
    assert!(script.contains(r"-L 'it'\''s $(x)'"), "{script}");
}
