//! Guest CIDs for kernel vsock, which are global on a host: every VM on it
//! (nixdisk's and others') needs its own.
//!
//! [`candidates`] is the pure part: a sequence of distinct CIDs, above the
//! reserved ones, spread by a per-run seed so parallel runs start apart.
//! [`claim`] then takes the first one no other nixdisk run holds, by an
//! exclusive `flock` on a per-CID file in a shared directory (released by
//! the kernel when the run ends, however it ends). A CID held by something
//! else than nixdisk is only found out when QEMU says "Address already in
//! use"; the builder then claims the next candidate and boots again.

use std::fs::File;
use std::path::{Path, PathBuf};

/// The lowest CID a guest may have (0-2 are the hypervisor, local, host).
pub const MIN_GUEST_CID: u32 = 3;
/// The highest CID nixdisk picks (`u32::MAX` is VMADDR_CID_ANY; stay well
/// below it).
pub const MAX_GUEST_CID: u32 = 0x7fff_ffff;

/// `count` distinct CIDs in `MIN_GUEST_CID..=MAX_GUEST_CID`, the same for
/// the same `seed`: the first from the seed, the next ones stepping by a
/// large odd stride (coprime with the range's size, so no repeat before
/// the range is exhausted).
pub fn candidates(seed: u64, count: usize) -> Vec<u32> {
    let span = u64::from(MAX_GUEST_CID - MIN_GUEST_CID) + 1;
    // splitmix64's finaliser: nearby seeds (consecutive pids) land far apart.
    let mut mixed = seed.wrapping_add(0x9e37_79b9_7f4a_7c15);
    mixed = (mixed ^ (mixed >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
    mixed = (mixed ^ (mixed >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
    mixed ^= mixed >> 31;
    // A prime that does not divide the span: the steps visit every CID of
    // the range before one comes back.
    const STRIDE: u64 = 1_000_000_007;
    let start = mixed % span;
    (0..count as u64)
        .map(|i| (MIN_GUEST_CID as u64 + (start + i * STRIDE) % span) as u32)
        .collect()
}

/// A CID held for this run while the claim lives.
#[derive(Debug)]
pub struct CidClaim {
    cid: u32,
    _lock: File,
}

impl CidClaim {
    /// The claimed CID.
    pub fn cid(&self) -> u32 {
        self.cid
    }
}

/// Why no CID could be claimed.
#[derive(Debug, thiserror::Error)]
pub enum CidError {
    /// The lock directory could not be used.
    #[error("cannot use the vsock CID lock directory {}: {source}", dir.display())]
    LockDir {
        /// The directory.
        dir: PathBuf,
        /// What went wrong.
        source: std::io::Error,
    },
    /// Every candidate was held by another nixdisk run.
    #[error("all {tried} vsock CIDs tried are held by other nixdisk runs")]
    AllHeld {
        /// How many were tried.
        tried: usize,
    },
}

/// The shared lock directory: `$XDG_RUNTIME_DIR/nixdisk-vsock-cids`, else
/// the system temp directory's.
pub fn lock_dir() -> PathBuf {
    std::env::var_os("XDG_RUNTIME_DIR")
        .map(PathBuf::from)
        .unwrap_or_else(std::env::temp_dir)
        .join("nixdisk-vsock-cids")
}

/// Claims the first of `candidates` that no other run holds in `dir`.
pub fn claim(dir: &Path, candidates: &[u32]) -> Result<CidClaim, CidError> {
    let dir_error = |source| CidError::LockDir {
        dir: dir.to_owned(),
        source,
    };
    std::fs::create_dir_all(dir).map_err(dir_error)?;
    for &cid in candidates {
        let file = std::fs::OpenOptions::new()
            .create(true)
            .truncate(false)
            .write(true)
            .open(dir.join(format!("cid-{cid}.lock")))
            .map_err(dir_error)?;
        match rustix::fs::flock(&file, rustix::fs::FlockOperation::NonBlockingLockExclusive) {
            Ok(()) => return Ok(CidClaim { cid, _lock: file }),
            Err(rustix::io::Errno::WOULDBLOCK) => continue,
            Err(e) => return Err(dir_error(e.into())),
        }
    }
    Err(CidError::AllHeld {
        tried: candidates.len(),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn candidates_are_distinct_in_range_and_repeatable() {
        for seed in [0, 1, 2, u64::MAX, 12345] {
            let list = candidates(seed, 64);
            assert_eq!(list, candidates(seed, 64));
            let mut sorted = list.clone();
            sorted.sort();
            sorted.dedup();
            assert_eq!(sorted.len(), 64, "seed {seed}: {list:?}");
            assert!(
                list.iter()
                    .all(|c| (MIN_GUEST_CID..=MAX_GUEST_CID).contains(c))
            );
        }
        // Consecutive pids start far apart.
        assert_ne!(candidates(100, 1), candidates(101, 1));
    }

    #[test]
    fn a_held_cid_is_skipped_and_freed_on_drop() {
        let dir = tempfile::tempdir().unwrap();
        let list = [7, 8, 9];
        let first = claim(dir.path(), &list).unwrap();
        assert_eq!(first.cid(), 7);
        let second = claim(dir.path(), &list).unwrap();
        assert_eq!(second.cid(), 8);
        let third = claim(dir.path(), &list).unwrap();
        assert_eq!(third.cid(), 9);
        assert!(matches!(
            claim(dir.path(), &list),
            Err(CidError::AllHeld { tried: 3 })
        ));
        drop(second);
        assert_eq!(claim(dir.path(), &list).unwrap().cid(), 8);
    }

    #[test]
    fn parallel_claims_get_distinct_cids() {
        let dir = tempfile::tempdir().unwrap();
        let claims: Vec<CidClaim> = std::thread::scope(|scope| {
            let handles: Vec<_> = (0..8)
                .map(|_| scope.spawn(|| claim(dir.path(), &candidates(42, 16)).unwrap()))
                .collect();
            handles.into_iter().map(|h| h.join().unwrap()).collect()
        });
        let mut cids: Vec<u32> = claims.iter().map(CidClaim::cid).collect();
        cids.sort();
        cids.dedup();
        assert_eq!(cids.len(), 8);
    }
}
