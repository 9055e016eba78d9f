# Sourced by every builder of the example system: puts busybox's applets on
# PATH (the only tools a build has; there is no stdenv).
mkdir -p "$TMPDIR/bin"
for applet in $("$busybox/bin/busybox" --list); do
  ln -s "$busybox/bin/busybox" "$TMPDIR/bin/$applet"
done
export PATH="$TMPDIR/bin"
