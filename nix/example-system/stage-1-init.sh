#!/bin/sh
# Stage 1 of the example system (PID 1 in the initrd): load the modules the
# root file system needs, find and mount the root (root=LABEL=, UUID=,
# PARTUUID= or a /dev path on the kernel command line; the label @label@
# by default), then switch_root into the system's init (init= on the command
# line).
export PATH=/bin
/bin/busybox --install -s /bin
mount -t devtmpfs devtmpfs /dev
exec 0</dev/console 1>/dev/console 2>&1
mount -t proc proc /proc
mount -t sysfs sysfs /sys

fail() {
  echo "nixdisk-example stage 1: $*"
  echo "NIXDISK-EXAMPLE-STAGE1-FAILED"
  sleep 1
  poweroff -f
}

root="LABEL=@label@"
init=
for arg in $(cat /proc/cmdline); do
  case "$arg" in
    root=*) root=${arg#root=} ;;
    init=*) init=${arg#init=} ;;
  esac
done
[ -n "$init" ] || fail "no init= on the kernel command line"

while read -r module; do
  # A module already built in or loaded is fine; a missing one shows up as a
  # root device that never appears.
  insmod "/lib/modules/$module" 2>/dev/null || true
done </lib/modules/load-order

# Prints the little-endian hex of COUNT bytes at OFFSET of DEVICE as one word.
bytes_le() {
  od -A n -t x1 -j "$2" -N "$3" "$1" | tr -s ' \n' '  ' | awk '{ for (i = NF; i >= 1; i--) printf "%s", $i }'
}

# Prints the /dev path of the partition whose PARTUUID is $1 (GPT unique
# partition GUID, or MBR disk signature and partition number "xxxxxxxx-NN").
find_partuuid() {
  want=$(echo "$1" | tr 'A-F' 'a-f')
  for part in /sys/class/block/*; do
    [ -e "$part/partition" ] || continue
    n=$(cat "$part/partition")
    disk=/dev/$(basename "$(dirname "$(readlink -f "$part")")")
    sector=$(cat "/sys/class/block/${disk#/dev/}/queue/logical_block_size" 2>/dev/null || echo 512)
    if [ "$(dd if="$disk" bs=1 skip="$sector" count=8 2>/dev/null)" = "EFI PART" ]; then
      lba=$((0x$(bytes_le "$disk" $((sector + 72)) 8)))
      size=$((0x$(bytes_le "$disk" $((sector + 84)) 4)))
      entry=$((lba * sector + (n - 1) * size + 16))
      set -- $(od -A n -t x1 -j "$entry" -N 16 "$disk")
      got="$4$3$2$1-$6$5-$8$7-$9${10}-${11}${12}${13}${14}${15}${16}"
    else
      got="$(bytes_le "$disk" 440 4)-$(printf %02x "$n")"
    fi
    if [ "$got" = "$want" ]; then
      echo "/dev/$(basename "$part")"
      return 0
    fi
  done
  return 1
}

find_root() {
  case "$root" in
    LABEL=*|UUID=*) findfs "$root" 2>/dev/null ;;
    PARTUUID=*) find_partuuid "${root#PARTUUID=}" ;;
    /dev/*) [ -b "$root" ] && echo "$root" ;;
    *) fail "root=$root is not LABEL=, UUID=, PARTUUID= or a /dev path" ;;
  esac
}

tries=0
until device=$(find_root) && [ -n "$device" ]; do
  tries=$((tries + 1))
  [ "$tries" -le 300 ] || fail "root device $root did not appear within 30 s"
  usleep 100000
done

mount "$device" /mnt-root || fail "cannot mount $device (root=$root)"
for dir in dev proc sys; do mkdir -p "/mnt-root/$dir"; done
[ -e "/mnt-root$init" ] || [ -L "/mnt-root$init" ] || fail "init $init is not on $device"
umount /proc /sys
mount --move /dev /mnt-root/dev
exec switch_root /mnt-root "$init"
