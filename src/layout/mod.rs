//! Partition layouts as data: a pure function from spec and disk size to a partition table.
