# The nixdisk package: the host binary `nixdisk` and the guest agent
# `nixdisk-agent` beside it in bin/ (where nixdisk looks for it; also named
# by $NIXDISK_AGENT). The agent is the builder VM's /init in an initramfs of
# its own, so it is linked statically: glibc with crt-static, flags given for
# the target only (cargo gets an explicit --target from buildRustPackage) so
# build scripts and proc macros stay dynamic; getrandom uses the syscall,
# since the VM has no /dev/urandom when the agent starts.
{
  lib,
  stdenv,
  rustPlatform,
  makeWrapper,
  glibc,
  qemu_kvm,
  e2fsprogs,
  dosfstools,
  mtools,
  btrfs-progs,
  xfsprogs,
  erofs-utils,
  squashfsTools,
  util-linux,
  gptfdisk,
}:

let
  cargoToml = lib.importTOML ../Cargo.toml;
  version = cargoToml.workspace.package.version;

  # The workspace's sources and nothing else, so edits to docs or tests do
  # not rebuild the package.
  src = lib.fileset.toSource {
    root = ../.;
    fileset = lib.fileset.unions [
      ../Cargo.toml
      ../Cargo.lock
      ../src
      ../guest-agent
      ../firmware
    ];
  };

  cargoLock.lockFile = ../Cargo.lock;

  agent = rustPlatform.buildRustPackage {
    pname = "nixdisk-agent";
    inherit version src cargoLock;
    cargoBuildFlags = [
      "-p"
      "nixdisk-agent"
    ];
    buildInputs = [ glibc.static ];
    env."CARGO_TARGET_${stdenv.hostPlatform.rust.cargoEnvVarTarget}_RUSTFLAGS" =
      "-C target-feature=+crt-static --cfg getrandom_backend=\"linux_getrandom\"";
    # The agent's tests run with the workspace's, outside the sandbox.
    doCheck = false;
    # A dynamic /init would fail in the VM with a bare "not found".
    postInstall = ''
      if $READELF -l $out/bin/nixdisk-agent | grep -q 'Requesting program interpreter'; then
        echo "nixdisk-agent is not static" >&2
        exit 1
      fi
    '';
    meta.mainProgram = "nixdisk-agent";
  };

  # What nixdisk runs on the host (QEMU, qemu-img, mkfs for store-only
  # images) and what the builder VM uses from the host's store.
  runtimeTools = [
    qemu_kvm
    e2fsprogs
    dosfstools
    mtools
    btrfs-progs
    xfsprogs
    erofs-utils
    squashfsTools
    util-linux
    gptfdisk
  ];
in
rustPlatform.buildRustPackage {
  pname = "nixdisk";
  inherit version src cargoLock;
  cargoBuildFlags = [
    "-p"
    "nixdisk"
  ];
  nativeBuildInputs = [ makeWrapper ];
  # The test suite boots QEMU, runs Nix and mkfs as root: it runs in CI
  # (scripts/test), not in the build sandbox.
  doCheck = false;

  postInstall = ''
    ln -s ${agent}/bin/nixdisk-agent $out/bin/nixdisk-agent
    wrapProgram $out/bin/nixdisk \
      --prefix PATH : ${lib.makeBinPath runtimeTools} \
      --set-default NIXDISK_AGENT ${agent}/bin/nixdisk-agent
  '';

  passthru = {
    inherit agent runtimeTools;
  };

  meta = {
    description = "Builds disk images of NixOS systems: make-disk-image.nix, faster, exact and reproducible";
    license = with lib.licenses; [
      mit
      asl20
    ];
    platforms = [ "x86_64-linux" ];
    mainProgram = "nixdisk";
  };
}
