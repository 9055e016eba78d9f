//! `nix/make-disk-image.nix` as Nix users call it: the expressions parse,
//! take nixpkgs' arguments, and evaluate and build (with the Nix on this
//! machine, offline) against a stand-in pkgs (`tests/fixtures/nix`). The
//! spec JSON the wrapper writes is what `nixdisk spec --check` accepts, and
//! the derivation hands nixdisk the closureInfo, builder kernel and OVMF.

mod nix_support;

use std::collections::BTreeSet;
use std::path::Path;

use serde_json::Value;

use nix_support::{StandIn, nix_build, nixdisk, repo, show_derivation};

/// nixpkgs' make-disk-image arguments and whether each has a default, as
/// its current version declares them.
const MAKE_DISK_IMAGE_ARGUMENTS: &[(&str, bool)] = &[
    ("pkgs", false),
    ("lib", false),
    ("config", false),
    ("diskSize", true),
    ("additionalSpace", true),
    ("bootSize", true),
    ("contents", true),
    ("partitionTableType", true),
    ("installBootLoader", true),
    ("touchEFIVars", true),
    ("OVMF", true),
    ("efiFirmware", true),
    ("efiVariables", true),
    ("fsType", true),
    ("label", true),
    ("configFile", true),
    ("postVM", true),
    ("memSize", true),
    ("onlyNixStore", true),
    ("name", true),
    ("format", true),
    ("baseName", true),
    ("deterministic", true),
    ("rootGPUID", true),
    ("rootFSUID", true),
    ("copyChannel", true),
    ("additionalPaths", true),
];

#[test]
fn every_expression_parses() {
    let mut files = Vec::new();
    for dir in [
        "nix",
        "tests/fixtures/nix",
        "tests/fixtures/nix/stand-in-nixpkgs",
    ] {
        for entry in std::fs::read_dir(repo().join(dir)).expect("read nix dir") {
            let path = entry.expect("dir entry").path();
            if path.extension().is_some_and(|ext| ext == "nix") {
                files.push(path);
            }
        }
    }
    assert!(files.len() >= 5, "{files:?}");
    for file in files {
        let output = std::process::Command::new("nix-instantiate")
            .arg("--parse")
            .arg(&file)
            .output()
            .expect("run nix-instantiate");
        assert!(
            output.status.success(),
            "{}: {}",
            file.display(),
            String::from_utf8_lossy(&output.stderr)
        );
    }
}

#[test]
fn takes_make_disk_image_arguments_with_the_same_optionality() {
    let expr = format!(
        "builtins.functionArgs (import {}/nix/make-disk-image.nix)",
        repo().display()
    );
    let args = nix_support::eval_json(&expr);
    for (name, has_default) in MAKE_DISK_IMAGE_ARGUMENTS {
        assert_eq!(
            args.get(*name),
            Some(&Value::Bool(*has_default)),
            "argument {name}"
        );
    }
    // nixdisk's own extras are all optional.
    let own: Vec<_> = args
        .as_object()
        .expect("an attribute set")
        .iter()
        .filter(|(name, _)| !MAKE_DISK_IMAGE_ARGUMENTS.iter().any(|(n, _)| n == name))
        .collect();
    assert!(
        own.iter()
            .all(|(_, optional)| **optional == Value::Bool(true)),
        "{own:?}"
    );
}

#[test]
fn default_arguments_give_nixdisk_default_spec() {
    let stand_in = StandIn::new();
    let spec = stand_in.spec("{ }");
    let defaults = nixdisk_defaults();
    // Every field the wrapper writes is a spec field.
    for key in spec.as_object().expect("spec object").keys() {
        assert!(defaults.get(key).is_some(), "unknown spec field {key}");
    }
    // The defaults agree with nixdisk's, field by field, except those the
    // wrapper fills from the system or make-disk-image's derived defaults.
    let from_wrapper = ["system", "channelSource", "label", "rootFSUID"];
    for (key, default) in defaults.as_object().expect("defaults object") {
        if from_wrapper.contains(&key.as_str()) || key == "systems" {
            continue;
        }
        assert_eq!(spec.get(key), Some(default), "field {key}");
    }
    assert_eq!(spec["system"], stand_in.out_path("toplevel"));
    assert_eq!(spec["channelSource"], stand_in.out_path("channelSources"));
    assert_eq!(spec["label"], "nixos");
    assert_eq!(spec["rootFSUID"], spec["rootGPUID"]);
    assert_eq!(spec["efiFirmware"], Value::Null);
}

