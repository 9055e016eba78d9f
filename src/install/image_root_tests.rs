use std::path::PathBuf;

use super::*;
use crate::closure::StorePathInfo;

const GEN1: &str = "/nix/store/11111111111111111111111111111111-nixos-system-gen1";
const GEN2: &str = "/nix/store/22222222222222222222222222222222-nixos-system-gen2";
const CHANNEL: &str = "/nix/store/cccccccccccccccccccccccccccccccc-nixos-25.11";

fn closure() -> Closure {
    let info = |path: &str| StorePathInfo {
        path: path.into(),
        nar_hash: format!("sha256:{}", "00".repeat(32)),
        nar_size: 8,
        references: vec![],
        deriver: None,
    };
    Closure::new(vec![info(GEN1), info(GEN2), info(CHANNEL)]).unwrap()
}

fn inputs(toplevels: &[&str]) -> ImageRootInputs {
    ImageRootInputs {
        toplevels: toplevels.iter().map(PathBuf::from).collect(),
        channel: None,
        config_file: None,
        partition_table_type: PartitionTableType::Efi,
        nix_db: NixDbFiles {
            db_sqlite: vec![0; 45056],
            schema: b"10".to_vec(),
        },
    }
}

const COMMON_HEAD: &str = "\
0755 d /boot
0755 d /dev
0755 d /etc
0644 f /etc/NIXOS (0 bytes)
0755 d /etc/nixos
";

const COMMON_NIX: &str = "\
0755 d /home
0755 d /nix
0755 d /nix/store
0755 d /nix/store/.links
0755 d /nix/var
0755 d /nix/var/nix
0755 d /nix/var/nix/db
0644 f /nix/var/nix/db/db.sqlite (45056 bytes)
0644 f /nix/var/nix/db/schema (2 bytes)
0755 d /nix/var/nix/gcroots
0755 d /nix/var/nix/gcroots/per-user
0755 d /nix/var/nix/gcroots/per-user/root
link l /nix/var/nix/gcroots/profiles -> /nix/var/nix/profiles
0755 d /nix/var/nix/profiles
0755 d /nix/var/nix/profiles/per-user
0755 d /nix/var/nix/profiles/per-user/root
";

const COMMON_TAIL: &str = "\
0755 d /proc
0700 d /root
0755 d /run
0755 d /sys
1777 d /tmp
0755 d /var
";

#[test]
fn one_generation_without_channel_or_config() {
    let plan = plan_image_root(&inputs(&[GEN1]), &closure()).unwrap();
    let expected = format!(
        "{COMMON_HEAD}{COMMON_NIX}\
link l /nix/var/nix/profiles/system -> system-1-link
link l /nix/var/nix/profiles/system-1-link -> {GEN1}
0755 d /nix/var/nix/temproots
{COMMON_TAIL}"
    );
    assert_eq!(plan.listing(), expected);
}

#[test]
fn two_generations_with_channel_and_config_on_efixbootldr() {
    let mut inputs = inputs(&[GEN1, GEN2]);
    inputs.channel = Some(CHANNEL.into());
    inputs.config_file = Some("/host/configuration.nix".into());
    inputs.partition_table_type = PartitionTableType::EfiXbootldr;
    let plan = plan_image_root(&inputs, &closure()).unwrap();
    let expected = format!(
        "0755 d /boot
0755 d /dev
0755 d /efi
0755 d /etc
0644 f /etc/NIXOS (0 bytes)
0755 d /etc/nixos
0644 f /etc/nixos/configuration.nix < /host/configuration.nix
{COMMON_NIX}\
link l /nix/var/nix/profiles/per-user/root/channels -> channels-1-link
link l /nix/var/nix/profiles/per-user/root/channels-1-link -> {CHANNEL}
link l /nix/var/nix/profiles/system -> system-2-link
link l /nix/var/nix/profiles/system-1-link -> {GEN1}
link l /nix/var/nix/profiles/system-2-link -> {GEN2}
0755 d /nix/var/nix/temproots
0755 d /proc
0700 d /root
0700 d /root/.nix-defexpr
link l /root/.nix-defexpr/channels -> /nix/var/nix/profiles/per-user/root/channels
0755 d /run
0755 d /sys
1777 d /tmp
0755 d /var
"
    );
    assert_eq!(plan.listing(), expected);
}

#[test]
fn toplevels_and_channel_must_be_in_the_closure() {
    let stray = "/nix/store/33333333333333333333333333333333-other";
    let error = plan_image_root(&inputs(&[GEN1, stray]), &closure()).unwrap_err();
    assert!(
        matches!(&error, ImageRootError::NotInClosure { what, .. } if what == "generation 2"),
        "{error}"
    );
    let mut with_channel = inputs(&[GEN1]);
    with_channel.channel = Some(stray.into());
    assert!(matches!(
        plan_image_root(&with_channel, &closure()),
        Err(ImageRootError::NotInClosure { .. })
    ));
    assert!(matches!(
        plan_image_root(&inputs(&[]), &closure()),
        Err(ImageRootError::NoGeneration)
    ));
}

#[test]
fn a_file_over_a_planned_path_collides_and_directories_merge() {
    let mut plan = plan_image_root(&inputs(&[GEN1]), &closure()).unwrap();
    let dir = Entry {
        path: "etc/nixos".into(),
        kind: EntryKind::Dir,
        mode: 0o700,
        origin: "contents[0]".into(),
    };
    plan.add(dir).unwrap();
    assert_eq!(plan.get(Path::new("etc/nixos")).unwrap().mode, 0o755);
    let file = Entry {
        path: "nix/var/nix/db/schema".into(),
        kind: EntryKind::HostFile("/host/schema".into()),
        mode: 0o644,
        origin: "contents[1]".into(),
    };
    let error = plan.add(file).unwrap_err().to_string();
    assert!(
        error.contains("/nix/var/nix/db/schema")
            && error.contains("the Nix database")
            && error.contains("contents[1]"),
        "{error}"
    );
}

#[test]
fn channel_symlinks_resolve_to_their_store_path_and_others_are_refused() {
    let dir = tempfile::tempdir().unwrap();
    let error = resolve_channel(dir.path()).unwrap_err().to_string();
    assert!(error.contains("outside /nix/store"), "{error}");
    assert!(resolve_channel(&dir.path().join("missing")).is_err());
}

#[test]
fn profile_links_continue_an_existing_profile() {
    let links = profile_links(PROFILES_DIR, "system", 3, &[PathBuf::from(GEN2)]);
    let shown: Vec<(String, EntryKind)> = links
        .into_iter()
        .map(|e| (e.path.display().to_string(), e.kind))
        .collect();
    assert_eq!(
        shown,
        [
            (
                "nix/var/nix/profiles/system-3-link".to_owned(),
                EntryKind::Symlink(GEN2.into())
            ),
            (
                "nix/var/nix/profiles/system".to_owned(),
                EntryKind::Symlink("system-3-link".into())
            ),
        ]
    );
    assert!(profile_links(PROFILES_DIR, "system", 1, &[]).is_empty());
}
