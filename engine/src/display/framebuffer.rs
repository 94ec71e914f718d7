//! The framebuffer's memory: a memfd mapped shared into the worker, handed to KVM as its own
//! memory slot and to display clients by fd. It outlives machine resets, so clients keep their
//! mapping across a guest reboot.

use std::fs::File;
use std::os::fd::AsRawFd;

use crate::config::DisplaySize;
use crate::memory::create_memfd;

/// Bytes per pixel of the x8r8g8b8 format.
pub const BYTES_PER_PIXEL: u32 = 4;
/// The pixel format's name in the display protocol.
pub const FORMAT: &str = "x8r8g8b8";

/// Errors creating the framebuffer.
#[derive(Debug, thiserror::Error)]
pub enum FramebufferError {
    #[error("cannot create the {size}-byte framebuffer memfd: {source}")]
    Memfd { size: u64, source: std::io::Error },
    #[error("cannot map the {size}-byte framebuffer: {source}")]
    Map { size: u64, source: std::io::Error },
}

/// A linear x8r8g8b8 framebuffer: pixel (x, y) is the little-endian u32 at
/// `y * stride + x * 4`, blue in the low byte.
pub struct Framebuffer {
    memfd: File,
    base: *mut u8,
    size: usize,
    pub width: u32,
    pub height: u32,
    pub stride: u32,
}

// SAFETY: the mapping is plain shared memory owned by this value; every access goes through
// volatile copies that tolerate concurrent writes by the guest.
unsafe impl Send for Framebuffer {}
// SAFETY: as above; `&Framebuffer` only allows reads of the mapping.
unsafe impl Sync for Framebuffer {}

impl Framebuffer {
    /// Creates a black framebuffer of `size`, its length rounded up to whole pages.
    pub fn new(size: DisplaySize) -> Result<Framebuffer, FramebufferError> {
        let stride = size.width * BYTES_PER_PIXEL;
        let bytes = (u64::from(stride) * u64::from(size.height)).next_multiple_of(4096);
        let memfd = create_memfd(c"hangar-framebuffer", bytes).map_err(|source| {
            FramebufferError::Memfd {
                size: bytes,
                source,
            }
        })?;
        // SAFETY: a fresh shared mapping of the whole memfd, which is `bytes` long; the result
        // is checked before use and unmapped in Drop.
        let base = unsafe {
            libc::mmap(
                std::ptr::null_mut(),
                bytes as usize,
                libc::PROT_READ | libc::PROT_WRITE,
                libc::MAP_SHARED,
                memfd.as_raw_fd(),
                0,
            )
        };
        if base == libc::MAP_FAILED {
            return Err(FramebufferError::Map {
                size: bytes,
                source: std::io::Error::last_os_error(),
            });
        }
        Ok(Framebuffer {
            memfd,
            base: base.cast(),
            size: bytes as usize,
            width: size.width,
            height: size.height,
            stride,
        })
    }

    /// The memfd, for KVM and for clients.
    pub fn memfd(&self) -> &File {
        &self.memfd
    }

    /// Where the worker has the framebuffer mapped, for KVM's memory slot.
    pub fn host_address(&self) -> u64 {
        self.base as u64
    }

    /// Length of the mapping (and of the memfd), a whole number of pages.
    pub fn size(&self) -> u64 {
        self.size as u64
    }

    /// A copy of the visible pixels, `stride * height` bytes.
    pub fn snapshot(&self) -> Vec<u8> {
        let len = self.stride as usize * self.height as usize;
        let mut pixels = vec![0u8; len];
        // SAFETY: `len` is within the mapping; the guest may write concurrently, which can
        // only tear pixel values, never touch memory outside the two buffers.
        unsafe { std::ptr::copy_nonoverlapping(self.base, pixels.as_mut_ptr(), len) };
        pixels
    }

    /// Paints the whole framebuffer black, as a fresh boot finds it.
    pub fn clear(&self) {
        // SAFETY: the mapping is `size` bytes long and writable.
        unsafe { std::ptr::write_bytes(self.base, 0, self.size) };
    }
}

impl Drop for Framebuffer {
    fn drop(&mut self) {
        // SAFETY: `base` and `size` are the mapping made in `new`; nothing uses it after drop
        // (the machine, whose KVM slot points here, is dropped before the worker's framebuffer).
        unsafe { libc::munmap(self.base.cast(), self.size) };
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sizes_round_up_to_pages_and_the_memfd_shares_the_pixels() {
        let fb = Framebuffer::new(DisplaySize {
            width: 640,
            height: 401,
        })
        .unwrap();
        assert_eq!(fb.stride, 2560);
        assert_eq!(fb.size(), (2560u64 * 401).next_multiple_of(4096));
        assert_eq!(fb.memfd().metadata().unwrap().len(), fb.size());
        use std::os::unix::fs::FileExt;
        fb.memfd().write_at(&[1, 2, 3, 4], 2560).unwrap();
        assert_eq!(&fb.snapshot()[2560..2564], &[1, 2, 3, 4]);
        fb.clear();
        assert!(fb.snapshot().iter().all(|&b| b == 0));
    }
}
