# A drop-in replacement for nixpkgs' `nixos/lib/make-disk-image.nix` that
# builds the image with nixdisk.
#
# It takes the same arguments with the same defaults and produces the same
# outputs: `$out/<baseName>.<ext>`, `$out/efi-vars.fd` (with touchEFIVars)
# and `$out/nix-support/hydra-build-products`. Switching is one line:
#
#   import "${nixpkgs}/nixos/lib/make-disk-image.nix" { inherit config lib pkgs; ... }
#   import "${nixdisk}/nix/make-disk-image.nix"       { inherit config lib pkgs; ... }
#
# The arguments become nixdisk's image spec unchanged (the spec's JSON names
# are these argument names), written with builtins.toJSON; the derivation
# runs `nixdisk build --spec spec.json --out $out`. What nixdisk cannot ask
# Nix for inside a build it gets here: the closureInfo of the system (plus
# the channel and additionalPaths), the builder kernel and its modules, and
# OVMF. The derivation does not require the `kvm` system feature: nixdisk
# uses KVM where it works and falls back to TCG, so builders without KVM can
# build images too.
#
# Arguments of nixdisk's own, all optional: `nixdisk` (the package),
# `builderKernel` (the kernel of the builder VM; its `bzImage` and
# `lib/modules/<modDirVersion>` are used), `extraSpec` (more spec fields,
# e.g. `{ systems = [ ... ]; }` or `{ format = "qcow2-zstd"; }`).
{
  pkgs,
  lib,

  # The NixOS configuration to be installed onto the disk image.
  config,

  # The size of the disk, in MiB, or "auto" (computed from the contents,
  # plus additionalSpace). nixdisk also takes sizes with units ("8G").
  diskSize ? "auto",

  # Free space added when diskSize is "auto".
  additionalSpace ? "512M",

  # Where the ESP or /boot partition ends, on layouts that have one.
  bootSize ? "256M",

  # Files and directories placed into the image: a list of
  # { source, target, mode?, user?, group? }; user and group both or neither.
  contents ? [ ],

  # legacy, legacy+gpt, efi, efixbootldr, hybrid, legacy+boot or none.
  partitionTableType ? "legacy",

  # Whether to run `switch-to-configuration boot` while building.
  installBootLoader ? true,

  # Whether the bootloader installation may write EFI variables; they are
  # kept in $out/efi-vars.fd.
  touchEFIVars ? false,

  # OVMF firmware derivation.
  OVMF ? pkgs.OVMF.fd,

  # EFI firmware.
  efiFirmware ? OVMF.firmware,

  # EFI variables template.
  efiVariables ? OVMF.variables,

  # The root file system type. Unlike make-disk-image, nixdisk takes every
  # file system it can make on every layout.
  fsType ? "ext4",

  # File system label.
  label ? if onlyNixStore then "nix-store" else "nixos",

  # The initial NixOS configuration file copied to /etc/nixos/configuration.nix.
  configFile ? null,

  # Shell code run after the image is built, with $out and $diskImage set.
  postVM ? "",

  # Memory of the builder VM, in MiB.
  memSize ? 1024,

  # Only the Nix store at the root of one file system, built without a VM.
  # Incompatible with contents, installBootLoader and configFile.
  onlyNixStore ? false,

  name ? "nixos-disk-image",

  # raw, qcow2, qcow2-compressed, vdi, vpc (and nixdisk's vmdk, vhdx,
  # qcow2-zstd).
  format ? "raw",

  # The image file's name without its extension.
  baseName ? "nixos",

  # Fixed GUIDs, UUIDs and timestamps: equal inputs give equal images.
  deterministic ? true,

  # GPT partition GUID of the root partition.
  rootGPUID ? "F222513B-DED1-49FA-B591-20CE86A2FE7F",

  # File system UUID of the root partition.
  rootFSUID ? (if fsType == "ext4" then rootGPUID else null),

  # Whether to install a nixos channel made from pkgs.path for root.
  copyChannel ? true,

  # More store paths to copy into the image's store.
  additionalPaths ? [ ],

  # nixdisk's own arguments (see above).
  nixdisk ? pkgs.callPackage ./package.nix { },
  builderKernel ? pkgs.linuxPackages.kernel,
  extraSpec ? { },
}@args:

