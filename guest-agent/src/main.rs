//! The guest agent: PID 1 of nixdisk's builder VM.

fn main() {}
