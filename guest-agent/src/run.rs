//! `Run`: start a command (directly or in the chroot of the host share),
//! stream its output, feed it the host's stdin stream, report how it ended.

use std::io::{Read, Write};
use std::process::{ChildStdin, Command, Stdio};
use std::thread::JoinHandle;

use nixdisk_agent::protocol::{AgentMessage, ExitStatus, Output, OutputStream, ProtocolError, Run};
use rustix::process::WaitStatus;
use sha2::{Digest, Sha256};

use crate::serve::{Receiver, Sender, ServeError, receive_stream};
use crate::system;

/// `PATH` for commands whose request sets none: NixOS's system profile first,
/// then the FHS directories of other distributions.
pub const DEFAULT_PATH: &str =
    "/run/current-system/sw/bin:/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin";

/// How much of a command's stderr is kept for error reports.
const STDERR_TAIL_BYTES: usize = 4096;

/// What commands run against.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RunConfig {
    /// The root of the chroot for `chroot: true` requests; `None` when no host share is mounted.
    pub chroot_root: Option<String>,
}

/// The command a request describes, not yet started; an error text when it cannot be built.
pub fn plan_command(request: &Run, config: &RunConfig) -> Result<Command, String> {
    let Some((program, args)) = request.argv.split_first() else {
        return Err("the command is empty (argv has no program)".to_owned());
    };
    let mut command = Command::new(program);
    command.args(args).env_clear();
    command.envs(request.env.iter().map(|(key, value)| (key, value)));
    if !request.env.iter().any(|(key, _)| key == "PATH") {
        command.env("PATH", DEFAULT_PATH);
    }
    command
        .stdin(if request.stdin {
            Stdio::piped()
        } else {
            Stdio::null()
        })
        .stdout(Stdio::piped())
        .stderr(Stdio::piped());
    let cwd = request.cwd.as_deref().unwrap_or("/");
    if request.chroot {
        let Some(root) = &config.chroot_root else {
            return Err(
                "cannot run in the chroot: no host share is mounted (the builder VM was started \
                 without nixdisk.share=)"
                    .to_owned(),
            );
        };
        system::chroot_command(&mut command, root, cwd).map_err(|error| error.to_string())?;
    } else {
        command.current_dir(cwd);
    }
    Ok(command)
}

/// Handles one `Run` request, through its final reply.
pub fn run(
    receiver: &mut Receiver,
    sender: &Sender,
    request: Run,
    config: &RunConfig,
) -> Result<(), ServeError> {
    let id = request.id;
    let what = format!("run {:?}", request.argv);
    let mut command = match plan_command(&request, config) {
        Ok(command) => command,
        Err(message) => return refuse(receiver, sender, &request, message, what),
    };
    let mut child = match system::spawn(&mut command) {
        Ok(child) => child,
        Err(error) => {
            let program = request.argv.first().map(String::as_str).unwrap_or("");
            let message = format!("cannot start {program:?}: {error}");
            return refuse(receiver, sender, &request, message, what);
        }
    };
    tracing::debug!(id, pid = child.id(), argv = ?request.argv, "started");
    let stdout = pump(
        child.stdout.take(),
        OutputStream::Stdout,
        sender.clone(),
        id,
    );
    let stderr = pump(
        child.stderr.take(),
        OutputStream::Stderr,
        sender.clone(),
        id,
    );
    let stdin = match request.stdin {
        true => feed_stdin(receiver, id, child.stdin.take()),
        false => Ok(None),
    };
    if stdin.is_err() {
        // The connection broke: the command's results can no longer be sent.
        let _ = child.kill();
    }
    let stdout = join(stdout);
    let stderr = join(stderr);
    let status = exit_status(system::wait(&child));
    let stdin_mismatch = stdin?;
    stdout?;
    let stderr_tail = stderr?;
    tracing::debug!(id, %status, "exited");
    if let Some(mismatch) = stdin_mismatch {
        let tail = String::from_utf8_lossy(&stderr_tail).into_owned();
        sender.send_error(Some(id), mismatch, vec![what], Some(tail))?;
        return Ok(());
    }
    sender.send(&AgentMessage::Exited { id, status })?;
    Ok(())
}

