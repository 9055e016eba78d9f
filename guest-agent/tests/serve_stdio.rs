//! The agent's request loop against real processes: the agent binary runs in
//! its `--serve-stdio` mode and this test speaks the protocol to it as the host does.

use std::io::{BufReader, BufWriter, Write};
use std::process::{Child, ChildStdin, ChildStdout, Command, Stdio};

use nixdisk_agent::protocol::{
    AgentMessage, End, ExitStatus, Frame, HostMessage, MAX_DATA_CHUNK, OutputStream,
    PROTOCOL_VERSION, Run, Transport, read_frame, sha256_hex, write_data, write_message,
};
use sha2::{Digest, Sha256};

/// The agent under test; killed on drop.
struct Agent {
    child: Child,
    to_agent: Option<BufWriter<ChildStdin>>,
    from_agent: BufReader<ChildStdout>,
}

impl Agent {
    fn start(extra: &[&str]) -> Agent {
        let mut child = Command::new(env!("CARGO_BIN_EXE_nixdisk-agent"))
            .arg("--serve-stdio")
            .args(extra)
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .spawn()
            .expect("start the agent");
        let to_agent = Some(BufWriter::new(child.stdin.take().unwrap()));
        let from_agent = BufReader::new(child.stdout.take().unwrap());
        let mut agent = Agent {
            child,
            to_agent,
            from_agent,
        };
        match agent.receive() {
            Frame::Control(AgentMessage::Hello(hello)) => {
                assert_eq!(hello.protocol_version, PROTOCOL_VERSION);
                assert_eq!(hello.transport, Transport::Stdio);
                assert!(!hello.kernel_release.is_empty());
            }
            other => panic!("expected hello, got {other:?}"),
        }
        match agent.receive() {
            Frame::Control(AgentMessage::Ready) => {}
            other => panic!("expected ready, got {other:?}"),
        }
        agent
    }

    fn send(&mut self, message: &HostMessage) {
        write_message(self.to_agent.as_mut().unwrap(), message).unwrap();
    }

    fn receive(&mut self) -> Frame<AgentMessage> {
        read_frame(&mut self.from_agent)
            .unwrap()
            .expect("the agent closed the connection")
    }

    fn receive_message(&mut self) -> AgentMessage {
        match self.receive() {
            Frame::Control(message) => message,
            Frame::Data(data) => panic!("unexpected data frame of {} bytes", data.len()),
        }
    }

    /// Runs a command to its end: (stdout, stderr, status), or the error report's message.
    fn run(&mut self, run: Run) -> Result<(Vec<u8>, Vec<u8>, ExitStatus), String> {
        let id = run.id;
        self.send(&HostMessage::Run(run));
        self.collect_run(id)
    }

    fn collect_run(&mut self, id: u64) -> Result<(Vec<u8>, Vec<u8>, ExitStatus), String> {
        let (mut stdout, mut stderr) = (Vec::new(), Vec::new());
        loop {
            match self.receive_message() {
                AgentMessage::Output(output) => {
                    assert_eq!(output.id, id);
                    match output.stream {
                        OutputStream::Stdout => stdout.extend(output.data),
                        OutputStream::Stderr => stderr.extend(output.data),
                    }
                }
                AgentMessage::Exited { id: done, status } => {
                    assert_eq!(done, id);
                    return Ok((stdout, stderr, status));
                }
                AgentMessage::Error(report) => {
                    assert_eq!(report.id, Some(id));
                    return Err(report.message);
                }
                other => panic!("unexpected {other:?}"),
            }
        }
    }

    /// Closes the host's side and returns the agent's exit status.
    fn close(mut self) -> std::process::ExitStatus {
        self.to_agent = None;
        self.child.wait().unwrap()
    }
}

