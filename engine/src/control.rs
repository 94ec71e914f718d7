//! Connections on the control socket: line framing in, buffered non-blocking writes out.

use std::collections::VecDeque;
use std::io::{self, Read, Write};
use std::os::fd::{AsRawFd, OwnedFd};
use std::os::unix::net::UnixStream;

use vmm_sys_util::sock_ctrl_msg::ScmSocket;

use serde::Serialize;

use crate::protocol::MAX_REQUEST_LINE;

/// Output a client may leave unread before it is disconnected.
const MAX_PENDING_OUTPUT: usize = 4 << 20;

/// One line read from a client.
#[derive(Debug, PartialEq, Eq)]
pub enum Line {
    Complete(Vec<u8>),
    /// A line longer than [`MAX_REQUEST_LINE`]; its bytes were dropped.
    TooLong,
}

/// A control client.
pub struct ControlClient {
    pub stream: UnixStream,
    input: Vec<u8>,
    output: Vec<u8>,
    /// Dropping the rest of an over-long line.
    discarding: bool,
    /// Descriptors to pass, each with the offset in `output` of the byte it travels with.
    fds: VecDeque<(usize, OwnedFd)>,
    pub closed: bool,
}

impl ControlClient {
    pub fn new(stream: UnixStream) -> io::Result<Self> {
        stream.set_nonblocking(true)?;
        Ok(ControlClient {
            stream,
            input: Vec::new(),
            output: Vec::new(),
            discarding: false,
            fds: VecDeque::new(),
            closed: false,
        })
    }

    /// Reads what is available and returns the complete lines.
    pub fn read_lines(&mut self) -> Vec<Line> {
        if read_available(&mut self.stream, &mut self.input).is_err() {
            self.closed = true;
        }
        split_lines(&mut self.input, &mut self.discarding)
    }

    /// Queues one JSON line and tries to send it.
    pub fn send(&mut self, message: &impl Serialize) {
        if let Ok(mut line) = serde_json::to_vec(message) {
            line.push(b'\n');
            self.output.extend_from_slice(&line);
        }
        if self.output.len() > MAX_PENDING_OUTPUT {
            self.closed = true;
        }
        self.flush();
    }

    /// Queues one JSON line with `fd` passed alongside its first byte, and tries to send it.
    pub fn send_with_fd(&mut self, message: &impl Serialize, fd: OwnedFd) {
        self.fds.push_back((self.output.len(), fd));
        self.send(message);
    }

    /// Sends as much queued output as the socket takes.
    pub fn flush(&mut self) {
        if self.flush_with_fds().is_err() {
            self.closed = true;
        }
    }

    /// Like [`write_queued`], but each queued descriptor goes out with its byte.
    fn flush_with_fds(&mut self) -> io::Result<()> {
        while !self.output.is_empty() {
            // A descriptor's byte starts each send, and the next descriptor's byte ends it.
            let next_fd = self.fds.get(1).map_or(self.output.len(), |(at, _)| *at);
            let sent = match self.fds.front() {
                Some((0, fd)) => match self
                    .stream
                    .send_with_fd(&self.output[..next_fd], fd.as_raw_fd())
                {
                    Ok(n) => {
                        self.fds.pop_front();
                        n
                    }
                    Err(err) if err.errno() == libc::EAGAIN => return Ok(()),
                    Err(err) if err.errno() == libc::EINTR => 0,
                    Err(err) => return Err(io::Error::from_raw_os_error(err.errno())),
                },
                next => {
                    let end = next.map_or(self.output.len(), |(at, _)| *at);
                    match self.stream.write(&self.output[..end]) {
                        Ok(0) => return Err(io::ErrorKind::WriteZero.into()),
                        Ok(n) => n,
                        Err(err) if err.kind() == io::ErrorKind::Interrupted => 0,
                        Err(err) if err.kind() == io::ErrorKind::WouldBlock => return Ok(()),
                        Err(err) => return Err(err),
                    }
                }
            };
            self.output.drain(..sent);
            for (at, _) in self.fds.iter_mut() {
                *at -= sent;
            }
        }
        Ok(())
    }

    pub fn wants_write(&self) -> bool {
        !self.output.is_empty()
    }

    /// Blocks briefly to deliver the last messages before the worker exits.
    pub fn flush_before_exit(&mut self) {
        let _ = self.stream.set_nonblocking(false);
        let _ = self
            .stream
            .set_write_timeout(Some(std::time::Duration::from_millis(200)));
        let _ = self.stream.write_all(&self.output);
        self.output.clear();
    }
}

/// Takes the complete lines out of `input`, enforcing the line-length limit.
/// Reads everything a non-blocking socket has into `input`. An error means the peer is gone
/// (end of stream included).
pub fn read_available(stream: &mut UnixStream, input: &mut Vec<u8>) -> io::Result<()> {
    let mut buf = [0u8; 4096];
    loop {
        match stream.read(&mut buf) {
            Ok(0) => return Err(io::ErrorKind::UnexpectedEof.into()),
            Ok(n) => input.extend_from_slice(&buf[..n]),
            Err(err) if err.kind() == io::ErrorKind::Interrupted => {}
            Err(err) if err.kind() == io::ErrorKind::WouldBlock => return Ok(()),
            Err(err) => return Err(err),
        }
    }
}

