//! The output directory: image file names, hydra-build-products, postVM, and the atomic rename at the end.