impl Drop for Agent {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn run(id: u64, argv: &[&str]) -> Run {
    Run {
        id,
        argv: argv.iter().map(|arg| arg.to_string()).collect(),
        env: vec![],
        cwd: None,
        chroot: false,
        stdin: false,
    }
}

/// Deterministic, incompressible test bytes (xorshift, a word at a time: fast in debug builds).
fn pattern(len: usize) -> Vec<u8> {
    let mut state = 0x9e37_79b9_7f4a_7c15_u64;
    let mut bytes = Vec::with_capacity(len + 8);
    while bytes.len() < len {
        state ^= state << 13;
        state ^= state >> 7;
        state ^= state << 17;
        bytes.extend_from_slice(&state.to_le_bytes());
    }
    bytes.truncate(len);
    bytes
}

fn sha256(bytes: &[u8]) -> String {
    let mut hasher = Sha256::new();
    hasher.update(bytes);
    sha256_hex(hasher)
}

#[test]
fn run_streams_both_outputs_and_the_exit_code() {
    let mut agent = Agent::start(&[]);
    let (stdout, stderr, status) = agent
        .run(run(1, &["sh", "-c", "echo out; echo err >&2; exit 3"]))
        .unwrap();
    assert_eq!(stdout, b"out\n");
    assert_eq!(stderr, b"err\n");
    assert_eq!(status, ExitStatus::Code(3));
    assert!(agent.close().success());
}

#[test]
fn run_reports_a_signal() {
    let mut agent = Agent::start(&[]);
    let (_, _, status) = agent.run(run(1, &["sh", "-c", "kill -9 $$"])).unwrap();
    assert_eq!(status, ExitStatus::Signal(9));
}

#[test]
fn run_gets_exactly_the_requested_environment_and_directory() {
    let mut agent = Agent::start(&[]);
    let mut request = run(7, &["sh", "-c", "pwd; env | sort"]);
    request.env = vec![("GREETING".into(), "hi there".into())];
    request.cwd = Some("/tmp".into());
    let (stdout, _, status) = agent.run(request).unwrap();
    assert!(status.success());
    let text = String::from_utf8(stdout).unwrap();
    let mut lines = text.lines();
    assert_eq!(lines.next(), Some("/tmp"));
    let env: Vec<&str> = lines
        .filter(|line| {
            !line.starts_with("PWD=") && !line.starts_with("SHLVL=") && !line.starts_with("_=")
        })
        .collect();
    assert_eq!(
        env,
        [
            "GREETING=hi there",
            "PATH=/run/current-system/sw/bin:/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin"
        ]
    );
}

/// The agent's direct children that are zombies.
fn zombie_children(pid: u32) -> Vec<String> {
    let children = std::fs::read_to_string(format!("/proc/{pid}/task/{pid}/children")).unwrap();
    children
        .split_whitespace()
        .filter(|child| {
            std::fs::read_to_string(format!("/proc/{child}/stat")).is_ok_and(|stat| {
                stat.rsplit_once(')')
                    .is_some_and(|(_, rest)| rest.trim_start().starts_with('Z'))
            })
        })
        .map(str::to_owned)
        .collect()
}

#[test]
fn orphans_of_commands_are_reaped() {
    let mut agent = Agent::start(&[]);
    // The background sleep outlives its shell and becomes the agent's orphan.
    let (_, _, status) = agent
        .run(run(
            1,
            &["sh", "-c", "sleep 0.3 </dev/null >/dev/null 2>&1 & echo $!"],
        ))
        .unwrap();
    assert!(status.success());
    let pid = agent.child.id();
    let children = std::fs::read_to_string(format!("/proc/{pid}/task/{pid}/children")).unwrap();
    assert!(
        !children.trim().is_empty(),
        "the orphan should be the agent's child"
    );
    std::thread::sleep(std::time::Duration::from_millis(1500));
    assert_eq!(zombie_children(pid), Vec::<String>::new());
    let children = std::fs::read_to_string(format!("/proc/{pid}/task/{pid}/children")).unwrap();
    assert_eq!(children.trim(), "");
    // And commands still get their own status afterwards.
    let (_, _, status) = agent.run(run(2, &["sh", "-c", "exit 5"])).unwrap();
    assert_eq!(status, ExitStatus::Code(5));
}

#[test]
fn a_missing_program_is_an_error_and_the_agent_carries_on() {
    let mut agent = Agent::start(&[]);
    let error = agent.run(run(1, &["/nonexistent/program"])).unwrap_err();
    assert!(error.contains("/nonexistent/program"), "{error}");
    assert!(error.contains("No such file"), "{error}");
    let error = agent.run(run(2, &[])).unwrap_err();
    assert!(error.contains("empty"), "{error}");
    let (stdout, _, _) = agent.run(run(3, &["echo", "still here"])).unwrap();
    assert_eq!(stdout, b"still here\n");
}

#[test]
fn chroot_commands_run_in_the_chroot_directory() {
    let root = tempfile::tempdir().unwrap();
    let mut agent = Agent::start(&["--chroot-root", "/"]);
    let mut request = run(1, &["pwd"]);
    request.chroot = true;
    request.cwd = Some(root.path().to_str().unwrap().to_owned());
    let result = agent.run(request);
    if rustix_is_root() {
        let (stdout, _, status) = result.unwrap();
        assert!(status.success());
        assert_eq!(stdout, format!("{}\n", root.path().display()).as_bytes());
    } else {
        assert!(result.unwrap_err().contains("Operation not permitted"));
    }
}

#[test]
fn chroot_without_a_share_is_refused() {
    let mut agent = Agent::start(&[]);
    let mut request = run(1, &["true"]);
    request.chroot = true;
    let error = agent.run(request).unwrap_err();
    assert!(error.contains("no host share"), "{error}");
}

fn rustix_is_root() -> bool {
    // SAFETY-free way to learn the euid: read it from procfs.
    std::fs::read_to_string("/proc/self/status")
        .unwrap()
        .lines()
        .find(|line| line.starts_with("Uid:"))
        .and_then(|line| line.split_whitespace().nth(2).map(|euid| euid == "0"))
        .unwrap()
}

/// Sends `data` as a bulk stream for request `id` on a thread (so the agent's
/// replies can be read meanwhile), returning the host's side back.
fn send_stream(
    to_agent: BufWriter<ChildStdin>,
    id: u64,
    data: Vec<u8>,
    damage: bool,
) -> std::thread::JoinHandle<BufWriter<ChildStdin>> {
    let sha256 = sha256(&data);
    send_stream_hashed(to_agent, id, data, sha256, damage)
}

/// [`send_stream`] with the checksum already known.
fn send_stream_hashed(
    mut to_agent: BufWriter<ChildStdin>,
    id: u64,
    data: Vec<u8>,
    mut sha256: String,
    damage: bool,
) -> std::thread::JoinHandle<BufWriter<ChildStdin>> {
    std::thread::spawn(move || {
        for chunk in data.chunks(MAX_DATA_CHUNK) {
            write_data(&mut to_agent, chunk).unwrap();
        }
        if damage {
            sha256 = sha256.replace(&sha256[..1], if &sha256[..1] == "0" { "1" } else { "0" });
        }
        let end = End {
            id,
            bytes: data.len() as u64,
            sha256,
        };
        write_message(&mut to_agent, &HostMessage::End(end)).unwrap();
        to_agent
    })
}

#[test]
fn run_with_stdin_feeds_the_stream_to_the_command() {
    let mut agent = Agent::start(&[]);
    let data = pattern(8 << 20);
    let mut request = run(4, &["cat"]);
    request.stdin = true;
    agent.send(&HostMessage::Run(request));
    let sender = send_stream(agent.to_agent.take().unwrap(), 4, data.clone(), false);
    let (stdout, _, status) = agent.collect_run(4).unwrap();
    agent.to_agent = Some(sender.join().unwrap());
    assert!(status.success());
    assert_eq!(stdout.len(), data.len());
    assert!(stdout == data);
}

#[test]
fn a_command_that_ignores_its_stdin_still_completes() {
    let mut agent = Agent::start(&[]);
    let mut request = run(5, &["true"]);
    request.stdin = true;
    agent.send(&HostMessage::Run(request));
    let sender = send_stream(agent.to_agent.take().unwrap(), 5, pattern(4 << 20), false);
    let (_, _, status) = agent.collect_run(5).unwrap();
    agent.to_agent = Some(sender.join().unwrap());
    assert!(status.success());
}

/// The bulk check: 256 MiB into the guest and back, checksums equal.
#[test]
fn write_then_read_256_mib_with_matching_checksums() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("big");
    let path = path.to_str().unwrap().to_owned();
    let data = pattern(256 << 20);
    let expected = sha256(&data);
    let mut agent = Agent::start(&[]);

