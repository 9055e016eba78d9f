# The toplevel, shaped like a NixOS system: kernel, initrd, init,
# kernel-params, nixos-version, boot.json (bootspec v1), sw, and
# bin/switch-to-configuration; plus `bootloader` (which loaders
# switch-to-configuration installs: systemd-boot, grub, grub-efi) and, with
# GRUB for BIOS, `grub-device`.
. "$setup"
mkdir -p "$out/bin"
ln -s "$kernel/bzImage" "$out/kernel"
ln -s "$initrd/initrd" "$out/initrd"
ln -s "$sw" "$out/sw"
echo "$kernelParams" >"$out/kernel-params"
echo "nixdisk-example-$marker" >"$out/nixos-version"
echo "$system" >"$out/system"
cat "$kernel/version" >"$out/kernel-version"

subst() {
  sed -e "s|@busybox@|$busybox|g" -e "s|@sw@|$sw|g" -e "s|@out@|$out|g" \
    -e "s|@marker@|$marker|g" -e "s|@systemdBoot@|$systemdBoot|g" \
    -e "s|@grub@|$grub|g" -e "s|@grubEfi@|$grubEfi|g" \
    -e "s|@withSystemdBoot@|$withSystemdBoot|g" -e "s|@withGrubEfi@|$withGrubEfi|g" \
    -e "s|@withGrub@|$withGrub|g" -e "s|@brokenSwitch@|$brokenSwitch|g" "$1" >"$2"
  chmod 0755 "$2"
}
subst "$stage2" "$out/init"
subst "$switchToConfiguration" "$out/bin/switch-to-configuration"

loaders=
[ -z "$withSystemdBoot" ] || loaders="systemd-boot"
[ -z "$withGrub" ] || loaders="${loaders:+$loaders }grub"
[ -z "$withGrubEfi" ] || loaders="${loaders:+$loaders }grub-efi"
echo "$loaders" >"$out/bootloader"
[ -z "$withGrub" ] || echo "$grubDevice" >"$out/grub-device"
# Extra store paths in the closure (benchmarks): one per line.
[ -z "$payload" ] || for p in $payload; do echo "$p"; done >"$out/payload"

params=$(for p in $kernelParams; do printf '"%s",' "$p"; done)
cat >"$out/boot.json" <<JSON
{
  "org.nixos.bootspec.v1": {
    "init": "$out/init",
    "initrd": "$initrd/initrd",
    "kernel": "$kernel/bzImage",
    "kernelParams": [${params%,}],
    "label": "NixOS nixdisk example ($marker)",
    "system": "$system",
    "toplevel": "$out"
  }
}
JSON
