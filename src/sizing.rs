//! Auto sizing: how big the disk must be for a closure, contents and layout, with the breakdown.
