//! Connections on the control socket: line framing in, buffered non-blocking writes out.

use std::io::{self, Read, Write};
use std::os::unix::net::UnixStream;

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

    /// Sends as much queued output as the socket takes.
    pub fn flush(&mut self) {
        if write_queued(&mut self.stream, &mut self.output).is_err() {
            self.closed = true;
        }
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
