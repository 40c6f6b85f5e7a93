//! Batched map operations (`BPF_MAP_LOOKUP_BATCH`, `BPF_MAP_DELETE_BATCH`) through
//! the raw `bpf(2)` syscall.
//!
//! aya 0.16 has no batch API, and walking a map key by key costs two syscalls per
//! entry: at a million entries that is seconds. One batch call moves thousands of
//! entries. (Inserts stay one key per call: `BPF_MAP_UPDATE_BATCH` accepts no
//! `BPF_NOEXIST`, which an insert that can be undone needs to tell new keys from
//! replaced ones.) Hash maps (and LRU hashes) have had batch ops since Linux 5.6; other map
//! types get the kernel's generic batch ops; where the kernel has none for a map the
//! call fails with [`Unsupported`](BatchError::Unsupported) and the caller falls back
//! to the key walk.

use std::{io, mem::size_of, os::fd::AsRawFd as _, os::fd::BorrowedFd};

/// `enum bpf_cmd` values from `include/uapi/linux/bpf.h`.
const BPF_MAP_LOOKUP_BATCH: libc::c_long = 24;
const BPF_MAP_DELETE_BATCH: libc::c_long = 27;

/// Entries asked for per call. Big enough that a million entries take a few hundred
/// calls, small enough that the buffers stay around a megabyte.
pub const CHUNK: usize = 8192;

/// The `batch` member of `union bpf_attr` (56 bytes), exactly as the kernel declares it:
///
/// ```c
/// struct { /* used by BPF_MAP_*_BATCH commands */
///     __aligned_u64 in_batch;   /* start batch, NULL to start from beginning */
///     __aligned_u64 out_batch;  /* output: next start batch */
///     __aligned_u64 keys;
///     __aligned_u64 values;
///     __u32 count;              /* input/output: input: # of key/value elements,
///                                  output: # of filled elements */
///     __u32 map_fd;
///     __u64 elem_flags;
///     __u64 flags;
/// } batch;
/// ```
///
/// The kernel accepts an attribute shorter than its whole union and treats the
/// rest as zero, so this struct is passed alone with its own size.
#[repr(C)]
#[derive(Default)]
struct BatchAttr {
    in_batch: u64,
    out_batch: u64,
    keys: u64,
    values: u64,
    count: u32,
    map_fd: u32,
    elem_flags: u64,
    flags: u64,
}

const _: () = {
    assert!(size_of::<BatchAttr>() == 56);
    assert!(std::mem::offset_of!(BatchAttr, count) == 32);
    assert!(std::mem::offset_of!(BatchAttr, map_fd) == 36);
    assert!(std::mem::offset_of!(BatchAttr, elem_flags) == 40);
    assert!(std::mem::offset_of!(BatchAttr, flags) == 48);
};

/// A batch call failed.
#[derive(Debug, thiserror::Error)]
pub enum BatchError {
    /// The kernel has no batch op for this map type.
    #[error("the kernel has no batch operations for this map")]
    Unsupported,
    /// The call failed after `done` elements were processed.
    #[error("{source} (after {done} elements)")]
    Failed { done: usize, source: io::Error },
}

/// Runs one batch command; returns the kernel's `count` (elements processed) and the
/// syscall's result.
fn call(cmd: libc::c_long, attr: &mut BatchAttr) -> (usize, io::Result<()>) {
    // SAFETY: `attr` is a valid bpf_attr prefix of the size passed; every pointer in it
    // points at a buffer the caller sized for `attr.count` elements, all of which
    // outlive the call.
    let rc = unsafe {
        libc::syscall(
            libc::SYS_bpf,
            cmd,
            std::ptr::from_mut(attr),
            size_of::<BatchAttr>(),
        )
    };
    let result = if rc < 0 {
        Err(io::Error::last_os_error())
    } else {
        Ok(())
    };
    (attr.count as usize, result)
}

/// True for the errors a kernel without this batch op gives.
fn unsupported(err: &io::Error) -> bool {
    // ENOTSUPP (524) is the kernel-internal code that leaks out of bpf(2).
    matches!(
        err.raw_os_error(),
        Some(libc::EINVAL | libc::EOPNOTSUPP | 524)
    )
}