let
  toplevel = config.system.build.toplevel;

  # As make-disk-image makes it: the nixpkgs tree as the `nixos` channel.
  channelSources = pkgs.runCommand "nixos-${config.system.nixos.version}" { } ''
    mkdir -p $out
    cp -prd ${(lib.cleanSource pkgs.path).outPath} $out/nixos
    chmod -R u+w $out/nixos
    if [ ! -e $out/nixos/nixpkgs ]; then
      ln -s . $out/nixos/nixpkgs
    fi
    rm -rf $out/nixos/.git
    echo -n ${config.system.nixos.versionSuffix} > $out/nixos/.version-suffix
  '';

  basePaths = [ toplevel ] ++ lib.optional copyChannel channelSources;

  additionalPaths' = lib.subtractLists basePaths additionalPaths;

  # Everything the image's store holds, with what Nix's database knows of it:
  # nixdisk registers it in the image without asking Nix (which a sandboxed
  # build cannot reach).
  closureInfo = pkgs.closureInfo { rootPaths = basePaths ++ additionalPaths'; };

  # The builder VM needs OVMF only for EFI work; the firmware then comes from
  # pkgs rather than from the build machine. Given explicitly, it is always
  # passed.
  usesEFI =
    touchEFIVars
    || args ? efiFirmware
    || args ? efiVariables
    || builtins.elem partitionTableType [
      "efi"
      "efixbootldr"
      "hybrid"
    ];

  # A store path for each contents source: a local path is copied into the
  # store, a derivation becomes its output path; strings (globs) stay.
  contentEntry =
    entry:
    {
      source = "${entry.source}";
      inherit (entry) target;
    }
    // lib.optionalAttrs (entry ? mode && entry.mode != null) { inherit (entry) mode; }
    // lib.optionalAttrs (entry ? user && entry.user != null) { inherit (entry) user; }
    // lib.optionalAttrs (entry ? group && entry.group != null) { inherit (entry) group; };

  # The image spec: make-disk-image's arguments under their own names.
  spec = {
    system = "${toplevel}";
    inherit
      diskSize
      additionalSpace
      bootSize
      partitionTableType
      fsType
      label
      format
      postVM
      memSize
      onlyNixStore
      copyChannel
      installBootLoader
      deterministic
      name
      baseName
      ;
    touchEFIVars = touchEFIVars;
    contents = map contentEntry contents;
    channelSource = if copyChannel then "${channelSources}" else null;
    additionalPaths = map (path: "${path}") additionalPaths';
    efiFirmware = if usesEFI then "${efiFirmware}" else null;
    efiVariables = if usesEFI then "${efiVariables}" else null;
    rootGPUID = rootGPUID;
    rootFSUID = rootFSUID;
    configFile = if configFile == null then null else "${configFile}";
    # nixdisk's own: store images may carry their registration (extraSpec).
    nixPathRegistration = false;
  }
  // extraSpec;

  specFile = pkgs.writeText "${name}-spec.json" (builtins.toJSON spec);

  # make-disk-image links the GRUB device to the builder's disk; nixdisk
  # learns it from here, since the toplevel does not name it.
  grub = config.boot.loader.grub or { };
  grubDevice = grub.device or "nodev";
  grubDevices = lib.optional (grub.enable or false && grubDevice != "nodev") grubDevice;
in

# make-disk-image's own checks that nixdisk shares, kept at evaluation time
# so a mistake shows before the system is built. nixdisk checks them again
# (with the rest of the spec) when the build starts.
assert lib.assertMsg (
  touchEFIVars
  -> builtins.elem partitionTableType [
    "hybrid"
    "efi"
    "efixbootldr"
    "legacy+gpt"
  ]
) "EFI variables can be used only with a partition table of type: hybrid, efi, efixbootldr, or legacy+gpt.";
assert lib.assertMsg (
  onlyNixStore -> contents == [ ] && configFile == null && !installBootLoader
) "In a only Nix store image, the contents must be empty, no configuration must be provided and no bootloader should be installed.";
assert lib.assertMsg (lib.all (
  attrs: ((attrs.user or null) == null) == ((attrs.group or null) == null)
) contents) "Contents of the disk image should set none of {user, group} or both at the same time.";

pkgs.runCommand name
  (
    {
      nativeBuildInputs = [ nixdisk ];

      # What the build cannot discover inside a sandbox.
      NIXDISK_CLOSURE_INFO = closureInfo;
      NIXDISK_KERNEL = "${builderKernel}/bzImage";
      NIXDISK_KERNEL_MODULES = "${builderKernel}/lib/modules/${builderKernel.modDirVersion}";
      NIXDISK_GRUB_DEVICES = lib.concatStringsSep " " grubDevices;

      passthru = {
        inherit
          spec
          specFile
          closureInfo
          channelSources
          ;
      };
    }
    // lib.optionalAttrs usesEFI { inherit OVMF; }
  )
  ''
    # nixdisk keeps its caches under $HOME, which a build does not have.
    export HOME=$TMPDIR
    nixdisk build --spec ${specFile} --out $out
  ''