#[test]
fn the_written_spec_passes_nixdisk_spec_check() {
    let stand_in = StandIn::new();
    let spec_file = nix_build(&stand_in.image_attr("{ }", "specFile"));
    let checked = nixdisk_check(&spec_file);
    let written: Value =
        serde_json::from_str(&std::fs::read_to_string(&spec_file).expect("spec")).expect("JSON");
    assert_eq!(checked["system"], written["system"]);
    assert_eq!(checked["channelSource"], written["channelSource"]);
    assert_eq!(checked["partitionTableType"], "legacy");
}

#[test]
fn the_derivation_runs_nixdisk_with_closure_kernel_and_no_kvm_requirement() {
    let stand_in = StandIn::new();
    let drv = nix_support::instantiate(&stand_in.image("{ }"));
    let env = &show_derivation(&drv)["env"];
    let spec_file = stand_in.out_path("specFile");
    let command = env["buildCommand"].as_str().expect("buildCommand");
    assert!(
        command.contains(&format!(
            "nixdisk build --spec {} --out $out",
            spec_file.as_str().expect("path")
        )),
        "{command}"
    );
    assert_eq!(
        env["NIXDISK_CLOSURE_INFO"],
        stand_in.out_path("closureInfo")
    );
    let kernel = stand_in.eval("pkgs.linuxPackages.kernel.outPath");
    let kernel = kernel.as_str().expect("kernel path");
    assert_eq!(env["NIXDISK_KERNEL"], format!("{kernel}/bzImage"));
    assert_eq!(
        env["NIXDISK_KERNEL_MODULES"],
        format!("{kernel}/lib/modules/6.1.0-stand-in")
    );
    assert_eq!(env["NIXDISK_GRUB_DEVICES"], "/dev/sda");
    assert_eq!(env["name"], "nixos-disk-image");
    assert!(env.get("requiredSystemFeatures").is_none(), "{env}");
    // A legacy (BIOS) image needs no OVMF.
    assert!(env.get("OVMF").is_none(), "{env}");
}

#[test]
fn closure_info_holds_system_channel_and_additional_paths() {
    let stand_in = StandIn::new();
    let extra = repo().join("tests/fixtures/nix/stand-in-nixpkgs/default.nix");
    // The toplevel given again as an additional path is dropped, as
    // make-disk-image drops it.
    let args = format!(
        "{{ additionalPaths = [ {} {} ]; }}",
        stand_in.image_attr("{ }", "toplevel"),
        extra.display()
    );
    let spec = stand_in.spec(&args);
    let additional = spec["additionalPaths"].as_array().expect("list");
    assert_eq!(additional.len(), 1, "{spec}");
    let extra_path = additional[0].as_str().expect("path").to_owned();
    assert!(extra_path.starts_with("/nix/store/") && extra_path.ends_with("-default.nix"));

    let info = nix_build(&stand_in.image_attr(&args, "closureInfo"));
    let paths = read_lines(&info.join("store-paths"));
    let expected: BTreeSet<String> = [
        stand_in.out_path("toplevel"),
        stand_in.out_path("dependency"),
        stand_in.out_path("channelSources"),
        Value::String(extra_path),
    ]
    .iter()
    .map(|path| path.as_str().expect("path").to_owned())
    .collect();
    assert_eq!(paths, expected);
    let registration = std::fs::read_to_string(info.join("registration")).expect("registration");
    assert!(registration.contains("sha256:"), "{registration}");

    // No channel: neither in the spec nor in the closure.
    let without = stand_in.spec("{ copyChannel = false; }");
    assert_eq!(without["channelSource"], Value::Null);
    let info = nix_build(&stand_in.image_attr("{ copyChannel = false; }", "closureInfo"));
    assert_eq!(read_lines(&info.join("store-paths")).len(), 2);
}

#[test]
fn efi_layouts_take_ovmf_from_pkgs() {
    let stand_in = StandIn::new();
    let args = r#"{ partitionTableType = "efi"; touchEFIVars = true; }"#;
    let spec = stand_in.spec(args);
    let fd = stand_in.eval("pkgs.OVMF.fd.outPath");
    let fd = fd.as_str().expect("OVMF path");
    assert_eq!(spec["efiFirmware"], format!("{fd}/FV/OVMF_CODE.fd"));
    assert_eq!(spec["efiVariables"], format!("{fd}/FV/OVMF_VARS.fd"));
    assert_eq!(spec["touchEFIVars"], true);
    let drv = nix_support::instantiate(&stand_in.image(args));
    assert_eq!(show_derivation(&drv)["env"]["OVMF"], fd);
    let checked = nixdisk_check(&nix_build(&stand_in.image_attr(args, "specFile")));
    assert_eq!(checked["efiFirmware"], spec["efiFirmware"]);
}

