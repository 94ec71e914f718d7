//! A display-stream client for tests: takes the framebuffer memfd, maps it read-only, and reads
//! damage events, as the GUI does.

use std::io::{Read, Write};
use std::os::fd::AsRawFd;
use std::os::unix::net::UnixStream;
use std::path::Path;
use std::time::{Duration, Instant};

use serde_json::Value;
use vmm_sys_util::sock_ctrl_msg::ScmSocket;

/// A connected display client with the framebuffer mapped.
pub struct DisplayClient {
    pub stream: UnixStream,
    pub info: Value,
    map: *const u8,
    size: usize,
    pending: Vec<u8>,
}

impl DisplayClient {
    /// Connects (retrying until the worker listens) and maps the framebuffer it sends.
    pub fn connect(path: &Path) -> DisplayClient {
        let deadline = Instant::now() + Duration::from_secs(10);
        let stream = loop {
            match UnixStream::connect(path) {
                Ok(stream) => break stream,
                Err(_) if Instant::now() < deadline => std::thread::sleep(Duration::from_millis(5)),
                Err(err) => panic!("cannot connect to {}: {err}", path.display()),
            }
        };
        Self::from_stream(stream)
    }

    /// Takes a stream already connected to a display (e.g. from hangard's OpenDisplay).
    pub fn from_stream(stream: UnixStream) -> DisplayClient {
        stream
            .set_read_timeout(Some(Duration::from_secs(30)))
            .unwrap();
        let mut buf = vec![0u8; 4096];
        let (n, file) = stream.recv_with_fd(&mut buf).expect("framebuffer message");
        let file = file.expect("the framebuffer event carries the memfd");
        let text = &buf[..n];
        let end = text
            .iter()
            .position(|&b| b == b'\n')
            .expect("one full line");
        let info: Value = serde_json::from_slice(&text[..end]).unwrap();
        assert_eq!(info["event"], "framebuffer", "{info}");
        assert_eq!(info["format"], "x8r8g8b8", "{info}");
        let size = info["size"].as_u64().unwrap() as usize;
        assert_eq!(file.metadata().unwrap().len() as usize, size);
        // SAFETY: a read-only shared mapping of the memfd the worker sent, `size` bytes long as
        // its metadata confirms; unmapped in Drop.
        let map = unsafe {
            libc::mmap(
                std::ptr::null_mut(),
                size,
                libc::PROT_READ,
                libc::MAP_SHARED,
                file.as_raw_fd(),
                0,
            )
        };
        assert_ne!(map, libc::MAP_FAILED, "mmap of the framebuffer failed");
        DisplayClient {
            stream,
            info,
            map: map.cast(),
            size,
            pending: text[end + 1..].to_vec(),
        }
    }

    pub fn width(&self) -> u32 {
        self.info["width"].as_u64().unwrap() as u32
    }

    pub fn stride(&self) -> u32 {
        self.info["stride"].as_u64().unwrap() as u32
    }

    /// The pixel at (x, y), as x8r8g8b8.
    pub fn pixel(&self, x: u32, y: u32) -> u32 {
        let offset = (y * self.stride() + x * 4) as usize;
        assert!(offset + 4 <= self.size);
        // SAFETY: in bounds of the mapping (checked above); the guest may write concurrently,
        // and a volatile read of an aligned u32 is what a display does too.
        unsafe { std::ptr::read_volatile(self.map.add(offset).cast::<u32>()) }
    }

    /// Sends one JSON line.
    pub fn send(&mut self, value: &Value) {
        self.send_raw(value.to_string().as_bytes());
    }

    pub fn send_raw(&mut self, line: &[u8]) {
        self.stream.write_all(line).unwrap();
        self.stream.write_all(b"\n").unwrap();
    }

    /// The next event, or `None` if none arrives within `timeout`.
    pub fn next_event(&mut self, timeout: Duration) -> Option<Value> {
        let deadline = Instant::now() + timeout;
        loop {
            if let Some(end) = self.pending.iter().position(|&b| b == b'\n') {
                let line: Vec<u8> = self.pending.drain(..=end).collect();
                return Some(serde_json::from_slice(&line[..end]).unwrap_or_else(|err| {
                    panic!("not JSON ({err}): {}", String::from_utf8_lossy(&line))
                }));
            }
            let left = deadline.saturating_duration_since(Instant::now());
            if left.is_zero() {
                return None;
            }
            self.stream
                .set_read_timeout(Some(left.max(Duration::from_millis(1))))
                .unwrap();
            let mut buf = [0u8; 65536];
            match self.stream.read(&mut buf) {
                Ok(0) => return None,
                Ok(n) => self.pending.extend_from_slice(&buf[..n]),
                Err(_) => return None,
            }
        }
    }

    /// Rows `[first, last)` covered by the damage events that arrive within `window`, and the
    /// events.
    pub fn damage_within(&mut self, window: Duration) -> (Vec<(u32, u32)>, Vec<Value>) {
        let deadline = Instant::now() + window;
        let mut rows = Vec::new();
        let mut events = Vec::new();
        while let Some(event) = self.next_event(deadline.saturating_duration_since(Instant::now()))
        {
            if event["event"] == "damage" {
                for rect in event["rects"].as_array().unwrap() {
                    let y = rect["y"].as_u64().unwrap() as u32;
                    let height = rect["height"].as_u64().unwrap() as u32;
                    rows.push((y, y + height));
                }
            }
            events.push(event);
        }
        (merge_rows(rows), events)
    }
}

/// Merges overlapping and adjacent row ranges.
pub fn merge_rows(mut rows: Vec<(u32, u32)>) -> Vec<(u32, u32)> {
    rows.sort();
    let mut merged: Vec<(u32, u32)> = Vec::new();
    for (first, last) in rows {
        match merged.last_mut() {
            Some(range) if first <= range.1 => range.1 = range.1.max(last),
            _ => merged.push((first, last)),
        }
    }
    merged
}

impl Drop for DisplayClient {
    fn drop(&mut self) {
        // SAFETY: the mapping made in `from_stream`, unused after this.
        unsafe { libc::munmap(self.map as *mut libc::c_void, self.size) };
    }
}
