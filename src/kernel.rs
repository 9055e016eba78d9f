//! The builder kernel: discovery of a kernel and its modules, and module resolution from modules.dep.
