//! A minimal, deterministic cpio "newc" (SVR4, no CRC) writer, the format
//! the kernel unpacks into its rootfs.
//!
//! Each record is a 110-byte ASCII header (`070701` and 13 eight-digit hex
//! fields), the NUL-terminated name padded to 4 bytes, then the data padded
//! to 4 bytes. Names are written without the leading `/`, as
//! `gen_init_cpio` does. mtime is 0, uid/gid 0, inode numbers count from 1 in
//! entry order, and the archive ends with the `TRAILER!!!` record.

use std::io::{self, Read, Write};

use super::{Entry, EntryKind, FileData, InitramfsError};

const S_IFDIR: u32 = 0o040000;
const S_IFREG: u32 = 0o100000;
const S_IFLNK: u32 = 0o120000;
const S_IFCHR: u32 = 0o020000;
const S_IFBLK: u32 = 0o060000;

/// Name of the record that ends every archive.
pub const TRAILER: &str = "TRAILER!!!";

/// The header fields of one record, in newc order (magic aside).
#[derive(Debug, Default)]
struct Header {
    ino: u32,
    mode: u32,
    nlink: u32,
    filesize: u32,
    rdevmajor: u32,
    rdevminor: u32,
    namesize: u32,
}

impl Header {
    fn write<W: Write>(&self, out: &mut W, name: &str) -> io::Result<()> {
        let (uid, gid, mtime, devmajor, devminor, check) = (0, 0, 0, 0, 0, 0);
        let fields = [
            self.ino,
            self.mode,
            uid,
            gid,
            self.nlink,
            mtime,
            self.filesize,
            devmajor,
            devminor,
            self.rdevmajor,
            self.rdevminor,
            self.namesize,
            check,
        ];
        let mut header = String::with_capacity(110);
        header.push_str("070701");
        for f in fields {
            header.push_str(&format!("{f:08X}"));
        }
        out.write_all(header.as_bytes())?;
        out.write_all(name.as_bytes())?;
        out.write_all(&[0])?;
        pad(out, 110 + name.len() as u64 + 1)
    }
}

/// Writes zero bytes so that `written` becomes a multiple of 4.
fn pad<W: Write>(out: &mut W, written: u64) -> io::Result<()> {
    let n = (4 - written % 4) % 4;
    out.write_all(&[0u8; 3][..n as usize])
}

/// Writes `entries` (absolute paths, already in archive order) and the
/// trailer to `out`.
pub fn write<'a, W: Write>(
    entries: impl Iterator<Item = (&'a str, &'a Entry)>,
    mut out: W,
) -> Result<(), InitramfsError> {
    for (index, (path, entry)) in entries.enumerate() {
        // newc inode fields are 32 bits; an initramfs never nears 4 G entries.
        let ino = index as u32 + 1;
        let name = path.trim_start_matches('/');
        let too_large = |size: u64| InitramfsError::TooLarge {
            path: path.to_owned(),
            size,
        };
        let size = match &entry.kind {
            EntryKind::File(data) => data.len(),
            EntryKind::Symlink(target) => target.len() as u64,
            _ => 0,
        };
        let (type_bits, nlink, rdev) = match entry.kind {
            EntryKind::Dir => (S_IFDIR, 2, (0, 0)),
            EntryKind::File(_) => (S_IFREG, 1, (0, 0)),
            EntryKind::Symlink(_) => (S_IFLNK, 1, (0, 0)),
            EntryKind::CharDevice { major, minor } => (S_IFCHR, 1, (major, minor)),
            EntryKind::BlockDevice { major, minor } => (S_IFBLK, 1, (major, minor)),
        };
        let header = Header {
            ino,
            mode: type_bits | entry.mode,
            nlink,
            filesize: u32::try_from(size).map_err(|_| too_large(size))?,
            rdevmajor: rdev.0,
            rdevminor: rdev.1,
            namesize: name.len() as u32 + 1,
        };
        header
            .write(&mut out, name)
            .map_err(InitramfsError::Write)?;
        match &entry.kind {
            EntryKind::File(FileData::Bytes(bytes)) => {
                out.write_all(bytes).map_err(InitramfsError::Write)?
            }
            EntryKind::File(FileData::Host { path: host, size }) => {
                copy_host(host, *size, &mut out)?
            }
            EntryKind::Symlink(target) => out
                .write_all(target.as_bytes())
                .map_err(InitramfsError::Write)?,
            _ => {}
        }
        pad(&mut out, size).map_err(InitramfsError::Write)?;
    }
    let trailer = Header {
        nlink: 1,
        namesize: TRAILER.len() as u32 + 1,
        ..Header::default()
    };
    trailer
        .write(&mut out, TRAILER)
        .map_err(InitramfsError::Write)?;
    out.flush().map_err(InitramfsError::Write)
}

/// Copies exactly `size` bytes of the host file `path` to `out`.
fn copy_host<W: Write>(
    path: &std::path::Path,
    size: u64,
    out: &mut W,
) -> Result<(), InitramfsError> {
    let read_err = |source| InitramfsError::ReadHost {
        path: path.to_path_buf(),
        source,
    };
    let file = std::fs::File::open(path).map_err(read_err)?;
    // Read one byte past the size to notice a file that grew.
    let mut limited = file.take(size + 1);
    let mut buf = vec![0u8; 64 * 1024];
    let mut copied = 0u64;
    loop {
        let n = limited.read(&mut buf).map_err(read_err)?;
        if n == 0 {
            break;
        }
        copied += n as u64;
        if copied > size {
            break;
        }
        out.write_all(&buf[..n]).map_err(InitramfsError::Write)?;
    }
    if copied != size {
        return Err(InitramfsError::HostFileChanged {
            path: path.to_path_buf(),
            expected: size,
        });
    }
    Ok(())
}
