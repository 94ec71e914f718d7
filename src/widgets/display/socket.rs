//! The console's end of the display socket: reading newline-delimited messages that may carry
//! a file descriptor (SCM_RIGHTS), writing input commands, and the shared framebuffer mapping.

use std::io;
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd, RawFd};

/// Bytes received and not yet split into lines, with the descriptors that came with them.
#[derive(Default)]
pub struct LineReader {
    buffer: Vec<u8>,
    fds: Vec<OwnedFd>,
}

/// A line longer than this is a broken stream, not a message.
const MAX_LINE: usize = 1 << 20;

impl LineReader {
    /// Reads what the socket has now without blocking. `Ok(false)` means the peer closed it.
    pub fn fill(&mut self, socket: RawFd) -> io::Result<bool> {
        let mut data = [0u8; 16384];
        // Room for a few descriptors.
        let mut control = [0u8; 128];
        let mut iov = libc::iovec {
            iov_base: data.as_mut_ptr().cast(),
            iov_len: data.len(),
        };
        // SAFETY: msghdr is plain old data; zeroed is a valid empty header.
        let mut header: libc::msghdr = unsafe { std::mem::zeroed() };
        header.msg_iov = &mut iov;
        header.msg_iovlen = 1;
        header.msg_control = control.as_mut_ptr().cast();
        header.msg_controllen = control.len();
        // SAFETY: the header points at live buffers of the lengths given.
        let read = unsafe {
            libc::recvmsg(
                socket,
                &mut header,
                libc::MSG_DONTWAIT | libc::MSG_CMSG_CLOEXEC,
            )
        };
        if read < 0 {
            let err = io::Error::last_os_error();
            return if err.kind() == io::ErrorKind::WouldBlock {
                Ok(true)
            } else {
                Err(err)
            };
        }
        // SAFETY: walking the control messages recvmsg filled in, with the libc macros.
        unsafe {
            let mut cmsg = libc::CMSG_FIRSTHDR(&header);
            while !cmsg.is_null() {
                if (*cmsg).cmsg_level == libc::SOL_SOCKET && (*cmsg).cmsg_type == libc::SCM_RIGHTS {
                    let bytes = (*cmsg).cmsg_len as usize - libc::CMSG_LEN(0) as usize;
                    let first = libc::CMSG_DATA(cmsg).cast::<RawFd>();
                    for i in 0..bytes / std::mem::size_of::<RawFd>() {
                        let fd = first.add(i).read_unaligned();
                        self.fds.push(OwnedFd::from_raw_fd(fd));
                    }
                }
                cmsg = libc::CMSG_NXTHDR(&header, cmsg);
            }
        }
        if read == 0 {
            return Ok(false);
        }
        self.buffer.extend_from_slice(&data[..read as usize]);
        if self.buffer.len() > MAX_LINE && !self.buffer.contains(&b'\n') {
            return Err(io::Error::new(
                io::ErrorKind::InvalidData,
                "display stream: a message longer than 1 MiB",
            ));
        }
        Ok(true)
    }

    /// The next complete line, if one is there.
    pub fn next_line(&mut self) -> Option<String> {
        let end = self.buffer.iter().position(|b| *b == b'\n')?;
        let line: Vec<u8> = self.buffer.drain(..=end).collect();
        Some(String::from_utf8_lossy(&line[..end]).into_owned())
    }

    /// The oldest descriptor received and not yet taken.
    pub fn take_fd(&mut self) -> Option<OwnedFd> {
        (!self.fds.is_empty()).then(|| self.fds.remove(0))
    }
}

/// Writes a whole message, waiting briefly if the socket is full (input lines are tiny).
pub fn write_all(socket: RawFd, bytes: &[u8]) -> io::Result<()> {
    let mut written = 0;
    while written < bytes.len() {
        // SAFETY: writing from a live slice.
        let n = unsafe {
            libc::send(
                socket,
                bytes[written..].as_ptr().cast(),
                bytes.len() - written,
                libc::MSG_NOSIGNAL,
            )
        };
        if n < 0 {
            let err = io::Error::last_os_error();
            if err.kind() == io::ErrorKind::WouldBlock || err.kind() == io::ErrorKind::Interrupted {
                std::thread::sleep(std::time::Duration::from_millis(1));
                continue;
            }
            return Err(err);
        }
        written += n as usize;
    }
    Ok(())
}

/// The guest framebuffer, mapped read-only from the worker's memfd.
pub struct SharedFramebuffer {
    ptr: *mut libc::c_void,
    len: usize,
}

impl SharedFramebuffer {
    pub fn map(fd: &OwnedFd, len: usize) -> io::Result<SharedFramebuffer> {
        let mut stat: libc::stat = unsafe {
            // SAFETY: stat is plain old data.
            std::mem::zeroed()
        };
        // SAFETY: fstat on a descriptor we own, into a local struct.
        if unsafe { libc::fstat(fd.as_raw_fd(), &mut stat) } < 0 {
            return Err(io::Error::last_os_error());
        }
        if (stat.st_size as u64) < len as u64 || len == 0 {
            return Err(io::Error::new(
                io::ErrorKind::InvalidData,
                format!(
                    "display stream: the framebuffer memory is {} bytes, the message said {len}",
                    stat.st_size
                ),
            ));
        }
        // SAFETY: a fresh read-only shared mapping of a file at least `len` bytes long.
        let ptr = unsafe {
            libc::mmap(
                std::ptr::null_mut(),
                len,
                libc::PROT_READ,
                libc::MAP_SHARED,
                fd.as_raw_fd(),
                0,
            )
        };
        if ptr == libc::MAP_FAILED {
            return Err(io::Error::last_os_error());
        }
        Ok(SharedFramebuffer { ptr, len })
    }

    /// The pixels. The worker keeps writing them: a tile copied mid-update shows a torn
    /// picture until the damage message for that write arrives and the tile is copied again.
    pub fn bytes(&self) -> &[u8] {
        // SAFETY: the mapping lives as long as self and is `len` bytes; it is only read.
        unsafe { std::slice::from_raw_parts(self.ptr.cast::<u8>(), self.len) }
    }
}

// SAFETY: the mapping belongs to this value alone and is only ever read; handing the value to
// another thread (the recorder's) hands over the mapping with it.
unsafe impl Send for SharedFramebuffer {}

impl Drop for SharedFramebuffer {
    fn drop(&mut self) {
        // SAFETY: unmapping exactly the mapping made in `map`.
        unsafe {
            libc::munmap(self.ptr, self.len);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::Write;
    use std::os::unix::net::UnixStream;

    #[test]
    fn lines_are_split_across_reads() {
        let (mut a, b) = UnixStream::pair().unwrap();
        let mut reader = LineReader::default();
        a.write_all(b"{\"event\":\"res").unwrap();
        assert!(reader.fill(b.as_raw_fd()).unwrap());
        assert_eq!(reader.next_line(), None);
        a.write_all(b"ync\"}\n{\"x\":1}\n").unwrap();
        reader.fill(b.as_raw_fd()).unwrap();
        assert_eq!(
            reader.next_line().as_deref(),
            Some("{\"event\":\"resync\"}")
        );
        assert_eq!(reader.next_line().as_deref(), Some("{\"x\":1}"));
        assert_eq!(reader.next_line(), None);
        // Nothing there: not an error, not closed.
        assert!(reader.fill(b.as_raw_fd()).unwrap());
        drop(a);
        assert!(!reader.fill(b.as_raw_fd()).unwrap());
    }
}
