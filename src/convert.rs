//! Conversion of the raw image to the output format with qemu-img.
