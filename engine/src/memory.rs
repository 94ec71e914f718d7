//! Guest RAM: one memfd, mapped into the worker and handed to KVM as one or two memory slots.
//!
//! A memfd (rather than anonymous memory) lets later features share guest RAM by fd: snapshots,
//! the display stream, and restarting the machine without a new process.

use std::fs::File;
use std::os::fd::{AsRawFd, FromRawFd};

use vm_memory::mmap::MmapRegion;
use vm_memory::{FileOffset, GuestAddress, GuestMemoryMmap, GuestRegionMmap};

use crate::arch::x86_64::layout::{MMIO_GAP_END, MMIO_GAP_START};

/// Errors creating guest RAM.
#[derive(Debug, thiserror::Error)]
pub enum MemoryError {
    #[error("cannot create the memfd for {size} bytes of guest RAM: {source}")]
    Memfd { size: u64, source: std::io::Error },
    #[error("cannot map {size} bytes of guest RAM (is the host out of memory?): {reason}")]
    Map { size: u64, reason: String },
}

/// The guest-physical ranges that hold RAM for a machine of `size` bytes: below the 32-bit MMIO
/// gap, and the rest above 4 GiB.
pub fn ram_ranges(size: u64) -> Vec<(GuestAddress, u64)> {
    let low = size.min(MMIO_GAP_START);
    let mut ranges = vec![(GuestAddress(0), low)];
    if size > low {
        ranges.push((GuestAddress(MMIO_GAP_END), size - low));
    }
    ranges
}

/// Creates guest RAM of `size` bytes, backed by a fresh memfd.
pub fn create_guest_memory(size: u64) -> Result<GuestMemoryMmap, MemoryError> {
    let memfd = create_memfd(c"hangar-guest-ram", size)
        .map_err(|source| MemoryError::Memfd { size, source })?;
    let mut regions = Vec::new();
    let mut offset = 0;
    for (base, len) in ram_ranges(size) {
        let file = memfd
            .try_clone()
            .map_err(|source| MemoryError::Memfd { size, source })?;
        let mapping =
            MmapRegion::from_file(FileOffset::new(file, offset), len as usize).map_err(|err| {
                MemoryError::Map {
                    size,
                    reason: err.to_string(),
                }
            })?;
        let region = GuestRegionMmap::new(mapping, base).ok_or_else(|| MemoryError::Map {
            size,
            reason: format!("region at {:#x} overflows", base.0),
        })?;
        regions.push(region);
        offset += len;
    }
    GuestMemoryMmap::from_regions(regions).map_err(|err| MemoryError::Map {
        size,
        reason: err.to_string(),
    })
}

/// Creates a sealed-size-free memfd of `size` bytes. Pages are allocated on first touch.
pub fn create_memfd(name: &std::ffi::CStr, size: u64) -> std::io::Result<File> {
    // SAFETY: `name` is a valid NUL-terminated string; the flags are plain constants.
    let fd = unsafe { libc::memfd_create(name.as_ptr(), libc::MFD_CLOEXEC) };
    if fd < 0 {
        return Err(std::io::Error::last_os_error());
    }
    // SAFETY: `fd` was just returned by memfd_create and is owned by nobody else.
    let file = unsafe { File::from_raw_fd(fd) };
    file.set_len(size)?;
    debug_assert!(file.as_raw_fd() >= 0);
    Ok(file)
}

#[cfg(test)]
mod tests {
    use super::*;
    use vm_memory::{Bytes, GuestMemoryBackend};

    #[test]
    fn small_guests_fit_below_the_gap() {
        assert_eq!(ram_ranges(256 << 20), vec![(GuestAddress(0), 256 << 20)]);
        assert_eq!(
            ram_ranges(MMIO_GAP_START),
            vec![(GuestAddress(0), MMIO_GAP_START)]
        );
    }

    #[test]
    fn large_guests_continue_above_4g() {
        let ranges = ram_ranges(4 << 30);
        assert_eq!(
            ranges,
            vec![
                (GuestAddress(0), MMIO_GAP_START),
                (GuestAddress(MMIO_GAP_END), (4 << 30) - MMIO_GAP_START)
            ]
        );
    }

    #[test]
    fn memory_is_readable_and_writable_on_both_sides_of_the_gap() {
        let mem = create_guest_memory((3 << 30) + (64 << 20)).unwrap();
        assert_eq!(mem.num_regions(), 2);
        mem.write_obj(0xdead_beef_u32, GuestAddress(0x1000))
            .unwrap();
        mem.write_obj(0x1234_u32, GuestAddress(MMIO_GAP_END + 8))
            .unwrap();
        assert_eq!(
            mem.read_obj::<u32>(GuestAddress(0x1000)).unwrap(),
            0xdead_beef
        );
        assert_eq!(
            mem.read_obj::<u32>(GuestAddress(MMIO_GAP_END + 8)).unwrap(),
            0x1234
        );
        assert!(mem.read_obj::<u32>(GuestAddress(MMIO_GAP_START)).is_err());
    }
}
