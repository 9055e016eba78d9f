//! `WriteFile` and `ReadFile`: whole files streamed as data frames, checked by SHA-256.

use std::fs::{self, File, OpenOptions, Permissions};
use std::io::{self, Read, Write};
use std::os::unix::fs::{OpenOptionsExt, PermissionsExt};

use nixdisk_agent::protocol::{AgentMessage, End, MAX_DATA_CHUNK, sha256_hex};
use sha2::{Digest, Sha256};

use crate::serve::{Receiver, Sender, ServeError, receive_stream};

/// Handles `WriteFile`: takes in the host's stream (always, even when the file
/// cannot be written, so the connection stays in step), then replies.
pub fn write_file(
    receiver: &mut Receiver,
    sender: &Sender,
    id: u64,
    path: &str,
    mode: u32,
) -> Result<(), ServeError> {
    let context = vec![format!("write {path}")];
    let mut file = open_for_writing(path, mode);
    let mut hasher = Sha256::new();
    let mut bytes = 0u64;
    let end = receive_stream(receiver, id, |data| {
        hasher.update(data);
        bytes += data.len() as u64;
        if let Ok(writer) = &mut file
            && let Err(error) = writer.write_all(data)
        {
            file = Err(error);
        }
    })?;
    let sha256 = sha256_hex(hasher);
    let result = file.and_then(|file| file.sync_data());
    if let Err(error) = result {
        let _ = fs::remove_file(path);
        sender.send_error(
            Some(id),
            format!("cannot write {path}: {error}"),
            context,
            None,
        )?;
        return Ok(());
    }
    if end.bytes != bytes || end.sha256 != sha256 {
        let _ = fs::remove_file(path);
        let message = format!(
            "{path} arrived damaged: the host sent {} bytes with sha256 {}, the agent received \
             {bytes} bytes with sha256 {sha256}; the file was removed",
            end.bytes, end.sha256
        );
        sender.send_error(Some(id), message, context, None)?;
        return Ok(());
    }
    tracing::debug!(path, bytes, "written");
    sender.send(&AgentMessage::Written { id, bytes, sha256 })?;
    Ok(())
}

fn open_for_writing(path: &str, mode: u32) -> io::Result<File> {
    let file = OpenOptions::new()
        .write(true)
        .create(true)
        .truncate(true)
        .mode(mode)
        .open(path)?;
    // Exact mode, whatever the umask or an existing file had.
    file.set_permissions(Permissions::from_mode(mode))?;
    Ok(file)
}

/// Handles `ReadFile`: data frames, then `End` with the length and checksum.
pub fn read_file(sender: &Sender, id: u64, path: &str) -> Result<(), ServeError> {
    let context = vec![format!("read {path}")];
    let mut file = match File::open(path) {
        Ok(file) => file,
        Err(error) => {
            sender.send_error(
                Some(id),
                format!("cannot open {path}: {error}"),
                context,
                None,
            )?;
            return Ok(());
        }
    };
    let mut buffer = vec![0; MAX_DATA_CHUNK];
    let mut hasher = Sha256::new();
    let mut bytes = 0u64;
    loop {
        let n = match file.read(&mut buffer) {
            Ok(0) => break,
            Ok(n) => n,
            Err(error) if error.kind() == io::ErrorKind::Interrupted => continue,
            Err(error) => {
                let message = format!("reading {path} failed after {bytes} bytes: {error}");
                sender.send_error(Some(id), message, context, None)?;
                return Ok(());
            }
        };
        hasher.update(&buffer[..n]);
        bytes += n as u64;
        sender.send_data(&buffer[..n])?;
    }
    let sha256 = sha256_hex(hasher);
    tracing::debug!(path, bytes, "read");
    sender.send(&AgentMessage::End(End { id, bytes, sha256 }))?;
    Ok(())
}