#[test]
fn arguments_pass_through_under_their_own_names() {
    let stand_in = StandIn::new();
    let source = repo().join("tests/fixtures/nix/stand-in-nixpkgs");
    let args = format!(
        r#"{{
          diskSize = 4096;
          format = "qcow2-compressed";
          fsType = "xfs";
          partitionTableType = "hybrid";
          bootSize = "512M";
          memSize = 2048;
          name = "cloud-image";
          baseName = "cloud";
          postVM = "echo done";
          deterministic = false;
          configFile = {source}/default.nix;
          contents = [
            {{ source = {source}; target = "/etc/stand-in"; mode = "0755"; user = "root"; group = "root"; }}
            {{ source = "/nix/store/*-stand-in-dependency/bin/*"; target = "/usr/bin"; }}
          ];
        }}"#,
        source = source.display()
    );
    let spec = stand_in.spec(&args);
    assert_eq!(spec["diskSize"], 4096);
    assert_eq!(spec["format"], "qcow2-compressed");
    assert_eq!(spec["fsType"], "xfs");
    assert_eq!(spec["bootSize"], "512M");
    assert_eq!(spec["memSize"], 2048);
    assert_eq!(spec["name"], "cloud-image");
    assert_eq!(spec["baseName"], "cloud");
    assert_eq!(spec["postVM"], "echo done");
    assert_eq!(spec["deterministic"], false);
    // make-disk-image's rootFSUID default is null off ext4.
    assert_eq!(spec["rootFSUID"], Value::Null);
    let config_file = spec["configFile"].as_str().expect("configFile");
    assert!(config_file.starts_with("/nix/store/"), "{config_file}");
    let contents = spec["contents"].as_array().expect("contents");
    let first = contents[0].as_object().expect("entry");
    assert!(
        first["source"]
            .as_str()
            .expect("source")
            .starts_with("/nix/store/")
    );
    assert_eq!(first["mode"], "0755");
    assert_eq!(first["user"], "root");
    // Unset optional fields are left out, globs stay as written.
    assert_eq!(
        contents[1],
        serde_json::json!({
            "source": "/nix/store/*-stand-in-dependency/bin/*",
            "target": "/usr/bin"
        })
    );
    // The hybrid layout boots on UEFI too, so OVMF comes along.
    assert!(spec["efiFirmware"].as_str().is_some(), "{spec}");
    let checked = nixdisk_check(&nix_build(&stand_in.image_attr(&args, "specFile")));
    assert_eq!(checked["contents"][0]["target"], "/etc/stand-in");
    assert_eq!(checked["format"], "qcow2-compressed");
}

#[test]
fn make_disk_image_rules_fail_at_evaluation() {
    let stand_in = StandIn::new();
    let cases = [
        (
            r#"{ touchEFIVars = true; }"#,
            "EFI variables can be used only with a partition table of type",
        ),
        (
            r#"{ onlyNixStore = true; }"#,
            "no bootloader should be installed",
        ),
        (
            r#"{ contents = [ { source = "/etc/hostname"; target = "/etc/hostname"; user = "root"; } ]; }"#,
            "none of {user, group} or both",
        ),
    ];
    for (args, message) in cases {
        let output = nix_support::eval_output(&format!("({}).drvPath", stand_in.image(args)));
        let stderr = String::from_utf8_lossy(&output.stderr);
        assert!(!output.status.success(), "{args} evaluated");
        assert!(stderr.contains(message), "{args}: {stderr}");
    }
    // A store-only image as make-disk-image users write it evaluates.
    let spec = stand_in.spec("{ onlyNixStore = true; installBootLoader = false; }");
    assert_eq!(spec["label"], "nix-store");
}

