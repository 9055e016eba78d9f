#!@busybox@/bin/sh
# switch-to-configuration of the nixdisk example system. Only `boot` does
# anything: it installs the bootloaders this system was built with for every
# generation in /nix/var/nix/profiles (system-N-link), the default being the
# one `system` points to (else the newest):
#   - systemd-boot when an ESP is mounted (/efi, with XBOOTLDR at /boot when
#     that is a mount too; else /boot): the EFI binary, kernels and initrds
#     under EFI/nixos, loader/entries/nixos-generation-N.conf, loader.conf;
#   - GRUB for BIOS on the disk named in the toplevel's grub-device: core.img
#     with grub-mkimage, embedded with grub-bios-setup, modules in
#     /boot/grub/i386-pc, kernels in /boot/kernels, /boot/grub/grub.cfg;
#   - GRUB for EFI: EFI/BOOT/BOOTX64.EFI on the ESP, its modules in
#     /boot/grub/x86_64-efi, the same grub.cfg and kernels.
# It needs nothing outside the Nix store (runs in a chroot with no /bin, /lib).
#
# Environment: NIXOS_INSTALL_BOOTLOADER=1 (re)writes GRUB's boot code even
# when it is there already. For use outside a chroot: NIXDISK_EXAMPLE_ROOT is
# the root the paths are relative to; NIXDISK_EXAMPLE_ESP and
# NIXDISK_EXAMPLE_XBOOTLDR name the ESP and XBOOTLDR mount points inside it
# (directories standing for their own file systems) instead of finding them
# among the mounts. The GRUB device, too, is a path inside the root.
set -eu
export PATH=@sw@/bin
self=@out@
busybox=@busybox@
systemd_boot=@systemdBoot@
grub=@grub@
grub_efi=@grubEfi@
with_systemd_boot=@withSystemdBoot@
with_grub=@withGrub@
with_grub_efi=@withGrubEfi@
root=${NIXDISK_EXAMPLE_ROOT:-}
root=${root%/}

log() { echo "switch-to-configuration: $*" >&2; }
die() { log "error: $*"; exit 1; }

[ -z "@brokenSwitch@" ] || die "this example system was built to fail (build-example-system --broken-switch)"
case "${1:-}" in
  boot) ;;
  switch|test|dry-activate) die "'$1' needs a running system; this example supports only 'boot'" ;;
  *) die "usage: switch-to-configuration boot" ;;
esac

profiles=$root/nix/var/nix/profiles
generations=$(ls "$profiles" 2>/dev/null | sed -n 's/^system-\([0-9][0-9]*\)-link$/\1/p' | sort -n)
[ -n "$generations" ] || die "no generations in $profiles (expected system-N-link)"
default=$(echo "$generations" | tail -n 1)
if [ -L "$profiles/system" ]; then
  current=$(readlink "$profiles/system" | sed -n 's/^\(.*\/\)\{0,1\}system-\([0-9][0-9]*\)-link$/\2/p')
  if [ -n "$current" ] && echo "$generations" | grep -qx "$current"; then default=$current; fi
fi
log "generations: $(echo $generations), default $default"

