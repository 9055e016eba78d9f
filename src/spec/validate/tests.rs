//! Unit tests for every validation rule: each rule refuses what it should,
//! names the right field, and lets the nearest good value through.

use std::path::PathBuf;

use super::*;
use crate::spec::{ContentEntry, FsType};

/// A spec that passes: the defaults plus a system.
pub(super) fn valid() -> ImageSpec {
    ImageSpec {
        system: Some(PathBuf::from("/nix/store/aaaa-nixos-system")),
        ..ImageSpec::default()
    }
}

/// Asserts that `spec` is refused because of `field`, and returns the message.
#[track_caller]
pub(super) fn refused(spec: &ImageSpec, field: &str) -> String {
    match validate(spec) {
        Ok(()) => panic!("spec with bad `{field}` was accepted: {spec:?}"),
        Err(error) => {
            assert_eq!(error.field(), Some(field), "wrong field in: {error}");
            error.to_string()
        }
    }
}

#[track_caller]
pub(super) fn accepted(spec: &ImageSpec) {
    if let Err(error) = validate(spec) {
        panic!("refused: {error}\nspec: {spec:?}");
    }
}

pub(super) fn entry(target: &str) -> ContentEntry {
    ContentEntry {
        source: "/etc/hosts".into(),
        target: target.into(),
        mode: None,
        user: None,
        group: None,
    }
}

#[test]
fn defaults_with_a_system_pass_on_every_layout() {
    for layout in PartitionTableType::ALL {
        accepted(&ImageSpec {
            partition_table_type: layout,
            ..valid()
        });
    }
}

#[test]
fn a_system_is_required() {
    let spec = ImageSpec {
        system: None,
        ..valid()
    };
    assert!(matches!(validate(&spec), Err(SpecError::MissingSystem)));
    // Store-only images may hold just additional paths...
    accepted(&ImageSpec {
        system: None,
        only_nix_store: true,
        install_boot_loader: false,
        additional_paths: vec!["/nix/store/bbbb-hello".into()],
        ..valid()
    });
    // ...but not nothing at all.
    let empty_store = ImageSpec {
        system: None,
        only_nix_store: true,
        install_boot_loader: false,
        ..valid()
    };
    assert!(matches!(
        validate(&empty_store),
        Err(SpecError::MissingSystem)
    ));
}

#[test]
fn system_and_systems_exclude_each_other() {
    refused(
        &ImageSpec {
            systems: vec!["/nix/store/cccc-nixos-system".into()],
            ..valid()
        },
        "systems",
    );
    accepted(&ImageSpec {
        system: None,
        systems: vec!["/nix/store/a".into(), "/nix/store/b".into()],
        ..valid()
    });
    refused(
        &ImageSpec {
            system: Some(PathBuf::new()),
            ..valid()
        },
        "system",
    );
    refused(
        &ImageSpec {
            system: None,
            systems: vec!["/nix/store/a".into(), PathBuf::new()],
            ..valid()
        },
        "systems[1]",
    );
}

#[test]
fn fixed_disk_size_is_positive_whole_mib_and_above_boot() {
    let fixed = |size: ByteSize, layout| ImageSpec {
        disk_size: DiskSize::Fixed(size),
        partition_table_type: layout,
        ..valid()
    };
    let text = refused(&fixed(ByteSize(0), PartitionTableType::Legacy), "diskSize");
    assert!(text.contains("\"auto\""), "{text}");
    let text = refused(
        &fixed(ByteSize(MIB + 1), PartitionTableType::Legacy),
        "diskSize",
    );
    assert!(text.contains("use 2M"), "{text}");
    refused(
        &fixed(ByteSize::mib(256), PartitionTableType::Efi),
        "diskSize",
    );
    accepted(&fixed(ByteSize::mib(257), PartitionTableType::Efi));
    // No boot partition: only the disk itself limits it.
    accepted(&fixed(ByteSize::mib(64), PartitionTableType::Legacy));
    accepted(&ImageSpec {
        disk_size: DiskSize::Auto,
        ..valid()
    });
}

#[test]
fn boot_size_fits_the_layouts_boot_partition() {
    let boot = |size: ByteSize, layout| ImageSpec {
        boot_size: size,
        partition_table_type: layout,
        ..valid()
    };
    for layout in [
        PartitionTableType::Efi,
        PartitionTableType::Hybrid,
        PartitionTableType::LegacyBoot,
    ] {
        let text = refused(&boot(ByteSize::mib(15), layout), "bootSize");
        assert!(text.contains("at least 16M"), "{text}");
        accepted(&boot(ByteSize::mib(16), layout));
    }
    // XBOOTLDR starts at 100 MiB, after the ESP.
    refused(
        &boot(ByteSize::mib(107), PartitionTableType::EfiXbootldr),
        "bootSize",
    );
    accepted(&boot(ByteSize::mib(108), PartitionTableType::EfiXbootldr));
    // Layouts without a boot partition ignore bootSize.
    accepted(&boot(ByteSize(0), PartitionTableType::Legacy));
    accepted(&boot(ByteSize(0), PartitionTableType::LegacyGpt));
    accepted(&boot(ByteSize(0), PartitionTableType::None));
    refused(
        &boot(ByteSize(300 * MIB + 512), PartitionTableType::Efi),
        "bootSize",
    );
}

