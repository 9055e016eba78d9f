//! Arbitrary bytes, split at arbitrary points, into both sides' frame decoders
//! and the blocking reader: none may panic, and every frame that decodes
//! encodes again into bytes that decode to the same frame.

#![no_main]

use libfuzzer_sys::fuzz_target;
use nixdisk_agent::protocol::{
    AgentMessage, Decoder, Frame, HostMessage, encode_frame, read_frame,
};
use serde::Serialize;
use serde::de::DeserializeOwned;

/// Encodes `frame` and decodes it again: the same frame must come back.
fn round_trips<M>(frame: &Frame<M>)
where
    M: Serialize + DeserializeOwned + PartialEq + std::fmt::Debug,
{
    let bytes = encode_frame(frame).expect("a decoded frame encodes");
    let again = Decoder::<M>::new()
        .feed(&bytes)
        .expect("an encoded frame decodes");
    assert_eq!(again.as_slice(), std::slice::from_ref(frame));
}

fuzz_target!(|input: &[u8]| {
    // The first byte picks the chunk size, the rest is the stream.
    let Some((&split, stream)) = input.split_first() else {
        return;
    };
    let chunk = usize::from(split).max(1);
    let mut host = Decoder::<HostMessage>::new();
    let mut agent = Decoder::<AgentMessage>::new();
    let (mut host_ok, mut agent_ok) = (true, true);
    for piece in stream.chunks(chunk) {
        if agent_ok {
            match agent.feed(piece) {
                Ok(frames) => frames.iter().for_each(round_trips),
                Err(_) => agent_ok = false,
            }
        }
        if host_ok {
            match host.feed(piece) {
                Ok(frames) => frames.iter().for_each(round_trips),
                Err(_) => host_ok = false,
            }
        }
    }
    let _ = host.finish();
    let mut reader = stream;
    while let Ok(Some(frame)) = read_frame::<HostMessage, _>(&mut reader) {
        round_trips(&frame);
    }
});