# The toplevel of generation $1 (a /nix/store path, without the root prefix).
toplevel_of() { readlink "$profiles/system-$1-link" || die "cannot read $profiles/system-$1-link"; }
# Where the link $1 (a path inside a toplevel) points: kernel and initrd link
# straight at store files.
target_of() { readlink "$root$1" || echo "$1"; }
# A file name unique to store file $1: <hash>-<name>-<file>.
unique_name() { echo "$(basename "$(dirname "$1")")-$(basename "$1")"; }
# True when $1 (inside the root) is the top of a mounted file system, or is
# named as the ESP or XBOOTLDR in the environment.
is_mount() {
  [ "$1" = "${NIXDISK_EXAMPLE_ESP:-}" ] || [ "$1" = "${NIXDISK_EXAMPLE_XBOOTLDR:-}" ] && return 0
  [ -d "$root$1" ] && [ "$(stat -c %d "$root$1")" != "$(stat -c %d "$root$1/..")" ]
}
# Copies $1 to $2 unless it is there already (through a temporary name, so a
# failed copy leaves no truncated kernel behind).
install_file() {
  [ -f "$2" ] && cmp -s "$1" "$2" && return 0
  cp "$1" "$2.tmp"
  mv "$2.tmp" "$2"
}
# Deletes the files in directory $1 that are not named in the list $2.
remove_unlisted() {
  for f in "$1"/*; do
    [ -e "$f" ] || continue
    echo "$2" | grep -qxF "$(basename "$f")" || rm -f "$f"
  done
}
# Title, kernel, initrd, init and parameters of generation $1, as variables.
describe() {
  top=$(toplevel_of "$1")
  [ -e "$root$top/kernel" ] || die "generation $1 ($top) has no kernel: is its closure installed?"
  kernel=$(target_of "$top/kernel")
  initrd=$(target_of "$top/initrd")
  version=$(cat "$root$top/nixos-version")
  params="init=$top/init $(cat "$root$top/kernel-params") nixdisk.generation=$1"
  title="NixOS nixdisk example - Generation $1 ($version)"
}

# Sets esp and xbootldr (paths inside the root; empty when not mounted).
find_esp() {
  esp=${NIXDISK_EXAMPLE_ESP:-}
  xbootldr=${NIXDISK_EXAMPLE_XBOOTLDR:-}
  if [ -z "$esp" ]; then
    if is_mount /efi; then
      esp=/efi
      if is_mount /boot; then xbootldr=/boot; fi
    elif is_mount /boot; then
      esp=/boot
    fi
  fi
}

install_systemd_boot() {
  find_esp
  if [ -z "$esp" ]; then
    [ -z "$with_grub" ] || { log "no ESP mounted at /efi or /boot: not installing systemd-boot"; return 0; }
    die "systemd-boot needs an ESP mounted at /boot or /efi (none is mounted)"
  fi
  E=$root$esp
  X=$root${xbootldr:-$esp}
  log "installing systemd-boot: ESP $esp${xbootldr:+, XBOOTLDR $xbootldr}"
  mkdir -p "$E/EFI/systemd" "$E/EFI/BOOT" "$E/loader/entries" "$X/EFI/nixos" "$X/loader/entries"
  install_file "$systemd_boot/systemd-bootx64.efi" "$E/EFI/systemd/systemd-bootx64.efi"
  install_file "$systemd_boot/systemd-bootx64.efi" "$E/EFI/BOOT/BOOTX64.EFI"
  rm -f "$E"/loader/entries/nixos-generation-*.conf "$X"/loader/entries/nixos-generation-*.conf
  keep=
  for g in $generations; do
    describe "$g"
    k=$(unique_name "$kernel").efi
    i=$(unique_name "$initrd").efi
    install_file "$root$kernel" "$X/EFI/nixos/$k"
    install_file "$root$initrd" "$X/EFI/nixos/$i"
    keep="$keep$k
$i
"
    cat >"$X/loader/entries/nixos-generation-$g.conf" <<ENTRY
title $title
version Generation $g $version
sort-key nixos
linux /EFI/nixos/$k
initrd /EFI/nixos/$i
options $params
ENTRY
  done
  remove_unlisted "$X/EFI/nixos" "$keep"
  cat >"$E/loader/loader.conf.tmp" <<CONF
timeout 0
default nixos-generation-$default.conf
console-mode keep
editor no
CONF
  mv "$E/loader/loader.conf.tmp" "$E/loader/loader.conf"
}

grub_run() {
  program=$1
  shift
  "$grub/lib/ld-linux-x86-64.so.2" --library-path "$grub/lib" "$grub/bin/$program" "$@"
}

# GRUB keeps its files on /boot's file system whatever the firmware:
# /boot/grub (grub.cfg, grubenv, a tag file and the modules of each
# platform) and /boot/kernels. The boot code (core.img in the BIOS gap,
# BOOTX64.EFI on the ESP) finds that file system by the tag file.
install_grub() {
  describe "$default"
  B=$root/boot
  # GRUB sees /boot's own file system: paths on it start at its top when
  # /boot is a mount, else below /boot on the root file system.
  rel=/boot
  if is_mount /boot; then rel=; fi
  mkdir -p "$B/grub" "$B/kernels"
  echo "nixdisk example GRUB files" >"$B/grub/nixdisk-example.tag"
  printf 'search.file %s/grub/nixdisk-example.tag root\nset prefix=($root)%s/grub\n' "$rel" "$rel" >"$B/grub/load.cfg"
  [ -z "$with_grub" ] || install_grub_bios
  [ -z "$with_grub_efi" ] || install_grub_efi
  write_grub_menu
}

install_grub_bios() {
  # The device path is inside the root like every other path here (nixdisk
  # links it to the target disk in the chroot).
  device=$(cat "$root$top/grub-device" 2>/dev/null || cat "$self/grub-device")
  device=$root$device
  [ -b "$device" ] || die "GRUB device $device is not a block device"
  log "installing GRUB (i386-pc) on $device, files in /boot (GRUB path $rel/grub)"
  mkdir -p "$B/grub/i386-pc"
  cp -r "$grub/lib/grub/i386-pc/." "$B/grub/i386-pc/"
  if [ "${NIXOS_INSTALL_BOOTLOADER:-}" = 1 ] || [ ! -f "$B/grub/i386-pc/core.img" ]; then
    grub_run grub-mkimage -O i386-pc -d "$grub/lib/grub/i386-pc" -c "$B/grub/load.cfg" \
      -p "$rel/grub" -o "$B/grub/i386-pc/core.img" \
      biosdisk part_msdos part_gpt ext2 fat btrfs xfs search_fs_file \
      || die "grub-mkimage failed"
    grub_run grub-bios-setup -d "$B/grub/i386-pc" -m "$B/grub/device.map" "$device" \
      || die "grub-bios-setup failed on $device"
  fi
}

install_grub_efi() {
  find_esp
  [ -n "$esp" ] || die "GRUB for EFI needs an ESP mounted at /boot or /efi (none is mounted)"
  log "installing GRUB (x86_64-efi) as EFI/BOOT/BOOTX64.EFI on the ESP $esp, files in /boot (GRUB path $rel/grub)"
  mkdir -p "$B/grub/x86_64-efi" "$root$esp/EFI/BOOT"
  cp -r "$grub_efi/lib/grub/x86_64-efi/." "$B/grub/x86_64-efi/"
  # The removable-media path: no NVRAM entry is needed to boot it.
  grub_run grub-mkimage -O x86_64-efi -d "$grub_efi/lib/grub/x86_64-efi" -c "$B/grub/load.cfg" \
    -p "$rel/grub" -o "$root$esp/EFI/BOOT/BOOTX64.EFI.tmp" \
    part_msdos part_gpt ext2 fat btrfs xfs search_fs_file \
    || die "grub-mkimage failed"
  mv "$root$esp/EFI/BOOT/BOOTX64.EFI.tmp" "$root$esp/EFI/BOOT/BOOTX64.EFI"
}

write_grub_menu() {
  keep=
  {
    echo "serial --unit=0 --speed=115200"
    echo "terminal_input serial console"
    echo "terminal_output serial console"
    echo "set timeout=0"
    echo "set default=nixos-generation-$default"
    # A one-shot choice written to grubenv (next_entry=nixos-generation-N),
    # as grub-reboot does.
    echo 'if [ -s $prefix/grubenv ]; then load_env; fi'
    echo 'if [ "${next_entry}" ]; then set default="${next_entry}"; set next_entry=; save_env next_entry; fi'
    for g in $generations; do
      describe "$g"
      k=$(unique_name "$kernel")
      i=$(unique_name "$initrd")
      install_file "$root$kernel" "$B/kernels/$k"
      install_file "$root$initrd" "$B/kernels/$i"
      keep="$keep$k
$i
"
      echo "menuentry \"$title\" --id nixos-generation-$g {"
      echo "  linux $rel/kernels/$k $params"
      echo "  initrd $rel/kernels/$i"
      echo "}"
    done
  } >"$B/grub/grub.cfg.tmp"
  mv "$B/grub/grub.cfg.tmp" "$B/grub/grub.cfg"
  remove_unlisted "$B/kernels" "$keep"
}

[ -z "$with_systemd_boot" ] || install_systemd_boot
[ -z "$with_grub$with_grub_efi" ] || install_grub
sync
log "done"
