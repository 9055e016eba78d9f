//! nixdisk's guest agent and the protocol it speaks with the host.
//!
//! The library half holds [`protocol`], shared by the host controller and the
//! agent, and [`boot_args`], the agent's settings that the host writes on the
//! builder kernel's command line; the binary half is the agent itself, PID 1
//! of the builder VM.

pub mod boot_args;
pub mod protocol;
