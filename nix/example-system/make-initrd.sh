# The initrd: busybox, the kernel modules the root file system needs, and the
# stage-1 init, as a gzip-compressed newc cpio archive.
. "$setup"
root=$TMPDIR/root
mkdir -p "$root/bin" "$root/dev" "$root/proc" "$root/sys" "$root/mnt-root" "$root/lib/modules"
cp "$busybox/bin/busybox" "$root/bin/busybox"
ln -s busybox "$root/bin/sh"
sed "s|@label@|$label|g" "$init" >"$root/init"
chmod 0755 "$root/init"
cp -r "$kernel/lib/modules/." "$root/lib/modules/"
# Fixed timestamps and a sorted file list keep the archive's content stable.
cd "$root"
find . -exec touch -h -d '1970-01-01 00:00:01' {} +
mkdir -p "$out"
find . | sort | cpio -o -H newc -R 0:0 2>/dev/null | gzip -9 >"$out/initrd"