#[test]
fn read_only_file_systems_need_only_nix_store() {
    for fs in [FsType::Erofs, FsType::Squashfs] {
        let text = refused(
            &ImageSpec {
                fs_type: fs,
                ..valid()
            },
            "fsType",
        );
        assert!(text.contains("onlyNixStore"), "{text}");
        accepted(&ImageSpec {
            fs_type: fs,
            only_nix_store: true,
            install_boot_loader: false,
            ..valid()
        });
    }
}

#[test]
fn labels_fit_their_file_system() {
    let cases = [
        (FsType::Ext4, 16),
        (FsType::Ext3, 16),
        (FsType::Ext2, 16),
        (FsType::Vfat, 11),
        (FsType::Xfs, 12),
        (FsType::Btrfs, 255),
    ];
    for (fs, max) in cases {
        let labelled = |len: usize| ImageSpec {
            fs_type: fs,
            label: Some("x".repeat(len)),
            ..valid()
        };
        accepted(&labelled(max));
        let text = refused(&labelled(max + 1), "label");
        assert!(text.contains(&format!("at most {max} bytes")), "{text}");
    }
    let store = |fs, label: &str| ImageSpec {
        fs_type: fs,
        label: Some(label.into()),
        only_nix_store: true,
        install_boot_loader: false,
        ..valid()
    };
    accepted(&store(FsType::Erofs, &"x".repeat(15)));
    refused(&store(FsType::Erofs, &"x".repeat(16)), "label");
    // squashfs has no label to overflow.
    accepted(&store(FsType::Squashfs, &"x".repeat(300)));
    // Bytes, not characters, count: 9 x "é" is 18 bytes.
    refused(
        &ImageSpec {
            label: Some("é".repeat(9)),
            ..valid()
        },
        "label",
    );
}

#[test]
fn labels_are_printable_and_not_empty() {
    for label in ["", "a/b", "tab\there"] {
        refused(
            &ImageSpec {
                label: Some(label.into()),
                ..valid()
            },
            "label",
        );
    }
    accepted(&ImageSpec {
        label: None,
        ..valid()
    });
}

#[test]
fn content_targets_are_absolute_and_stay_inside() {
    let with = |entries: Vec<ContentEntry>| ImageSpec {
        contents: entries,
        ..valid()
    };
    accepted(&with(vec![entry("/etc/hosts"), entry("/srv/a/b")]));
    let text = refused(
        &with(vec![entry("/ok"), entry("etc/hosts")]),
        "contents[1].target",
    );
    assert!(text.contains("write \"/etc/hosts\""), "{text}");
    refused(&with(vec![entry("/etc/../../x")]), "contents[0].target");
    refused(&with(vec![entry("/..")]), "contents[0].target");
    // `..` only as a whole component is a climb.
    accepted(&with(vec![entry("/etc/..hidden")]));
    let mut no_source = entry("/x");
    no_source.source.clear();
    refused(&with(vec![no_source]), "contents[0].source");
}

#[test]
fn content_modes_are_octal() {
    for (mode, ok) in [
        ("0644", true),
        ("755", true),
        ("4755", true),
        ("0999", false),
        ("12", false),
        ("07777", false),
        ("u+x", false),
        ("", false),
    ] {
        let mut e = entry("/x");
        e.mode = Some(mode.into());
        let spec = ImageSpec {
            contents: vec![e],
            ..valid()
        };
        if ok {
            accepted(&spec);
        } else {
            refused(&spec, "contents[0].mode");
        }
    }
}

#[test]
fn content_owner_is_user_and_group_or_neither() {
    let owned = |user: Option<&str>, group: Option<&str>| {
        let mut e = entry("/x");
        e.user = user.map(Into::into);
        e.group = group.map(Into::into);
        ImageSpec {
            contents: vec![e],
            ..valid()
        }
    };
    accepted(&owned(Some("alice"), Some("users")));
    accepted(&owned(None, None));
    let text = refused(&owned(Some("alice"), None), "contents[0].user");
    assert!(text.contains("\"group\": \"root\""), "{text}");
    refused(&owned(None, Some("users")), "contents[0].group");
    refused(&owned(Some(""), Some("users")), "contents[0].user");
    refused(&owned(Some("alice"), Some("")), "contents[0].group");
}

#[test]
fn mem_size_is_in_range() {
    let mem = |mem_size| ImageSpec {
        mem_size,
        ..valid()
    };
    refused(&mem(0), "memSize");
    let text = refused(&mem(MIN_MEM_SIZE - 1), "memSize");
    assert!(text.contains("from 256 to"), "{text}");
    accepted(&mem(MIN_MEM_SIZE));
    accepted(&mem(MAX_MEM_SIZE));
    refused(&mem(MAX_MEM_SIZE + 1), "memSize");
}