#[test]
fn the_package_builds_the_host_binary_and_a_static_agent() {
    let stand_in = StandIn::new();
    let package = stand_in.eval(&format!(
        "let p = pkgs.callPackage {}/nix/package.nix {{ }}; in {{
           host = removeAttrs p.attrs [ \"passthru\" \"src\" ];
           agent = removeAttrs p.agent.attrs [ \"src\" ];
           agentPath = p.agent.outPath;
           src = p.attrs.src;
           sameSource = p.attrs.src == p.agent.attrs.src;
         }}",
        repo().display()
    ));
    let (host, agent) = (&package["host"], &package["agent"]);
    assert_eq!(
        host["cargoBuildFlags"],
        serde_json::json!(["-p", "nixdisk"])
    );
    assert_eq!(
        agent["cargoBuildFlags"],
        serde_json::json!(["-p", "nixdisk-agent"])
    );
    assert_eq!(host["version"], env!("CARGO_PKG_VERSION"));
    assert_eq!(package["sameSource"], true);
    // Static glibc for the target only, as scripts/build-agent builds it.
    assert_eq!(
        agent["env"]["CARGO_TARGET_X86_64_UNKNOWN_LINUX_GNU_RUSTFLAGS"],
        "-C target-feature=+crt-static --cfg getrandom_backend=\"linux_getrandom\""
    );
    assert!(
        agent["buildInputs"][0]
            .as_str()
            .expect("glibc.static")
            .contains("glibc-static")
    );
    // The lock file is the repository's.
    let lock = host["cargoLock"]["lockFile"].as_str().expect("lockFile");
    assert_eq!(
        std::fs::read(lock).expect("locked Cargo.lock"),
        std::fs::read(repo().join("Cargo.lock")).expect("Cargo.lock")
    );
    // The agent sits beside nixdisk and is named for it.
    let agent_path = package["agentPath"].as_str().expect("agent path");
    let install = host["postInstall"].as_str().expect("postInstall");
    assert!(
        install.contains(&format!(
            "ln -s {agent_path}/bin/nixdisk-agent $out/bin/nixdisk-agent"
        )),
        "{install}"
    );
    assert!(
        install.contains(&format!(
            "--set-default NIXDISK_AGENT {agent_path}/bin/nixdisk-agent"
        )),
        "{install}"
    );
    assert!(install.contains("qemu_kvm-stand-in/bin"), "{install}");
    // Only the workspace's sources.
    let src = Path::new(package["src"].as_str().expect("src"));
    let entries: BTreeSet<String> = std::fs::read_dir(src)
        .expect("source dir")
        .map(|entry| {
            entry
                .expect("entry")
                .file_name()
                .to_string_lossy()
                .into_owned()
        })
        .collect();
    let expected: BTreeSet<String> = ["Cargo.lock", "Cargo.toml", "firmware", "guest-agent", "src"]
        .map(str::to_owned)
        .into();
    assert_eq!(entries, expected);

    // make-disk-image uses this package unless told otherwise.
    let drv = nix_support::instantiate(&format!(
        "let pkgs = import {repo}/tests/fixtures/nix/stand-in-pkgs.nix {{ busybox = \"{bb}\"; }};
             image = import {repo}/tests/fixtures/nix/image.nix {{ busybox = \"{bb}\"; }};
         in import {repo}/nix/make-disk-image.nix {{ inherit pkgs; inherit (pkgs) lib; inherit (image) config; }}",
        repo = repo().display(),
        bb = stand_in.busybox()
    ));
    let inputs = &show_derivation(&drv)["env"]["nativeBuildInputs"];
    assert!(
        inputs.as_str().expect("inputs").ends_with("-nixdisk-0.1.0"),
        "{inputs}"
    );
}

/// The whole way: `nix-build` of make-disk-image.nix on the example system,
/// with the real nixdisk (the cargo build) and the host's kernel for the
/// builder VM, gives make-disk-image's outputs.
#[test]
fn nix_build_makes_the_image_with_nixdisk() {
    let stand_in = StandIn::new();
    let example = nix_support::ExampleSystem::build("nix-wrapper-image");
    let expr = format!(
        "import {}/tests/fixtures/nix/example-image.nix {{
           busybox = \"{}\"; example = {}; nixdiskBinary = \"{}\"; kernelRelease = \"{}\";
         }}",
        repo().display(),
        stand_in.busybox(),
        example.args,
        env!("CARGO_BIN_EXE_nixdisk"),
        nix_support::host_kernel_release(),
    );
    let out = nix_build(&expr);
    let image = out.join("nixos.img");
    let size = std::fs::metadata(&image).expect("nixos.img").len();
    assert!(size > 0 && size % (1024 * 1024) == 0, "{size}");
    assert_eq!(
        std::fs::read_to_string(out.join("nix-support/hydra-build-products"))
            .expect("hydra-build-products"),
        format!("file raw-image {}\n", image.display())
    );
}

fn nixdisk_defaults() -> Value {
    let output = nixdisk(&["spec", "--defaults"]);
    assert!(output.status.success(), "{output:?}");
    serde_json::from_slice(&output.stdout).expect("defaults JSON")
}

/// `nixdisk spec --check FILE`: must pass; returns the complete spec.
fn nixdisk_check(spec_file: &Path) -> Value {
    let output = nixdisk(&["spec", "--check", spec_file.to_str().expect("UTF-8 path")]);
    assert!(
        output.status.success(),
        "spec --check failed: {}",
        String::from_utf8_lossy(&output.stderr)
    );
    serde_json::from_slice(&output.stdout).expect("checked JSON")
}

fn read_lines(path: &Path) -> BTreeSet<String> {
    std::fs::read_to_string(path)
        .expect("read file")
        .lines()
        .map(str::to_owned)
        .collect()
}
