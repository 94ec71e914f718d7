//! Display clients: one connection each, non-blocking both ways. Damage is never queued behind
//! a client that stopped reading: while anything is still unsent, new damage is dropped for that
//! client and it gets a `resync` once its socket drains. The VM never waits for a client.

use std::io;
use std::os::fd::AsRawFd;
use std::os::unix::net::UnixStream;

use vmm_sys_util::sock_ctrl_msg::ScmSocket;

use crate::control::{read_available, split_lines, write_queued, Line};
use crate::protocol::{DisplayEvent, DISPLAY_PROTOCOL_VERSION};

use super::framebuffer::{Framebuffer, FORMAT};

/// Kernel send buffer of a display connection. Small on purpose: a client more than a few
/// seconds of damage behind must redraw everything anyway, so queueing more only delays the
/// resync.
const SEND_BUFFER: libc::c_int = 16 * 1024;
/// Non-damage output (errors) a client may leave unread before it is disconnected.
const MAX_PENDING_OUTPUT: usize = 64 * 1024;

/// One display client.
pub struct DisplayClient {
    pub stream: UnixStream,
    input: Vec<u8>,
    output: Vec<u8>,
    discarding: bool,
    /// Damage was dropped; send `resync` as soon as the output drains.
    resync_pending: bool,
    pub closed: bool,
}

impl DisplayClient {
    /// Takes a fresh connection and sends it the framebuffer event with the memfd attached.
    pub fn new(stream: UnixStream, framebuffer: &Framebuffer) -> io::Result<DisplayClient> {
        set_send_buffer(&stream, SEND_BUFFER);
        let event = DisplayEvent::Framebuffer {
            version: DISPLAY_PROTOCOL_VERSION,
            width: framebuffer.width,
            height: framebuffer.height,
            stride: framebuffer.stride,
            format: FORMAT.to_string(),
            size: framebuffer.size(),
        };
        let mut line = serde_json::to_vec(&event).map_err(io::Error::other)?;
        line.push(b'\n');
        // A fresh connection has an empty buffer, so this short message goes out whole.
        let sent = stream
            .send_with_fd(&line[..], framebuffer.memfd().as_raw_fd())
            .map_err(|err| io::Error::from_raw_os_error(err.errno()))?;
        stream.set_nonblocking(true)?;
        Ok(DisplayClient {
            stream,
            input: Vec::new(),
            output: line[sent..].to_vec(),
            discarding: false,
            resync_pending: false,
            closed: false,
        })
    }

    /// Sends damage, or drops it (and owes a resync) while earlier output is still unsent.
    pub fn send_damage(&mut self, event: &DisplayEvent) {
        if self.resync_pending || !self.output.is_empty() {
            self.resync_pending = true;
            self.flush();
            return;
        }
        self.queue(event);
        // Whatever did not fit stays queued; later damage is dropped until it drains.
        self.flush();
    }

    /// Sends an event that must not be dropped (an error reply).
    pub fn send(&mut self, event: &DisplayEvent) {
        self.queue(event);
        if self.output.len() > MAX_PENDING_OUTPUT {
            self.closed = true;
        }
        self.flush();
    }

    fn queue(&mut self, event: &DisplayEvent) {
        if let Ok(mut line) = serde_json::to_vec(event) {
            line.push(b'\n');
            self.output.extend_from_slice(&line);
        }
    }

    /// Sends what the socket takes; once everything is out, a pending resync goes too.
    pub fn flush(&mut self) {
        loop {
            if write_queued(&mut self.stream, &mut self.output).is_err() {
                self.closed = true;
                return;
            }
            if !self.output.is_empty() || !std::mem::take(&mut self.resync_pending) {
                return;
            }
            self.queue(&DisplayEvent::Resync);
        }
    }

    /// True while output waits for the socket to drain.
    pub fn wants_write(&self) -> bool {
        !self.output.is_empty() || self.resync_pending
    }

    /// Reads what is available and returns the complete lines.
    pub fn read_lines(&mut self) -> Vec<Line> {
        if read_available(&mut self.stream, &mut self.input).is_err() {
            self.closed = true;
        }
        split_lines(&mut self.input, &mut self.discarding)
    }
}

fn set_send_buffer(stream: &UnixStream, bytes: libc::c_int) {
    // SAFETY: setsockopt reads `bytes` for the given length; failure only keeps the default.
    unsafe {
        libc::setsockopt(
            stream.as_raw_fd(),
            libc::SOL_SOCKET,
            libc::SO_SNDBUF,
            (&bytes as *const libc::c_int).cast(),
            std::mem::size_of::<libc::c_int>() as libc::socklen_t,
        )
    };
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::DisplaySize;
    use crate::display::DamageRect;
    use std::io::Read;

    fn damage(y: u32) -> DisplayEvent {
        DisplayEvent::Damage {
            rects: vec![DamageRect {
                x: 0,
                y,
                width: 640,
                height: 1,
            }],
        }
    }

    fn read_available(stream: &mut UnixStream) -> String {
        stream.set_nonblocking(true).unwrap();
        let mut text = Vec::new();
        let mut buf = [0u8; 65536];
        while let Ok(n) = stream.read(&mut buf) {
            if n == 0 {
                break;
            }
            text.extend_from_slice(&buf[..n]);
        }
        String::from_utf8(text).unwrap()
    }

    #[test]
    fn a_stalled_client_loses_damage_and_gets_one_resync_when_it_drains() {
        let fb = Framebuffer::new(DisplaySize {
            width: 640,
            height: 400,
        })
        .unwrap();
        let (ours, mut theirs) = UnixStream::pair().unwrap();
        let mut client = DisplayClient::new(ours, &fb).unwrap();
        // Far more damage than the small send buffer holds.
        let mut sent = 0;
        for y in 0..20_000 {
            client.send_damage(&damage(y % 400));
            sent += 1;
            if client.wants_write() && client.resync_pending {
                break;
            }
        }
        assert!(
            client.resync_pending,
            "{sent} damage events never filled the buffer"
        );
        assert!(!client.closed);
        let first = read_available(&mut theirs);
        assert!(first.starts_with(r#"{"event":"framebuffer","version":1,"width":640"#));
        assert!(!first.contains("resync"));
        client.flush();
        let rest = read_available(&mut theirs);
        assert_eq!(rest.matches("resync").count(), 1, "{rest}");
        assert!(rest.ends_with("{\"event\":\"resync\"}\n"), "{rest}");
        // Once drained, damage flows again.
        client.send_damage(&damage(7));
        assert!(read_available(&mut theirs).contains(r#""y":7"#));
    }
}