    agent.send(&HostMessage::WriteFile {
        id: 1,
        path: path.clone(),
        mode: 0o640,
    });
    let sender = send_stream_hashed(
        agent.to_agent.take().unwrap(),
        1,
        data,
        expected.clone(),
        false,
    );
    let reply = agent.receive_message();
    agent.to_agent = Some(sender.join().unwrap());
    assert_eq!(
        reply,
        AgentMessage::Written {
            id: 1,
            bytes: 256 << 20,
            sha256: expected.clone()
        }
    );
    let metadata = std::fs::metadata(&path).unwrap();
    assert_eq!(
        std::os::unix::fs::PermissionsExt::mode(&metadata.permissions()) & 0o7777,
        0o640
    );

    agent.send(&HostMessage::ReadFile { id: 2, path });
    let mut hasher = Sha256::new();
    let mut bytes = 0u64;
    let end = loop {
        match agent.receive() {
            Frame::Data(data) => {
                assert!(data.len() <= MAX_DATA_CHUNK);
                hasher.update(&data);
                bytes += data.len() as u64;
            }
            Frame::Control(AgentMessage::End(end)) => break end,
            Frame::Control(other) => panic!("unexpected {other:?}"),
        }
    };
    assert_eq!(bytes, 256 << 20);
    assert_eq!(
        end,
        End {
            id: 2,
            bytes,
            sha256: expected.clone()
        }
    );
    assert_eq!(sha256_hex(hasher), expected);
}

