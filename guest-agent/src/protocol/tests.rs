//! Exact encodings, error cases and property tests of the protocol.

use proptest::prelude::*;
use sha2::{Digest, Sha256};

use super::*;

fn hello() -> AgentMessage {
    AgentMessage::Hello(Hello {
        protocol_version: PROTOCOL_VERSION,
        agent_version: "0.1.0".into(),
        kernel_release: "6.1.0-56-amd64".into(),
        transport: Transport::Vsock { port: 7000 },
    })
}

#[test]
fn control_frame_layout_is_length_type_json() {
    let bytes = encode_frame(&Frame::Control(HostMessage::PowerOff { id: 3 })).unwrap();
    let json = br#"{"type":"power_off","id":3}"#;
    assert_eq!(&bytes[..4], &(json.len() as u32).to_le_bytes());
    assert_eq!(bytes[4], 1);
    assert_eq!(&bytes[5..], json);
}

#[test]
fn data_frame_layout_is_length_type_bytes() {
    let bytes = encode_frame::<HostMessage>(&Frame::Data(vec![7, 8, 9])).unwrap();
    assert_eq!(bytes, [3, 0, 0, 0, 2, 7, 8, 9]);
}

#[test]
fn output_data_is_base64_in_json() {
    let message = AgentMessage::Output(Output {
        id: 1,
        stream: OutputStream::Stderr,
        data: b"hi\n".to_vec(),
    });
    let json = serde_json::to_string(&message).unwrap();
    assert_eq!(
        json,
        r#"{"type":"output","id":1,"stream":"stderr","data":"aGkK"}"#
    );
}

