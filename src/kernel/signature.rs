//! Module signatures: whether the builder kernel insists on them, and the
//! module bytes without the appended signature.
//!
//! Under TCG the kernel checks an appended signature slowly (SHA-256 over the
//! whole module, then RSA, all emulated). A kernel that does not enforce
//! signatures loads an unsigned module and only marks itself tainted, so the
//! builder's initramfs carries the modules stripped where that is safe: the
//! kernel's config says `# CONFIG_MODULE_SIG_FORCE is not set` and the VM
//! boots without UEFI (Debian's kernels lock down, and then enforce, only
//! under UEFI Secure Boot). Everywhere else the modules stay signed.

use std::path::Path;

/// What ends a signed module (`MODULE_SIG_STRING` followed by a newline).
const MARKER: &[u8] = b"~Module signature appended~\n";
/// `struct module_signature`: algo, hash, id_type, signer_len, key_id_len,
/// three pad bytes, then the signature's length as a big-endian u32.
const INFO_LEN: usize = 12;

/// The module without its appended signature; unsigned (or malformed)
/// modules come back whole.
pub fn strip_module_signature(module: &[u8]) -> &[u8] {
    let Some(body) = module.strip_suffix(MARKER) else {
        return module;
    };
    let Some(info_start) = body.len().checked_sub(INFO_LEN) else {
        return module;
    };
    let info = &body[info_start..];
    let sig_len = u32::from_be_bytes([info[8], info[9], info[10], info[11]]) as usize;
    match info_start.checked_sub(sig_len) {
        Some(end) => &module[..end],
        None => module,
    }
}

/// Whether a kernel config (the text of `/boot/config-<release>`) lets the
/// kernel load unsigned modules: module signing is off, or on without
/// `CONFIG_MODULE_SIG_FORCE`. `None` (no config to read) counts as no.
pub fn loads_unsigned_modules(config: Option<&str>) -> bool {
    let Some(config) = config else {
        return false;
    };
    let set = |option: &str| {
        config
            .lines()
            .any(|line| line.trim() == format!("{option}=y"))
    };
    !set("CONFIG_MODULE_SIG_FORCE")
}

/// The config file of the kernel image `image` of release `release`:
/// `config-<release>` beside it, as Debian and most distributions install it.
pub fn kernel_config(image: &Path, release: &str) -> Option<String> {
    let dir = image.parent()?;
    std::fs::read_to_string(dir.join(format!("config-{release}"))).ok()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn signed(body: &[u8], signature: &[u8]) -> Vec<u8> {
        let mut module = body.to_vec();
        module.extend_from_slice(signature);
        let mut info = [0u8; INFO_LEN];
        info[2] = 2; // PKEY_ID_PKCS7
        info[8..].copy_from_slice(&(signature.len() as u32).to_be_bytes());
        module.extend_from_slice(&info);
        module.extend_from_slice(MARKER);
        module
    }

    #[test]
    fn a_signed_module_loses_exactly_its_signature() {
        let body = b"\x7fELF module body";
        let module = signed(body, &[0xAB; 300]);
        assert_eq!(strip_module_signature(&module), body);
    }

    #[test]
    fn unsigned_and_malformed_modules_stay_whole() {
        let plain = b"\x7fELF no signature here";
        assert_eq!(strip_module_signature(plain), plain);
        // A marker with a length longer than the file.
        let mut bogus = signed(b"", &[1, 2, 3]);
        bogus[3 + 8..3 + 12].copy_from_slice(&u32::MAX.to_be_bytes());
        assert_eq!(strip_module_signature(&bogus), &bogus[..]);
        // Only the marker.
        assert_eq!(strip_module_signature(MARKER), MARKER);
    }

    #[test]
    fn only_a_forcing_config_or_none_keeps_signatures() {
        assert!(loads_unsigned_modules(Some(
            "CONFIG_MODULE_SIG=y\n# CONFIG_MODULE_SIG_FORCE is not set\n"
        )));
        assert!(loads_unsigned_modules(Some(
            "# CONFIG_MODULE_SIG is not set\n"
        )));
        assert!(!loads_unsigned_modules(Some(
            "CONFIG_MODULE_SIG=y\nCONFIG_MODULE_SIG_FORCE=y\n"
        )));
        assert!(!loads_unsigned_modules(None));
    }
}
