//! Golden tables for every layout, and properties over disk and boot sizes.
