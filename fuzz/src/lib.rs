//! What the fuzz targets share: a sparse in-memory disk, and the input
//! format of the partition-table target (so seeds can be made from real
//! tables).

use std::collections::HashMap;
use std::io::{Error, ErrorKind, Read, Seek, SeekFrom, Write};

/// Bytes per sector of the sparse disk.
const SECTOR: u64 = 512;

/// A disk of any size held in memory: only written sectors take room, the
/// rest reads as zeros. Writes past the end fail, as on a block device.
#[derive(Debug, Default)]
pub struct SparseDisk {
    size: u64,
    pos: u64,
    sectors: HashMap<u64, [u8; SECTOR as usize]>,
}

impl SparseDisk {
    /// An all-zero disk of `size` bytes.
    pub fn new(size: u64) -> SparseDisk {
        SparseDisk {
            size,
            ..SparseDisk::default()
        }
    }

    /// The disk's size in bytes.
    pub fn size(&self) -> u64 {
        self.size
    }

    /// The bytes from `offset`, `len` of them (zeros where never written).
    pub fn bytes(&mut self, offset: u64, len: usize) -> Vec<u8> {
        let mut out = vec![0; len];
        self.pos = offset;
        let mut done = 0;
        while done < len {
            match self.read(&mut out[done..]) {
                Ok(0) | Err(_) => break,
                Ok(n) => done += n,
            }
        }
        out.truncate(done);
        out
    }
}

impl Read for SparseDisk {
    fn read(&mut self, buf: &mut [u8]) -> std::io::Result<usize> {
        if self.pos >= self.size || buf.is_empty() {
            return Ok(0);
        }
        let sector = self.pos / SECTOR;
        let within = (self.pos % SECTOR) as usize;
        let n = buf
            .len()
            .min(SECTOR as usize - within)
            .min((self.size - self.pos) as usize);
        match self.sectors.get(&sector) {
            Some(data) => buf[..n].copy_from_slice(&data[within..within + n]),
            None => buf[..n].fill(0),
        }
        self.pos += n as u64;
        Ok(n)
    }
}

impl Write for SparseDisk {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        if buf.is_empty() {
            return Ok(0);
        }
        if self.pos >= self.size {
            return Err(Error::new(
                ErrorKind::StorageFull,
                "write past the end of the disk",
            ));
        }
        let sector = self.pos / SECTOR;
        let within = (self.pos % SECTOR) as usize;
        let n = buf
            .len()
            .min(SECTOR as usize - within)
            .min((self.size - self.pos) as usize);
        let data = self.sectors.entry(sector).or_insert([0; SECTOR as usize]);
        data[within..within + n].copy_from_slice(&buf[..n]);
        self.pos += n as u64;
        Ok(n)
    }

    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

impl Seek for SparseDisk {
    fn seek(&mut self, from: SeekFrom) -> std::io::Result<u64> {
        let target = match from {
            SeekFrom::Start(offset) => Some(offset),
            SeekFrom::End(delta) => self.size.checked_add_signed(delta),
            SeekFrom::Current(delta) => self.pos.checked_add_signed(delta),
        };
        self.pos = target.ok_or_else(|| Error::new(ErrorKind::InvalidInput, "seek before 0"))?;
        Ok(self.pos)
    }
}

/// How many bytes at each end of the disk a partition-table input carries:
/// the MBR, the primary GPT header and a full entry array (34 sectors).
pub const TABLE_AREA: usize = 34 * SECTOR as usize;

/// The partition-table target's input: the disk size in sectors (u32 LE),
/// a flags byte (bit 0: fix the GPT checksums after placing the bytes, so
/// mutations reach past the CRC checks), then up to [`TABLE_AREA`] bytes
/// for the start of the disk, then up to as many for its end.
pub struct TableInput<'a> {
    /// Size of the disk in bytes.
    pub disk_size: u64,
    /// Recompute the GPT header and entry-array CRCs.
    pub fix_crcs: bool,
    /// Bytes placed at offset 0.
    pub head: &'a [u8],
    /// Bytes placed so that they end at the end of the disk.
    pub tail: &'a [u8],
}

