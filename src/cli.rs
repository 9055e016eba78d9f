//! Command-line definitions (clap): each subcommand and flag, mapped onto the image spec.