/// Replies with an error for a command that did not start, after taking in
/// the stdin stream the host sends regardless.
fn refuse(
    receiver: &mut Receiver,
    sender: &Sender,
    request: &Run,
    message: String,
    what: String,
) -> Result<(), ServeError> {
    if request.stdin {
        receive_stream(receiver, request.id, |_| {})?;
    }
    sender.send_error(Some(request.id), message, vec![what], None)?;
    Ok(())
}

fn exit_status(status: WaitStatus) -> ExitStatus {
    match (status.exit_status(), status.terminating_signal()) {
        (Some(code), _) => ExitStatus::Code(code),
        (None, Some(signal)) => ExitStatus::Signal(signal),
        // Only exited or killed children are reaped (no WUNTRACED).
        (None, None) => ExitStatus::Code(-1),
    }
}

/// Copies the host's stdin stream into the command. Returns a description of
/// a checksum or length mismatch, if any.
fn feed_stdin(
    receiver: &mut Receiver,
    id: u64,
    stdin: Option<ChildStdin>,
) -> Result<Option<String>, ServeError> {
    let mut stdin = stdin;
    let mut hasher = Sha256::new();
    let mut bytes = 0u64;
    let end = receive_stream(receiver, id, |data| {
        hasher.update(data);
        bytes += data.len() as u64;
        // A command that stops reading its stdin is not an error: drop the rest.
        if let Some(pipe) = &mut stdin
            && pipe.write_all(data).is_err()
        {
            stdin = None;
        }
    })?;
    drop(stdin);
    let sha256 = nixdisk_agent::protocol::sha256_hex(hasher);
    if end.bytes != bytes || end.sha256 != sha256 {
        return Ok(Some(format!(
            "stdin stream damaged: the host sent {} bytes with sha256 {}, the agent received {bytes} \
             bytes with sha256 {sha256}",
            end.bytes, end.sha256
        )));
    }
    Ok(None)
}

type Pump = Option<JoinHandle<Result<Vec<u8>, ProtocolError>>>;

/// Streams one output pipe to the host on its own thread. The thread returns
/// the last [`STDERR_TAIL_BYTES`] of the stream.
fn pump(
    pipe: Option<impl Read + Send + 'static>,
    stream: OutputStream,
    sender: Sender,
    id: u64,
) -> Pump {
    let mut pipe = pipe?;
    Some(std::thread::spawn(move || {
        let mut buffer = vec![0; 64 * 1024];
        let mut tail = Vec::new();
        let mut failure = None;
        loop {
            let n = match pipe.read(&mut buffer) {
                Ok(0) => break,
                Ok(n) => n,
                Err(error) if error.kind() == std::io::ErrorKind::Interrupted => continue,
                Err(_) => break,
            };
            let data = &buffer[..n];
            tail.extend_from_slice(data);
            if tail.len() > 2 * STDERR_TAIL_BYTES {
                tail.drain(..tail.len() - STDERR_TAIL_BYTES);
            }
            // After a failed send keep reading, so the command never blocks on a full pipe.
            if failure.is_none() {
                let output = Output {
                    id,
                    stream,
                    data: data.to_vec(),
                };
                failure = sender.send(&AgentMessage::Output(output)).err();
            }
        }
        if tail.len() > STDERR_TAIL_BYTES {
            tail.drain(..tail.len() - STDERR_TAIL_BYTES);
        }
        match failure {
            Some(error) => Err(error),
            None => Ok(tail),
        }
    }))
}

fn join(pump: Pump) -> Result<Vec<u8>, ProtocolError> {
    match pump {
        None => Ok(Vec::new()),
        Some(handle) => handle.join().unwrap_or_else(|_| {
            Err(ProtocolError::Io(std::io::Error::other(
                "an output thread panicked",
            )))
        }),
    }
}
