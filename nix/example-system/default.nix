# The nixdisk example system: a NixOS-shaped toplevel built offline from
# store paths that scripts/build-example-system adds from the host's Debian
# packages (no nixpkgs). It is what the README demo and the image tests
# install and boot.
#
# Arguments (all strings, from `nix-build --argstr`):
#   busybox      store path holding bin/busybox and bin/sh -> busybox
#   kernel       store path holding bzImage, version, lib/modules/{...,load-order}
#   systemdBoot  store path holding systemd-bootx64.efi
#   grub         store path holding bin/, lib/ (with ld-linux) and lib/grub/i386-pc
#   grubEfi      store path holding lib/grub/x86_64-efi (only for grub-efi, grub-both)
#   marker       text the booted system prints; tells generations apart
#   bootloader   "systemd-boot", "grub" (BIOS), "both" (systemd-boot and GRUB
#                for BIOS), "grub-efi", or "grub-both" (GRUB for BIOS and EFI)
#   grubDevice   the disk GRUB is installed to (nixdisk links it to the target)
#   label        file-system label of the root the initrd mounts by default
#   brokenSwitch "1" for a system whose switch-to-configuration fails
#   payload      store paths (space separated) the system references in
#                `payload`, so they join its closure (benchmarks add synthetic data)
{ busybox, kernel, systemdBoot, grub, grubEfi ? null
, marker ? "example", bootloader ? "both", grubDevice ? "/dev/vda", label ? "nixos"
, brokenSwitch ? "", payload ? "" }:

assert builtins.match "[A-Za-z0-9._-]+" marker != null;
assert builtins.match "[A-Za-z0-9._-]+" label != null;
assert builtins.elem bootloader [ "systemd-boot" "grub" "both" "grub-efi" "grub-both" ];

let
  system = "x86_64-linux";
  bb = builtins.storePath busybox;
  linux = builtins.storePath kernel;
  withSystemdBoot = builtins.elem bootloader [ "systemd-boot" "both" ];
  withGrub = builtins.elem bootloader [ "grub" "both" "grub-both" ];
  withGrubEfi = builtins.elem bootloader [ "grub-efi" "grub-both" ];
  # Only the bootloaders the system uses enter its closure.
  onlyIf = cond: path: if cond then builtins.storePath path else "";

  # A derivation whose builder is a busybox-sh script from this directory.
  run = name: script: env: derivation ({
    inherit name system;
    builder = "${bb}/bin/sh";
    args = [ "-e" script ];
    busybox = bb;
    setup = ./setup.sh;
  } // env);

  sw = run "example-sw" ./make-sw.sh { };

  initrd = run "example-initrd" ./make-initrd.sh {
    kernel = linux;
    init = ./stage-1-init.sh;
    inherit label;
  };

  kernelParams = [ "console=ttyS0,115200" "panic=1" "loglevel=4" ];

  toplevel = run "nixos-system-nixdisk-example-${marker}" ./make-toplevel.sh ({
    kernel = linux;
    inherit initrd sw marker bootloader grubDevice brokenSwitch;
    systemdBoot = onlyIf withSystemdBoot systemdBoot;
    grub = onlyIf (withGrub || withGrubEfi) grub;
    grubEfi = onlyIf withGrubEfi grubEfi;
    kernelParams = builtins.concatStringsSep " " kernelParams;
    stage2 = ./stage-2-init.sh;
    switchToConfiguration = ./switch-to-configuration.sh;
    withSystemdBoot = if withSystemdBoot then "1" else "";
    withGrub = if withGrub then "1" else "";
    withGrubEfi = if withGrubEfi then "1" else "";
  } // (if payload == "" then { } else {
    # Only when given, so systems without one keep their store paths.
    payload = map builtins.storePath
      (builtins.filter (p: builtins.isString p && p != "") (builtins.split " " payload));
  }));

  # What nixpkgs' closure-info.nix writes: store-paths, registration and
  # total-nar-size for the closure of the toplevel.
  closureInfo = derivation {
    name = "closure-info";
    inherit system;
    builder = "${bb}/bin/sh";
    # Structured attrs put nothing in the environment: the script gets busybox
    # and the awk program as arguments.
    args = [ "-e" ./make-closure-info.sh bb ./closure-info.awk ];
    __structuredAttrs = true;
    exportReferencesGraph.closure = [ toplevel ];
  };
in
{
  inherit toplevel closureInfo initrd sw;
}
