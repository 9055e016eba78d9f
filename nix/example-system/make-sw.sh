# The system's software: sw/bin holds busybox and a link per applet.
. "$setup"
mkdir -p "$out/bin"
ln -s "$busybox/bin/busybox" "$out/bin/busybox"
for applet in $(busybox --list); do
  [ "$applet" = busybox ] || ln -s busybox "$out/bin/$applet"
done
