//! Store-only images (`onlyNixStore`): the store paths at the root of one file system, built on the host.