impl<'a> TableInput<'a> {
    /// Splits fuzz bytes into an input; `None` when too short.
    pub fn parse(bytes: &'a [u8]) -> Option<TableInput<'a>> {
        let (size, rest) = bytes.split_first_chunk::<4>()?;
        let (&flags, rest) = rest.split_first()?;
        let (head, tail) = rest.split_at(rest.len().min(TABLE_AREA));
        Some(TableInput {
            disk_size: u64::from(u32::from_le_bytes(*size)) * SECTOR,
            fix_crcs: flags & 1 != 0,
            head,
            tail: &tail[..tail.len().min(TABLE_AREA)],
        })
    }

    /// The fuzz bytes of a disk's table areas (for seeds).
    pub fn encode(disk: &mut SparseDisk, fix_crcs: bool) -> Vec<u8> {
        let sectors = u32::try_from(disk.size() / SECTOR).expect("a seed disk under 2 TiB");
        let mut out = sectors.to_le_bytes().to_vec();
        out.push(u8::from(fix_crcs));
        let area = (TABLE_AREA as u64).min(disk.size());
        out.extend(disk.bytes(0, area as usize));
        out.extend(disk.bytes(disk.size() - area, area as usize));
        out
    }

    /// The disk this input describes.
    pub fn disk(&self) -> SparseDisk {
        let mut disk = SparseDisk::new(self.disk_size);
        let head = &self.head[..self.head.len().min(self.disk_size as usize)];
        let _ = disk.write_all(head);
        let tail = &self.tail[..self.tail.len().min(self.disk_size as usize)];
        if disk.seek(SeekFrom::End(-(tail.len() as i64))).is_ok() {
            let _ = disk.write_all(tail);
        }
        if self.fix_crcs {
            fix_gpt_crcs(&mut disk, SECTOR);
            if let Some(last) = (self.disk_size / SECTOR).checked_sub(1) {
                fix_gpt_crcs(&mut disk, last * SECTOR);
            }
        }
        disk
    }
}

/// Recomputes the CRCs of the GPT header at `offset` (entry array first,
/// then the header), when the header's fields make that possible.
fn fix_gpt_crcs(disk: &mut SparseDisk, offset: u64) {
    let mut header = disk.bytes(offset, SECTOR as usize);
    if header.len() < 92 || &header[..8] != b"EFI PART" {
        return;
    }
    let u32_at = |h: &[u8], at: usize| u32::from_le_bytes(h[at..at + 4].try_into().unwrap());
    let entries_lba = u64::from_le_bytes(header[72..80].try_into().unwrap());
    let count = u64::from(u32_at(&header, 80));
    let entry_size = u64::from(u32_at(&header, 84));
    let array_len = count.saturating_mul(entry_size);
    if array_len <= 1 << 20 && entries_lba.checked_mul(SECTOR).is_some() {
        let array = disk.bytes(entries_lba * SECTOR, array_len as usize);
        header[88..92].copy_from_slice(&crc32(&array).to_le_bytes());
    }
    let header_size = (u32_at(&header, 12) as usize).clamp(92, SECTOR as usize);
    header[16..20].fill(0);
    let crc = crc32(&header[..header_size]);
    header[16..20].copy_from_slice(&crc.to_le_bytes());
    if disk.seek(SeekFrom::Start(offset)).is_ok() {
        let _ = disk.write_all(&header);
    }
}

/// CRC-32 (IEEE 802.3), as GPT uses it.
fn crc32(bytes: &[u8]) -> u32 {
    let mut crc = !0u32;
    for &byte in bytes {
        crc ^= u32::from(byte);
        for _ in 0..8 {
            crc = (crc >> 1) ^ (0xEDB8_8320 & (crc & 1).wrapping_neg());
        }
    }
    !crc
}

#[cfg(test)]
mod tests;
