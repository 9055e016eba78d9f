//! QEMU: the pure command-line builder, the supervised process, and QMP.