/// Every (key, value) of the map, in the kernel's order. `K` and `V` must be the
/// map's exact key and value types (plain old data); not for per-CPU maps, whose
/// values come once per possible CPU.
pub fn lookup_all<K: aya::Pod, V: aya::Pod>(fd: BorrowedFd<'_>) -> Result<Vec<(K, V)>, BatchError> {
    let mut entries = Vec::new();
    let mut chunk = CHUNK;
    // The position token: a bucket index for hashes, the last key for the generic
    // op. Sized for any key we use, in u64s for alignment.
    const TOKEN_WORDS: usize = 8;
    let token_words = size_of::<K>().max(8).div_ceil(8);
    assert!(token_words <= TOKEN_WORDS, "map key too large");
    let mut token = [0u64; TOKEN_WORDS];
    let mut first = true;
    loop {
        let mut keys: Vec<K> = Vec::with_capacity(chunk);
        let mut values: Vec<V> = Vec::with_capacity(chunk);
        // The kernel leaves `out_batch` (and `count`) alone when it fails before
        // the walk; this marks that.
        let mut next = [u64::MAX; TOKEN_WORDS];
        let mut attr = BatchAttr {
            in_batch: if first { 0 } else { token.as_ptr() as u64 },
            out_batch: next.as_mut_ptr() as u64,
            keys: keys.as_mut_ptr() as u64,
            values: values.as_mut_ptr() as u64,
            count: u32::try_from(chunk).unwrap_or(u32::MAX),
            map_fd: fd.as_raw_fd() as u32,
            ..BatchAttr::default()
        };
        let (count, result) = call(BPF_MAP_LOOKUP_BATCH, &mut attr);
        let walked = next[0] != u64::MAX;
        let errno = result.as_ref().err().and_then(io::Error::raw_os_error);
        let filled = match errno {
            None => count,
            // The walk is over; `count` holds the last elements, unless the kernel
            // stopped at once because the previous call ended on the last bucket.
            Some(libc::ENOENT) if walked || count < chunk => count,
            _ => 0,
        }
        .min(chunk);
        // SAFETY: the kernel wrote `filled` keys and values into the buffers, whose
        // types are plain old data valid for any bytes.
        unsafe {
            keys.set_len(filled);
            values.set_len(filled);
        }
        entries.extend(keys.into_iter().zip(values));
        match result {
            Ok(()) => {}
            Err(_) if errno == Some(libc::ENOENT) => return Ok(entries),
            // One hash bucket holds more than `chunk` elements: ask for more at once.
            Err(_) if errno == Some(libc::ENOSPC) && filled == 0 && chunk < 1 << 22 => {
                chunk *= 2;
                continue;
            }
            Err(err) if first && unsupported(&err) => return Err(BatchError::Unsupported),
            Err(source) => {
                return Err(BatchError::Failed {
                    done: entries.len(),
                    source,
                });
            }
        }
        first = false;
        token[..token_words].copy_from_slice(&next[..token_words]);
    }
}

/// Deletes `keys` in one call, stopping at the first the kernel refuses (`ENOENT`
/// for a key that is not there); the error says how many went before it.
pub fn delete<K: aya::Pod>(fd: BorrowedFd<'_>, keys: &[K]) -> Result<(), BatchError> {
    if keys.is_empty() {
        return Ok(());
    }
    let mut attr = BatchAttr {
        keys: keys.as_ptr() as u64,
        count: u32::try_from(keys.len()).unwrap_or(u32::MAX),
        map_fd: fd.as_raw_fd() as u32,
        ..BatchAttr::default()
    };
    match call(BPF_MAP_DELETE_BATCH, &mut attr) {
        (_, Ok(())) => Ok(()),
        // Refused before the first key (the kernel then leaves `count` as it was):
        // no batch delete for this map. Deleting a valid key never gives these.
        (_, Err(err)) if unsupported(&err) => Err(BatchError::Unsupported),
        (done, Err(source)) => Err(BatchError::Failed {
            done: done.min(keys.len()),
            source,
        }),
    }
}
