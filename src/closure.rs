//! Closure input: a closureInfo directory or a store path asked of Nix, read into a `Closure`.
