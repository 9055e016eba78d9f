//! Kernel modules the host put in the initramfs: which to load, in which order, which are vital.

use std::path::{Path, PathBuf};

use nixdisk_agent::protocol::Transport;

/// The file listing the modules to load, one absolute path per line, in load order.
pub const MODULE_LIST: &str = "/etc/nixdisk/modules";

/// The paths of a module list: one per line; blank lines and `#` comments skipped.
pub fn parse_module_list(text: &str) -> Vec<PathBuf> {
    text.lines()
        .map(str::trim)
        .filter(|line| !line.is_empty() && !line.starts_with('#'))
        .map(PathBuf::from)
        .collect()
}

/// The module's name: the file name without `.ko` (and a compression suffix).
pub fn module_name(path: &Path) -> String {
    let file = path
        .file_name()
        .map(|name| name.to_string_lossy().into_owned())
        .unwrap_or_default();
    let name = file.split(".ko").next().unwrap_or(&file);
    // Kernel module names treat `-` and `_` alike; use `_` as modinfo does.
    name.replace('-', "_")
}

/// Whether the agent cannot reach the host without this module. `None`: the
/// transport is not chosen yet, so nothing counts as vital.
pub fn is_vital(path: &Path, transport: Option<&Transport>) -> bool {
    let name = module_name(path);
    let transport_modules: &[&str] = match transport {
        None | Some(Transport::Stdio) => return false,
        Some(Transport::Vsock { .. }) => &[
            "vsock",
            "vmw_vsock_virtio_transport_common",
            "vmw_vsock_virtio_transport",
        ],
        Some(Transport::Serial { .. }) => &["virtio_console"],
    };
    // The virtio core carries either transport.
    let core = [
        "virtio",
        "virtio_ring",
        "virtio_pci",
        "virtio_pci_modern_dev",
        "virtio_pci_legacy_dev",
    ];
    transport_modules.contains(&name.as_str()) || core.contains(&name.as_str())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn list_keeps_order_and_skips_blanks_and_comments() {
        let text = "/lib/modules/6.1/kernel/virtio_pci.ko\n\n# vsock\n  /m/vsock.ko  \n";
        assert_eq!(
            parse_module_list(text),
            [
                PathBuf::from("/lib/modules/6.1/kernel/virtio_pci.ko"),
                PathBuf::from("/m/vsock.ko")
            ]
        );
    }

    #[test]
    fn names_drop_suffixes_and_dashes() {
        assert_eq!(module_name(Path::new("/m/9pnet_virtio.ko")), "9pnet_virtio");
        assert_eq!(
            module_name(Path::new("/m/crc32c-generic.ko.xz")),
            "crc32c_generic"
        );
    }

    #[test]
    fn vital_modules_follow_the_transport() {
        let vsock = Transport::Vsock { port: 7000 };
        let serial = Transport::Serial { name: "a".into() };
        let console = Path::new("/m/virtio_console.ko");
        let transport = Path::new("/m/vmw_vsock_virtio_transport.ko");
        assert!(is_vital(console, Some(&serial)));
        assert!(!is_vital(console, Some(&vsock)));
        assert!(is_vital(transport, Some(&vsock)));
        assert!(is_vital(Path::new("/m/virtio_pci.ko"), Some(&vsock)));
        assert!(!is_vital(Path::new("/m/ext4.ko"), Some(&vsock)));
        assert!(!is_vital(console, None));
    }
}
