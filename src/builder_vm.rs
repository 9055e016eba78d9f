//! The builder VM: boots QEMU with the agent, waits for hello, and hands out a connected agent client.
