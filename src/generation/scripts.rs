//! The builder VM's scripts for changing an image's generations, planned on
//! the host. Like the full build's steps they run with `sh -eu -c` in the
//! chroot of the host share, with the image as `/dev/vda` and its root at
//! `/mnt/root`; the bootloader step is the full build's own.

use std::fmt::Write as _;
use std::path::Path;

use super::plan::{Change, PROFILES, link_name};
use crate::host_tool::quote;
use crate::layout::{PartitionTable, TableKind};
use crate::pipeline::steps::{
    Step, StepInputs, TARGET_ROOT, bootloader_script, mount_boot_script, partition_device,
};

/// The exit status of the mount step when the image holds no NixOS root.
pub const NO_NIXOS_ROOT: i32 = 3;
/// Where the host sends the store paths to copy.
pub const NEW_PATHS_FILE: &str = "/mnt/new-paths";
/// Where the host sends the store paths to delete.
pub const DEAD_PATHS_FILE: &str = "/mnt/dead-paths";
/// Where the host sends the changed Nix database.
pub const DB_FILE: &str = "/mnt/db.sqlite";
/// The image's Nix database, as the builder sees it.
pub const IMAGE_DB: &str = "/mnt/root/nix/var/nix/db/db.sqlite";

/// Mounts the image's root and its boot partitions; exits with
/// [`NO_NIXOS_ROOT`] when the root is no NixOS root.
pub fn mount(table: &PartitionTable) -> Step {
    let device = partition_device(if table.kind == TableKind::None {
        0
    } else {
        table.root().number
    });
    let mut script = format!(
        "mkdir -p {TARGET_ROOT}\n\
         if ! mount {device} {TARGET_ROOT} 2>/dev/null; then\n  \
           echo 'nixdisk: {device} holds no file system the builder can mount' >&2; exit {NO_NIXOS_ROOT}\nfi\n\
         if [ ! -f {IMAGE_DB} ] || [ ! -d {TARGET_ROOT}{PROFILES} ]; then\n  \
           echo 'nixdisk: {device} has no Nix database or system profile' >&2; umount {TARGET_ROOT}; exit {NO_NIXOS_ROOT}\nfi\n"
    );
    script.push_str(&mount_boot_script(table));
    Step {
        name: "mount the image",
        script,
    }
}

/// Lists every symlink under the GC roots and profiles (one level further
/// for links that point elsewhere in the image), as
/// [`super::plan::parse_links`] reads them, and `WAL` when the database has
/// a write-ahead log.
pub fn list_links() -> Step {
    let script = format!(
        "cd {TARGET_ROOT}\n\
         for d in nix/var/nix/gcroots nix/var/nix/profiles; do\n  \
           if [ -d \"$d\" ]; then find -P \"$d\" -type l; fi\n\
         done | while IFS= read -r l; do\n  \
           t=$(readlink \"$l\")\n  \
           printf 'L\\t/%s\\t%s\\n' \"$l\" \"$t\"\n  \
           case \"$t\" in\n    \
             /nix/store/*) ;;\n    \
             /*) if [ -L \".$t\" ]; then printf 'L\\t%s\\t%s\\n' \"$t\" \"$(readlink \".$t\")\"; fi ;;\n  \
           esac\n\
         done\n\
         if [ -s {IMAGE_DB}-wal ]; then echo WAL; fi\n"
    );
    Step {
        name: "read the generations",
        script,
    }
}

/// Copies the store paths listed in [`NEW_PATHS_FILE`] from the host's store
/// (replacing any unregistered leftovers of the same name).
pub fn copy_paths() -> Step {
    Step {
        name: "copy the new store paths",
        script: format!(
            "while IFS= read -r p; do rm -rf \"{TARGET_ROOT}$p\"; done < {NEW_PATHS_FILE}\n\
             xargs -r -a {NEW_PATHS_FILE} cp -a -t {TARGET_ROOT}/nix/store\n"
        ),
    }
}

/// Makes the profile links what `change` says: the new generation's link,
/// the removed ones gone, `system` replaced atomically.
pub fn update_links(change: &Change) -> Step {
    let profiles = format!("{TARGET_ROOT}{PROFILES}");
    let mut script = String::new();
    if let Some((n, toplevel)) = &change.added {
        let _ = writeln!(
            script,
            "ln -sfn {} {profiles}/{}",
            quote(&toplevel.to_string_lossy()),
            link_name(*n)
        );
    }
    for n in &change.removed {
        let _ = writeln!(script, "rm -f {profiles}/{}", link_name(*n));
    }
    let _ = writeln!(
        script,
        "ln -sfn {} {profiles}/.system-nixdisk\nmv -Tf {profiles}/.system-nixdisk {profiles}/system",
        link_name(change.default)
    );
    Step {
        name: "update the profile links",
        script,
    }
}

/// Replaces the image's Nix database with [`DB_FILE`] (same mode), dropping
/// the write-ahead log it already holds.
pub fn replace_db() -> Step {
    Step {
        name: "update the Nix database",
        script: format!(
            "cp {DB_FILE} {IMAGE_DB}.nixdisk\n\
             chmod --reference={IMAGE_DB} {IMAGE_DB}.nixdisk\n\
             mv -f {IMAGE_DB}.nixdisk {IMAGE_DB}\n\
             rm -f {IMAGE_DB}-wal {IMAGE_DB}-shm\n"
        ),
    }
}

/// Deletes the store paths listed in [`DEAD_PATHS_FILE`].
pub fn collect_garbage() -> Step {
    Step {
        name: "collect garbage",
        script: format!(
            "while IFS= read -r p; do rm -rf \"{TARGET_ROOT}$p\"; done < {DEAD_PATHS_FILE}\n"
        ),
    }
}

/// The full build's bootloader installation: the default generation's
/// `switch-to-configuration boot` in a chroot of the image.
pub fn install_bootloader(grub_devices: Vec<std::path::PathBuf>) -> Step {
    Step {
        name: "install the bootloader",
        script: bootloader_script(&StepInputs {
            root_mkfs_options: Vec::new(),
            grub_devices,
            chowns: Vec::new(),
            efi_vars: false,
            root_on_host: false,
        }),
    }
}

/// Unmounts everything and syncs.
pub fn unmount() -> Step {
    Step {
        name: "unmount and sync",
        script: format!("sync\numount -R {TARGET_ROOT}\nsync\n"),
    }
}

/// The lines of a paths file.
pub fn paths_file<'a>(paths: impl IntoIterator<Item = &'a Path>) -> String {
    paths
        .into_iter()
        .map(|p| format!("{}\n", p.display()))
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::path::PathBuf;

    #[test]
    fn links_change_as_planned() {
        let change = Change {
            added: Some((3, PathBuf::from("/nix/store/c-system"))),
            default: 3,
            removed: vec![1],
            links: Default::default(),
        };
        assert_eq!(
            update_links(&change).script,
            "ln -sfn /nix/store/c-system /mnt/root/nix/var/nix/profiles/system-3-link\n\
             rm -f /mnt/root/nix/var/nix/profiles/system-1-link\n\
             ln -sfn system-3-link /mnt/root/nix/var/nix/profiles/.system-nixdisk\n\
             mv -Tf /mnt/root/nix/var/nix/profiles/.system-nixdisk /mnt/root/nix/var/nix/profiles/system\n"
        );
    }

    #[test]
    fn paths_files_have_one_path_a_line() {
        assert_eq!(
            paths_file([Path::new("/nix/store/a"), Path::new("/nix/store/b")]),
            "/nix/store/a\n/nix/store/b\n"
        );
    }
}
