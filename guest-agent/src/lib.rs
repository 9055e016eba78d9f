//! nixdisk's guest agent and the protocol it speaks with the host.
//!
//! The library half holds [`protocol`], shared by the host controller and the
//! agent; the binary half is the agent itself, PID 1 of the builder VM.

pub mod protocol;
