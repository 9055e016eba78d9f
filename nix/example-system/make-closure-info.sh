# closureInfo of the toplevel, as nixpkgs' closure-info.nix writes it:
# store-paths (one a line), registration (nix-store --load-db format) and
# total-nar-size, from the JSON that exportReferencesGraph leaves in
# .attrs.json (structured attrs). Arguments: the busybox path, the awk program.
busybox=$1
awk=$2
attrs=${NIX_ATTRS_JSON_FILE:-$NIX_BUILD_TOP/.attrs.json}
bb() { "$busybox/bin/busybox" "$@"; }
out=$(bb sed -n 's/.*"outputs":{"out":"\([^"]*\)".*/\1/p' "$attrs" | bb head -n 1)
[ -n "$out" ] || { echo "closure-info: no output path in $attrs" >&2; exit 1; }
bb mkdir -p "$out"
bb awk -v out="$out" -f "$awk" "$attrs"
