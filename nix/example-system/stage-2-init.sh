#!@busybox@/bin/sh
# Stage 2 of the example system (its `init`): mount the kernel file systems,
# print the boot marker on the console, and power off so tests end quickly.
export PATH=@sw@/bin
[ -e /proc/self ] || mount -t proc proc /proc
[ -d /sys/kernel ] || mount -t sysfs sysfs /sys
[ -e /dev/null ] || mount -t devtmpfs devtmpfs /dev
generation=unknown
for arg in $(cat /proc/cmdline); do
  case "$arg" in
    nixdisk.generation=*) generation=${arg#nixdisk.generation=} ;;
  esac
done
echo "NIXDISK-EXAMPLE-BOOTED generation=$generation marker=@marker@ system=@out@"
sync
poweroff -f
