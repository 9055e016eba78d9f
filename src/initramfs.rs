//! The builder initramfs: a deterministic cpio newc archive with the agent as /init and the kernel modules it needs.