#[test]
fn only_nix_store_excludes_contents_config_and_bootloader() {
    let store = ImageSpec {
        only_nix_store: true,
        install_boot_loader: false,
        ..valid()
    };
    accepted(&store);
    refused(
        &ImageSpec {
            contents: vec![entry("/x")],
            ..store.clone()
        },
        "contents",
    );
    refused(
        &ImageSpec {
            config_file: Some("/etc/nixos/configuration.nix".into()),
            ..store.clone()
        },
        "configFile",
    );
    let text = refused(
        &ImageSpec {
            install_boot_loader: true,
            ..store
        },
        "installBootLoader",
    );
    assert!(text.contains("\"installBootLoader\": false"), "{text}");
}

#[test]
fn nix_path_registration_is_for_store_only_images() {
    let registered = ImageSpec {
        nix_path_registration: true,
        ..valid()
    };
    refused(&registered, "nixPathRegistration");
    accepted(&ImageSpec {
        only_nix_store: true,
        install_boot_loader: false,
        ..registered
    });
}

#[test]
fn touch_efi_vars_needs_a_gpt_layout() {
    use PartitionTableType::*;
    for layout in PartitionTableType::ALL {
        let spec = ImageSpec {
            touch_efi_vars: true,
            partition_table_type: layout,
            ..valid()
        };
        if matches!(layout, Efi | EfiXbootldr | Hybrid | LegacyGpt) {
            accepted(&spec);
        } else {
            let text = refused(&spec, "touchEFIVars");
            assert!(text.contains(layout.as_str()), "{text}");
        }
    }
}

#[test]
fn root_guids_are_hyphenated_non_nil_uuids() {
    let gpuid = |id: &str| ImageSpec {
        root_gpuid: id.into(),
        ..valid()
    };
    accepted(&gpuid("00000000-0000-0000-0000-000000000001"));
    accepted(&gpuid("f222513b-ded1-49fa-b591-20ce86a2fe7f"));
    for bad in [
        "",
        "F222513B-DED1-49FA-B591-20CE86A2FE7",
        "F222513BDED149FAB59120CE86A2FE7F",
        "{F222513B-DED1-49FA-B591-20CE86A2FE7F}",
        "00000000-0000-0000-0000-000000000000",
        // make-disk-image's own disk GUID literal, one digit short.
        "97FD5997-D90B-4AA3-8D16-C1723AEA73C",
    ] {
        refused(&gpuid(bad), "rootGPUID");
    }
    let fsuid = |id: &str, fs| ImageSpec {
        root_fsuid: Some(id.into()),
        fs_type: fs,
        ..valid()
    };
    accepted(&fsuid(
        "F222513B-DED1-49FA-B591-20CE86A2FE7F",
        FsType::Btrfs,
    ));
    refused(&fsuid("not-a-uuid", FsType::Ext4), "rootFSUID");
    // FAT takes a 32-bit volume ID.
    accepted(&fsuid("1234-ABCD", FsType::Vfat));
    refused(&fsuid("1234-ABCD", FsType::Ext4), "rootFSUID");
    refused(&fsuid("1234-ABCG", FsType::Vfat), "rootFSUID");
}

#[test]
fn name_is_a_store_name() {
    let named = |name: &str| ImageSpec {
        name: name.into(),
        ..valid()
    };
    accepted(&named("nixos-disk-image"));
    accepted(&named("img_1.2+x?=y"));
    for bad in ["", ".hidden", "has space", "a/b", &"x".repeat(212)] {
        refused(&named(bad), "name");
    }
}

#[test]
fn base_name_is_a_plain_file_name() {
    let based = |base: &str| ImageSpec {
        base_name: base.into(),
        ..valid()
    };
    accepted(&based("nixos"));
    accepted(&based("my-image.v2"));
    for bad in ["", "a/b", "../up", "..", ".", ".hidden"] {
        let text = refused(&based(bad), "baseName");
        assert!(text.contains("plain file name"), "{text}");
    }
}

#[test]
fn messages_name_field_value_allowed_and_hint() {
    let text = refused(
        &ImageSpec {
            touch_efi_vars: true,
            ..valid()
        },
        "touchEFIVars",
    );
    assert_eq!(
        text,
        "field `touchEFIVars` = true cannot be used with `partitionTableType` = \"legacy\": \
         EFI variables need a GPT layout: efi, efixbootldr, hybrid or legacy+gpt\n  \
         hint: set \"partitionTableType\": \"efi\", or drop touchEFIVars"
    );
    let text = refused(
        &ImageSpec {
            mem_size: 64,
            ..valid()
        },
        "memSize",
    );
    assert_eq!(
        text,
        "field `memSize` = 64 is not allowed: a number of MiB from 256 to 1048576\n  \
         hint: memSize counts MiB: 1024 is 1 GiB"
    );
}
