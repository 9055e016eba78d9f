//! Descriptor fixtures in a temp dir: priority, filtering, overrides, errors.

use super::*;
use std::fs;

struct Fixture {
    dir: tempfile::TempDir,
}

impl Fixture {
    fn new() -> Self {
        Self {
            dir: tempfile::tempdir().expect("temp dir"),
        }
    }

    fn file(&self, name: &str) -> PathBuf {
        let p = self.dir.path().join(name);
        fs::write(&p, name).expect("write fixture");
        p
    }

    fn descriptors(&self) -> PathBuf {
        let d = self.dir.path().join("firmware");
        fs::create_dir_all(&d).expect("mkdir");
        d
    }

    /// Writes a uefi flash descriptor named `name` whose files exist.
    fn uefi(&self, name: &str, machines: &[&str], features: &[&str]) -> (PathBuf, PathBuf) {
        let code = self.file(&format!("{name}.code.fd"));
        let vars = self.file(&format!("{name}.vars.fd"));
        let json = serde_json::json!({
            "description": name,
            "interface-types": ["uefi"],
            "mapping": {
                "device": "flash",
                "executable": {"filename": code, "format": "raw"},
                "nvram-template": {"filename": vars, "format": "raw"}
            },
            "targets": [{"architecture": "x86_64", "machines": machines}],
            "features": features,
        });
        fs::write(
            self.descriptors().join(format!("{name}.json")),
            json.to_string(),
        )
        .expect("write descriptor");
        (code, vars)
    }

    fn search(&self) -> Search {
        Search::descriptors_only(vec![self.descriptors()])
    }
}

const SMM_SB: &[&str] = &["acpi-s3", "requires-smm", "secure-boot"];

#[test]
fn plain_build_beats_secure_boot_despite_lower_file_priority() {
    let f = Fixture::new();
    f.uefi(
        "40-enrolled",
        &["pc-q35-*"],
        &["acpi-s3", "enrolled-keys", "requires-smm", "secure-boot"],
    );
    f.uefi("50-secure", &["pc-q35-*"], SMM_SB);
    let (code, vars) = f.uefi("60-plain", &["pc-i440fx-*", "pc-q35-*"], &["acpi-s3"]);
    let ovmf = find_ovmf(&f.search(), &Overrides::default(), Want::default()).expect("found");
    assert_eq!(
        (
            ovmf.code,
            ovmf.vars_template,
            ovmf.needs_smm,
            ovmf.secure_boot
        ),
        (code, vars, false, false)
    );
}

#[test]
fn only_smm_build_reports_needs_smm() {
    let f = Fixture::new();
    f.uefi(
        "40-enrolled",
        &["pc-q35-*"],
        &["enrolled-keys", "requires-smm", "secure-boot"],
    );
    let (code, _) = f.uefi("50-secure", &["pc-q35-*"], SMM_SB);
    let ovmf = find_ovmf(&f.search(), &Overrides::default(), Want::default()).expect("found");
    // Without enrolled keys first: an enrolled one would refuse unsigned loaders.
    assert_eq!(
        (ovmf.code, ovmf.needs_smm, ovmf.secure_boot),
        (code, true, true)
    );
}

#[test]
fn secure_boot_wanted_picks_the_secure_build() {
    let f = Fixture::new();
    let (code, _) = f.uefi("50-secure", &["pc-q35-*"], SMM_SB);
    f.uefi("60-plain", &["pc-q35-*"], &[]);
    let want = Want {
        secure_boot: true,
        ..Want::default()
    };
    let ovmf = find_ovmf(&f.search(), &Overrides::default(), want).expect("found");
    assert_eq!((ovmf.code, ovmf.needs_smm), (code, true));
}

#[test]
fn equal_rank_keeps_file_name_order() {
    let f = Fixture::new();
    let (b, _) = f.uefi("20-b", &["pc-q35-*"], &[]);
    f.uefi("30-a", &["pc-q35-*"], &[]);
    assert_eq!(
        find_ovmf(&f.search(), &Overrides::default(), Want::default())
            .expect("found")
            .code,
        b
    );
}

#[test]
fn machine_and_interface_filters() {
    let f = Fixture::new();
    f.uefi("10-q35-only", &["pc-q35-*"], &[]);
    let (pc, _) = f.uefi("20-pc", &["pc-i440fx-*"], &[]);
    let bios = serde_json::json!({
        "interface-types": ["bios"],
        "mapping": {"device": "memory", "filename": f.file("bios.bin")},
        "targets": [{"architecture": "x86_64", "machines": ["pc-*"]}],
    });
    fs::write(f.descriptors().join("05-bios.json"), bios.to_string()).expect("write");
    let want = Want {
        machine: Machine::I440fx,
        secure_boot: false,
    };
    assert_eq!(
        find_ovmf(&f.search(), &Overrides::default(), want)
            .expect("found")
            .code,
        pc
    );
    assert_eq!(
        find_seabios(&f.search(), Machine::I440fx).path,
        Some(f.dir.path().join("bios.bin"))
    );
}

#[test]
fn later_directory_overrides_and_empty_file_masks() {
    let f = Fixture::new();
    f.uefi("60-plain", &["pc-q35-*"], &[]);
    f.uefi("70-other", &["pc-q35-*"], &[]);
    let etc = f.dir.path().join("etc");
    fs::create_dir_all(&etc).expect("mkdir");
    fs::write(etc.join("60-plain.json"), "").expect("mask");
    let search = Search::descriptors_only(vec![f.descriptors(), etc]);
    let ovmf = find_ovmf(&search, &Overrides::default(), Want::default()).expect("found");
    assert_eq!(ovmf.code, f.dir.path().join("70-other.code.fd"));
}