#[test]
fn a_damaged_write_is_refused_and_removed() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("file");
    let mut agent = Agent::start(&[]);
    agent.send(&HostMessage::WriteFile {
        id: 9,
        path: path.to_str().unwrap().to_owned(),
        mode: 0o644,
    });
    let sender = send_stream(agent.to_agent.take().unwrap(), 9, pattern(1000), true);
    let reply = agent.receive_message();
    agent.to_agent = Some(sender.join().unwrap());
    match reply {
        AgentMessage::Error(report) => {
            assert_eq!(report.id, Some(9));
            assert!(
                report.message.contains("arrived damaged"),
                "{}",
                report.message
            );
        }
        other => panic!("expected an error, got {other:?}"),
    }
    assert!(!path.exists());
}

#[test]
fn writing_where_it_cannot_still_consumes_the_stream() {
    let mut agent = Agent::start(&[]);
    agent.send(&HostMessage::WriteFile {
        id: 3,
        path: "/nonexistent-dir/file".into(),
        mode: 0o644,
    });
    let sender = send_stream(agent.to_agent.take().unwrap(), 3, pattern(600_000), false);
    let reply = agent.receive_message();
    agent.to_agent = Some(sender.join().unwrap());
    assert!(
        matches!(reply, AgentMessage::Error(ref report) if report.message.contains("/nonexistent-dir/file")),
        "{reply:?}"
    );
    let (stdout, _, _) = agent.run(run(4, &["echo", "in step"])).unwrap();
    assert_eq!(stdout, b"in step\n");
}

#[test]
fn reading_a_missing_file_is_an_error() {
    let mut agent = Agent::start(&[]);
    agent.send(&HostMessage::ReadFile {
        id: 1,
        path: "/nonexistent/file".into(),
    });
    match agent.receive_message() {
        AgentMessage::Error(report) => {
            assert_eq!(report.id, Some(1));
            assert!(
                report.message.contains("No such file"),
                "{}",
                report.message
            );
        }
        other => panic!("expected an error, got {other:?}"),
    }
}

#[test]
fn power_off_is_acknowledged_and_ends_the_session() {
    let mut agent = Agent::start(&[]);
    agent.send(&HostMessage::PowerOff { id: 42 });
    assert_eq!(agent.receive_message(), AgentMessage::Done { id: 42 });
    assert!(agent.close().success());
}

#[test]
fn garbage_closes_the_connection_with_a_failure_not_a_panic() {
    let mut agent = Agent::start(&[]);
    let to_agent = agent.to_agent.as_mut().unwrap();
    to_agent.write_all(&[0xff, 0xff, 0xff, 0xff, 1]).unwrap();
    to_agent.flush().unwrap();
    assert!(
        read_frame::<AgentMessage, _>(&mut agent.from_agent)
            .unwrap()
            .is_none()
    );
    let status = agent.close();
    assert_eq!(status.code(), Some(1));
}

#[test]
fn a_stray_data_frame_is_a_protocol_violation() {
    let mut agent = Agent::start(&[]);
    write_data(agent.to_agent.as_mut().unwrap(), b"stray").unwrap();
    assert!(
        read_frame::<AgentMessage, _>(&mut agent.from_agent)
            .unwrap()
            .is_none()
    );
    assert_eq!(agent.close().code(), Some(1));
}