/// Writes as much of `output` to a non-blocking socket as it takes, and drops what went out.
/// An error means the peer is gone.
pub fn write_queued(stream: &mut UnixStream, output: &mut Vec<u8>) -> io::Result<()> {
    while !output.is_empty() {
        match stream.write(output) {
            Ok(0) => return Err(io::ErrorKind::WriteZero.into()),
            Ok(n) => {
                output.drain(..n);
            }
            Err(err) if err.kind() == io::ErrorKind::Interrupted => {}
            Err(err) if err.kind() == io::ErrorKind::WouldBlock => return Ok(()),
            Err(err) => return Err(err),
        }
    }
    Ok(())
}

pub fn split_lines(input: &mut Vec<u8>, discarding: &mut bool) -> Vec<Line> {
    let mut lines = Vec::new();
    while let Some(end) = input.iter().position(|&b| b == b'\n') {
        let line: Vec<u8> = input.drain(..=end).take(end).collect();
        if std::mem::take(discarding) {
            continue;
        }
        if line.len() > MAX_REQUEST_LINE {
            lines.push(Line::TooLong);
        } else if !line.iter().all(u8::is_ascii_whitespace) {
            lines.push(Line::Complete(line));
        }
    }
    if input.len() > MAX_REQUEST_LINE {
        input.clear();
        if !*discarding {
            *discarding = true;
            lines.push(Line::TooLong);
        }
    }
    lines
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn splits_complete_lines_and_keeps_the_rest() {
        let mut input = b"{\"cmd\":\"a\"}\n\n{\"cmd\":\"b\"}\n{\"cmd\"".to_vec();
        let mut discarding = false;
        let lines = split_lines(&mut input, &mut discarding);
        assert_eq!(
            lines,
            vec![
                Line::Complete(b"{\"cmd\":\"a\"}".to_vec()),
                Line::Complete(b"{\"cmd\":\"b\"}".to_vec())
            ]
        );
        assert_eq!(input, b"{\"cmd\"");
    }

    /// Reads everything the peer sent until `lines` complete lines arrived; returns the text
    /// and each descriptor with how many bytes had arrived before the message carrying it.
    fn receive(peer: &UnixStream, lines: usize) -> (Vec<u8>, Vec<(usize, std::fs::File)>) {
        let mut text = Vec::new();
        let mut fds = Vec::new();
        while text.iter().filter(|&&b| b == b'\n').count() < lines {
            let mut buf = [0u8; 65536];
            let (n, file) = peer.recv_with_fd(&mut buf).unwrap();
            assert!(n > 0);
            if let Some(file) = file {
                fds.push((text.len(), file));
            }
            text.extend_from_slice(&buf[..n]);
        }
        (text, fds)
    }

    #[test]
    fn a_passed_descriptor_travels_with_its_line_even_behind_a_backlog() {
        let (ours, peer) = UnixStream::pair().unwrap();
        let mut client = ControlClient::new(ours).unwrap();
        // Enough output to fill the socket, so the reply with the descriptor waits in the queue.
        let filler = "x".repeat(1000);
        let mut sent = 0;
        while !client.wants_write() {
            client.send(&serde_json::json!({ "event": "filler", "n": sent, "text": filler }));
            sent += 1;
        }
        let (reader, mut writer) = UnixStream::pair().unwrap();
        client.send_with_fd(&serde_json::json!({ "ok": true }), OwnedFd::from(reader));
        client.send(&serde_json::json!({ "event": "after" }));
        assert!(client.wants_write());
        peer.set_nonblocking(false).unwrap();
        let receiving = std::thread::spawn(move || receive(&peer, sent + 2));
        while client.wants_write() {
            client.flush();
            std::thread::yield_now();
        }
        assert!(!client.closed);
        let (text, fds) = receiving.join().unwrap();
        let reply_at = text
            .windows(11)
            .position(|w| w == b"{\"ok\":true}")
            .expect("the reply arrived");
        assert_eq!(fds.len(), 1, "exactly one descriptor");
        let (before, file) = &fds[0];
        // The descriptor came with the message that held the reply's first byte.
        assert!(*before <= reply_at, "descriptor arrived after its line");
        assert!(text[*before..reply_at].ends_with(b"\n") || *before == reply_at);
        assert!(text.ends_with(b"{\"event\":\"after\"}\n"));
        // And it is the socket that was passed.
        writer.write_all(b"ping").unwrap();
        let mut got = [0u8; 4];
        (&*file).read_exact(&mut got).unwrap();
        assert_eq!(&got, b"ping");
    }

    #[test]
    fn an_endless_line_is_reported_once_and_dropped() {
        let mut input = vec![b'x'; MAX_REQUEST_LINE + 10];
        let mut discarding = false;
        assert_eq!(
            split_lines(&mut input, &mut discarding),
            vec![Line::TooLong]
        );
        assert!(input.is_empty());
        input.extend_from_slice(b"xxxx\n{\"cmd\":\"stats\"}\n");
        assert_eq!(
            split_lines(&mut input, &mut discarding),
            vec![Line::Complete(b"{\"cmd\":\"stats\"}".to_vec())]
        );
    }
}
