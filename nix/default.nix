# nixdisk from this repository: `nix-build nix` builds the package (host
# binary with the static guest agent beside it). To build images, import
# ./make-disk-image.nix as you would nixpkgs' nixos/lib/make-disk-image.nix.
{
  pkgs ? import <nixpkgs> { },
}:
pkgs.callPackage ./package.nix { }