#[test]
fn hello_json_names_the_transport() {
    let json = serde_json::to_string(&hello()).unwrap();
    assert_eq!(
        json,
        r#"{"type":"hello","protocol_version":2,"agent_version":"0.1.0","kernel_release":"6.1.0-56-amd64","transport":{"kind":"vsock","port":7000}}"#
    );
    let ready = serde_json::to_string(&AgentMessage::Ready).unwrap();
    assert_eq!(ready, r#"{"type":"ready"}"#);
}

#[test]
fn decoder_takes_frames_split_at_every_byte() {
    let mut stream = encode_frame(&Frame::Control(hello())).unwrap();
    stream.extend(encode_frame::<AgentMessage>(&Frame::Data(vec![1; 300])).unwrap());
    let mut decoder = Decoder::<AgentMessage>::new();
    let mut frames = Vec::new();
    for byte in &stream {
        frames.extend(decoder.feed(std::slice::from_ref(byte)).unwrap());
    }
    assert_eq!(
        frames,
        vec![Frame::Control(hello()), Frame::Data(vec![1; 300])]
    );
    decoder.finish().unwrap();
}

#[test]
fn oversized_length_is_refused_before_the_payload_arrives() {
    let mut decoder = Decoder::<AgentMessage>::new();
    let len = (MAX_FRAME_PAYLOAD as u32 + 1).to_le_bytes();
    let error = decoder
        .feed(&[len[0], len[1], len[2], len[3], 2])
        .unwrap_err();
    assert!(matches!(error, ProtocolError::FrameTooLarge { len } if len == MAX_FRAME_PAYLOAD + 1));
    assert!(matches!(
        decoder.feed(&[]),
        Err(ProtocolError::DecoderFailed)
    ));
}

#[test]
fn unknown_frame_type_is_an_error() {
    let error = Decoder::<AgentMessage>::new()
        .feed(&[0, 0, 0, 0, 9])
        .unwrap_err();
    assert!(matches!(error, ProtocolError::UnknownFrameKind(9)));
}

#[test]
fn control_frame_with_an_unknown_message_is_an_error() {
    let json = br#"{"type":"format_disk","id":1}"#;
    let mut bytes = (json.len() as u32).to_le_bytes().to_vec();
    bytes.push(1);
    bytes.extend_from_slice(json);
    let error = read_frame::<HostMessage, _>(&mut &bytes[..]).unwrap_err();
    assert!(matches!(error, ProtocolError::BadMessage { .. }), "{error}");
}

#[test]
fn read_frame_tells_clean_end_from_truncation() {
    assert!(
        read_frame::<HostMessage, _>(&mut &[][..])
            .unwrap()
            .is_none()
    );
    let error = read_frame::<HostMessage, _>(&mut &[5, 0, 0, 0, 2, 1][..]).unwrap_err();
    assert!(matches!(error, ProtocolError::Truncated { buffered: 6 }));
    let error = read_frame::<HostMessage, _>(&mut &[5, 0][..]).unwrap_err();
    assert!(matches!(error, ProtocolError::Truncated { buffered: 2 }));
}

#[test]
fn finish_reports_a_partial_frame() {
    let mut decoder = Decoder::<HostMessage>::new();
    assert!(decoder.feed(&[4, 0, 0, 0, 2, 1]).unwrap().is_empty());
    assert!(matches!(
        decoder.finish(),
        Err(ProtocolError::Truncated { buffered: 6 })
    ));
}

#[test]
fn writing_an_oversized_data_frame_fails() {
    let mut sink = Vec::new();
    let error = write_data(&mut sink, &vec![0; MAX_FRAME_PAYLOAD + 1]).unwrap_err();
    assert!(matches!(error, ProtocolError::FrameTooLarge { .. }));
    assert!(sink.is_empty());
}

#[test]
fn transport_parses_and_prints() {
    for text in ["vsock:7000", "serial:org.nixdisk.agent", "stdio"] {
        assert_eq!(text.parse::<Transport>().unwrap().to_string(), text);
    }
    for bad in [
        "vsock:",
        "vsock:0",
        "vsock:x",
        "vsock:4294967295",
        "serial:",
        "serial:a/b",
        "tcp:1",
        "vsock",
    ] {
        assert!(bad.parse::<Transport>().is_err(), "{bad}");
    }
}

#[test]
fn sha256_hex_matches_a_known_digest() {
    let mut hasher = Sha256::new();
    hasher.update(b"abc");
    assert_eq!(
        sha256_hex(hasher),
        "ba7816bf8f01cfea414140de5dae2223b00361a396177a9cb410ff61f20015ad"
    );
}

fn text() -> impl Strategy<Value = String> {
    ".{0,40}"
}

fn transport() -> impl Strategy<Value = Transport> {
    prop_oneof![
        (1..u32::MAX).prop_map(|port| Transport::Vsock { port }),
        "[a-z.0-9]{1,20}".prop_map(|name| Transport::Serial { name }),
        Just(Transport::Stdio),
    ]
}

fn end() -> impl Strategy<Value = End> {
    (any::<u64>(), any::<u64>(), "[0-9a-f]{64}").prop_map(|(id, bytes, sha256)| End {
        id,
        bytes,
        sha256,
    })
}

fn host_message() -> impl Strategy<Value = HostMessage> {
    prop_oneof![
        (
            any::<u64>(),
            prop::collection::vec(text(), 0..5),
            prop::collection::vec((text(), text()), 0..5),
            prop::option::of(text()),
            any::<bool>(),
            any::<bool>(),
        )
            .prop_map(|(id, argv, env, cwd, chroot, stdin)| HostMessage::Run(Run {
                id,
                argv,
                env,
                cwd,
                chroot,
                stdin
            })),
        (any::<u64>(), text(), any::<u32>()).prop_map(|(id, path, mode)| HostMessage::WriteFile {
            id,
            path,
            mode
        }),
        (any::<u64>(), text()).prop_map(|(id, path)| HostMessage::ReadFile { id, path }),
        end().prop_map(HostMessage::End),
        any::<u64>().prop_map(|id| HostMessage::PowerOff { id }),
    ]
}

fn agent_message() -> impl Strategy<Value = AgentMessage> {
    let status = prop_oneof![
        any::<i32>().prop_map(ExitStatus::Code),
        any::<i32>().prop_map(ExitStatus::Signal)
    ];
    let level = prop_oneof![
        Just(LogLevel::Debug),
        Just(LogLevel::Info),
        Just(LogLevel::Warn)
    ];
    let stream = prop_oneof![Just(OutputStream::Stdout), Just(OutputStream::Stderr)];
    prop_oneof![
        (any::<u32>(), text(), text(), transport()).prop_map(
            |(protocol_version, agent_version, kernel_release, transport)| {
                AgentMessage::Hello(Hello {
                    protocol_version,
                    agent_version,
                    kernel_release,
                    transport,
                })
            }
        ),
        (
            any::<u64>(),
            stream,
            prop::collection::vec(any::<u8>(), 0..200)
        )
            .prop_map(|(id, stream, data)| AgentMessage::Output(Output {
                id,
                stream,
                data
            })),
        (any::<u64>(), status).prop_map(|(id, status)| AgentMessage::Exited { id, status }),
        (any::<u64>(), any::<u64>(), text())
            .prop_map(|(id, bytes, sha256)| AgentMessage::Written { id, bytes, sha256 }),
        end().prop_map(AgentMessage::End),
        any::<u64>().prop_map(|id| AgentMessage::Done { id }),
        Just(AgentMessage::Ready),
        (
            any::<u64>(),
            text(),
            any::<u64>(),
            prop::option::of(any::<u64>())
        )
            .prop_map(|(id, step, done, total)| AgentMessage::Progress(Progress {
                id,
                step,
                done,
                total
            })),
        (level, text()).prop_map(|(level, message)| AgentMessage::Log { level, message }),
        (
            prop::option::of(any::<u64>()),
            text(),
            prop::collection::vec(text(), 0..3),
            prop::option::of(text())
        )
            .prop_map(|(id, message, context, stderr_tail)| {
                AgentMessage::Error(ErrorReport {
                    id,
                    message,
                    context,
                    stderr_tail,
                })
            }),
    ]
}

proptest! {
    #[test]
    fn every_host_message_round_trips(messages in prop::collection::vec(host_message(), 1..8), split in 1usize..64) {
        let mut stream = Vec::new();
        for message in &messages {
            write_message(&mut stream, message).unwrap();
        }
        let mut decoder = Decoder::<HostMessage>::new();
        let mut decoded = Vec::new();
        for chunk in stream.chunks(split) {
            decoded.extend(decoder.feed(chunk).unwrap());
        }
        let expected: Vec<_> = messages.iter().cloned().map(Frame::Control).collect();
        prop_assert_eq!(&decoded, &expected);
        let mut reader = &stream[..];
        let mut read = Vec::new();
        while let Some(frame) = read_frame::<HostMessage, _>(&mut reader).unwrap() {
            read.push(frame);
        }
        prop_assert_eq!(read, expected);
    }

    #[test]
    fn every_agent_message_round_trips(message in agent_message(), data in prop::collection::vec(any::<u8>(), 0..2000)) {
        let mut stream = Vec::new();
        write_frame(&mut stream, &Frame::Control(message.clone())).unwrap();
        write_frame::<AgentMessage, _>(&mut stream, &Frame::Data(data.clone())).unwrap();
        let mut reader = &stream[..];
        prop_assert_eq!(read_frame(&mut reader).unwrap(), Some(Frame::Control(message)));
        prop_assert_eq!(read_frame::<AgentMessage, _>(&mut reader).unwrap(), Some(Frame::Data(data)));
        prop_assert!(reader.is_empty());
    }

    #[test]
    fn random_bytes_never_panic_the_decoder(chunks in prop::collection::vec(prop::collection::vec(any::<u8>(), 0..64), 0..16)) {
        let mut host = Decoder::<HostMessage>::new();
        let mut agent = Decoder::<AgentMessage>::new();
        for chunk in &chunks {
            let _ = host.feed(chunk);
            let _ = agent.feed(chunk);
        }
        let all = chunks.concat();
        let _ = read_frame::<HostMessage, _>(&mut &all[..]);
    }

    #[test]
    fn corrupted_json_in_a_valid_frame_never_panics(message in host_message(), flips in prop::collection::vec((any::<prop::sample::Index>(), any::<u8>()), 1..4)) {
        let mut payload = serde_json::to_vec(&message).unwrap();
        for (index, byte) in flips {
            let at = index.index(payload.len());
            payload[at] = byte;
        }
        let mut bytes = (payload.len() as u32).to_le_bytes().to_vec();
        bytes.push(1);
        bytes.extend_from_slice(&payload);
        let _ = Decoder::<HostMessage>::new().feed(&bytes);
    }
}
