//! Installing a system into an image root, planned on the host.
//!
//! What `nixos-install` and make-disk-image's VM script leave on a root file
//! system, apart from the store paths themselves, computed before the
//! builder VM starts:
//! - [`nix_db`]: the Nix database (schema 10) registering the closure;
//! - [`image_root`]: the plan of everything beside the store (profiles with
//!   one link per generation, the channel, `/etc/NIXOS`, mount points, the
//!   configuration file, the database files);
//! - [`contents`]: the spec's `contents` resolved to host files, modes and
//!   numeric owners ([`accounts`] reads the installed system's users);
//! - [`materialise`]: writes a plan into a staging directory the guest copies
//!   onto the target root, next to `/nix/store`;
//! - [`plan`]: all of it from the spec in one call ([`plan_install`]).

pub mod accounts;
pub mod contents;
pub mod image_root;
pub mod materialise;
pub mod nix_db;
pub mod plan;

pub use accounts::{Accounts, AccountsError};
pub use contents::{
    ChownOp, ContentsError, Placement, PlacementKind, ResolvedContents, resolve_contents,
};
pub use image_root::{
    Entry, EntryKind, ImageRootError, ImageRootInputs, ImageRootPlan, plan_image_root,
    profile_links, resolve_channel,
};
pub use materialise::{MaterialiseError, materialise};
pub use nix_db::{
    DerivationOutput, NixDbError, NixDbFiles, read_derivation_outputs, registration_time,
    render_nix_db,
};
pub use plan::{InstallError, InstallPlan, closure_roots, plan_install, spec_channel};
