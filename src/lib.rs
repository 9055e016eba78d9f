//! nixdisk builds disk images of NixOS systems.
//!
//! The data flows in one direction, and the modules follow it:
//! [`spec`] -> [`closure`] -> [`sizing`] -> [`layout`] -> [`builder_vm`]
//! (with [`kernel`], [`initramfs`], [`qemu`], [`transport`]) -> agent steps ->
//! image -> [`convert`] -> [`output`]. Store-only images take the short way
//! through [`store_image`] with no VM.

pub mod boot_test;
pub mod builder_vm;
pub mod cli;
pub mod closure;
pub mod convert;
pub mod flake;
pub mod generation;
pub mod host_tool;
pub mod initramfs;
pub mod install;
pub mod interrupt;
pub mod kernel;
pub mod layout;
pub mod output;
pub mod pipeline;
pub mod progress;
pub mod qemu;
pub mod reproducible;
pub mod sizing;
pub mod spec;
pub mod store_image;
pub mod timings;
pub mod transport;