#[test]
fn missing_files_and_bad_json_are_listed_in_the_error() {
    let f = Fixture::new();
    let (code, _) = f.uefi("60-plain", &["pc-q35-*"], &[]);
    fs::remove_file(&code).expect("rm");
    fs::write(f.descriptors().join("10-broken.json"), "{ not json").expect("write");
    let err =
        find_ovmf(&f.search(), &Overrides::default(), Want::default()).expect_err("nothing usable");
    let msg = err.to_string();
    assert!(
        msg.contains(&code.display().to_string()) && msg.contains("no such file"),
        "{msg}"
    );
    assert!(
        msg.contains("10-broken.json") && msg.contains("not a valid firmware descriptor"),
        "{msg}"
    );
    assert!(msg.contains("hint:"), "{msg}");
}

#[test]
fn overrides_win_and_inherit_smm_from_a_matching_descriptor() {
    let f = Fixture::new();
    f.uefi("60-plain", &["pc-q35-*"], &[]);
    let (secure_code, secure_vars) = f.uefi("50-secure", &["pc-q35-*"], SMM_SB);
    let mine = f.file("my-vars.fd");
    let over = Overrides {
        code: Some(secure_code.clone()),
        vars: Some(mine.clone()),
    };
    let ovmf = find_ovmf(&f.search(), &over, Want::default()).expect("found");
    assert_eq!(
        (ovmf.code.clone(), ovmf.vars_template, ovmf.needs_smm),
        (secure_code.clone(), mine, true)
    );
    let code_only = Overrides {
        code: Some(secure_code),
        vars: None,
    };
    let ovmf = find_ovmf(&f.search(), &code_only, Want::default()).expect("found");
    assert_eq!((ovmf.vars_template, ovmf.needs_smm), (secure_vars, true));
    let missing = Overrides {
        code: Some(f.dir.path().join("nope.fd")),
        vars: None,
    };
    let err = find_ovmf(&f.search(), &missing, Want::default()).expect_err("missing override");
    assert!(err.to_string().contains("efiFirmware"), "{err}");
}

#[test]
fn nix_output_layout_is_found() {
    let f = Fixture::new();
    let store = f.dir.path().join("store-OVMF-fd");
    fs::create_dir_all(store.join("FV")).expect("mkdir");
    fs::write(store.join("FV/OVMF_CODE.fd"), b"code").expect("write");
    fs::write(store.join("FV/OVMF_VARS.fd"), b"vars").expect("write");
    f.uefi("60-plain", &["pc-q35-*"], &[]);
    let search = Search {
        nix_ovmf: Some(store.clone()),
        ..f.search()
    };
    let ovmf = find_ovmf(&search, &Overrides::default(), Want::default()).expect("found");
    assert_eq!(ovmf.code, store.join("FV/OVMF_CODE.fd"));
}

#[test]
fn prepare_vars_makes_a_private_writable_copy() {
    use std::os::unix::fs::PermissionsExt;
    let f = Fixture::new();
    let (_, vars) = f.uefi("60-plain", &["pc-q35-*"], &[]);
    fs::set_permissions(&vars, fs::Permissions::from_mode(0o444)).expect("chmod");
    let ovmf = find_ovmf(&f.search(), &Overrides::default(), Want::default()).expect("found");
    let dest = f.dir.path().join("vars-copy.fd");
    ovmf.prepare_vars(&dest).expect("copy");
    assert_eq!(
        fs::read(&dest).expect("read"),
        fs::read(&vars).expect("read")
    );
    assert_eq!(
        fs::metadata(&dest).expect("stat").permissions().mode() & 0o777,
        0o600
    );
}

#[test]
fn machine_patterns() {
    assert!(Machine::Q35.matches_pattern("pc-q35-*"));
    assert!(Machine::Q35.matches_pattern("pc-q35-8.*"));
    assert!(Machine::Q35.matches_pattern("pc-*"));
    assert!(Machine::Q35.matches_pattern("*"));
    assert!(!Machine::Q35.matches_pattern("pc-i440fx-*"));
    assert!(!Machine::I440fx.matches_pattern("pc-q35-*"));
    assert!(!Machine::Q35.matches_pattern("virt-*"));
}

/// This machine's real descriptors (Debian's ovmf package): the plain 4M build.
#[test]
fn real_system_descriptors() {
    let dir = PathBuf::from("/usr/share/qemu/firmware");
    if !dir.join("60-edk2-x86_64.json").is_file() {
        panic!(
            "expected Debian's ovmf descriptors in {}: run scripts/setup",
            dir.display()
        );
    }
    let search = Search::descriptors_only(vec![dir]);
    let ovmf = find_ovmf(&search, &Overrides::default(), Want::default()).expect("found");
    assert_eq!(ovmf.code, PathBuf::from("/usr/share/OVMF/OVMF_CODE_4M.fd"));
    assert_eq!(
        ovmf.vars_template,
        PathBuf::from("/usr/share/OVMF/OVMF_VARS_4M.fd")
    );
    assert!(!ovmf.needs_smm && !ovmf.secure_boot);
    let want = Want {
        secure_boot: true,
        ..Want::default()
    };
    let secure = find_ovmf(&search, &Overrides::default(), want).expect("found");
    assert_eq!(
        secure.code,
        PathBuf::from("/usr/share/OVMF/OVMF_CODE_4M.secboot.fd")
    );
    assert!(secure.needs_smm);
    let system = find_ovmf(
        &Search::system(None),
        &Overrides::default(),
        Want::default(),
    )
    .expect("found");
    assert!(system.code.is_file() && !system.needs_smm);
}
