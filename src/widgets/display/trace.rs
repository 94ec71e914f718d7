//! The console's frame trace, for benchmarks: with `HANGAR_DISPLAY_TRACE=PATH` the widget
//! appends a line per damage message it takes in and per frame it renders, each with a
//! CLOCK_MONOTONIC timestamp in nanoseconds (the clock Python's `time.monotonic_ns()` reads):
//!
//! ```text
//! damage SEQ NS Y:H Y:H ...     damage message SEQ (from 1) arrived; the row bands it covers
//! resync SEQ NS                 the worker dropped damage: everything counts as changed
//! frame NS SEQ TILES SCALE      a frame was painted holding every damage up to SEQ, after
//!                               rebuilding TILES tiles, the guest screen drawn at SCALE
//! ```
//!
//! `bench/console.py` reads it. Without the variable nothing is written and nothing is timed.

use std::fs::{File, OpenOptions};
use std::io::Write;
use std::path::Path;

use super::stream::DamageRect;

/// The environment variable that turns the trace on.
pub const TRACE_VAR: &str = "HANGAR_DISPLAY_TRACE";

pub fn monotonic_ns() -> u64 {
    // SAFETY: clock_gettime writes the timespec we pass.
    let mut now: libc::timespec = unsafe { std::mem::zeroed() };
    // SAFETY: as above; CLOCK_MONOTONIC always exists on Linux.
    unsafe { libc::clock_gettime(libc::CLOCK_MONOTONIC, &mut now) };
    now.tv_sec as u64 * 1_000_000_000 + now.tv_nsec as u64
}

pub fn damage_line(seq: u64, ns: u64, rects: &[DamageRect]) -> String {
    let mut line = format!("damage {seq} {ns}");
    for rect in rects {
        line.push_str(&format!(" {}:{}", rect.y, rect.height));
    }
    line.push('\n');
    line
}

pub fn resync_line(seq: u64, ns: u64) -> String {
    format!("resync {seq} {ns}\n")
}

pub fn frame_line(ns: u64, seq: u64, tiles: u64, scale: f64) -> String {
    format!("frame {ns} {seq} {tiles} {scale:.3}\n")
}

/// The open trace file. Lines are written whole with one write each, unbuffered, so a GUI
/// stopped by a signal leaves a complete trace behind.
pub struct FrameTrace {
    file: File,
}

impl FrameTrace {
    /// The trace the environment asks for, if any. A path that cannot be opened is reported
    /// once on stderr; the console works on without it.
    pub fn from_env() -> Option<FrameTrace> {
        let path = std::env::var_os(TRACE_VAR)?;
        match FrameTrace::open(Path::new(&path)) {
            Ok(trace) => Some(trace),
            Err(err) => {
                eprintln!(
                    "hangar: {TRACE_VAR}={}: {err}; no frame trace",
                    Path::new(&path).display()
                );
                None
            }
        }
    }

    pub fn open(path: &Path) -> std::io::Result<FrameTrace> {
        let file = OpenOptions::new().create(true).append(true).open(path)?;
        Ok(FrameTrace { file })
    }

    pub fn write(&mut self, line: &str) {
        // A full disk ends the trace's usefulness, not the console.
        let _ = self.file.write_all(line.as_bytes());
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn lines_carry_sequence_time_and_rows() {
        let rects = [
            DamageRect {
                x: 0,
                y: 80,
                width: 1280,
                height: 52,
            },
            DamageRect {
                x: 0,
                y: 700,
                width: 1280,
                height: 4,
            },
        ];
        assert_eq!(damage_line(3, 42, &rects), "damage 3 42 80:52 700:4\n");
        assert_eq!(resync_line(4, 43), "resync 4 43\n");
        assert_eq!(frame_line(44, 4, 135, 1.0), "frame 44 4 135 1.000\n");
    }

    #[test]
    fn the_clock_is_monotonic_and_written_whole() {
        let a = monotonic_ns();
        let b = monotonic_ns();
        assert!(b >= a && a > 0);
        let dir = std::env::temp_dir().join(format!("hangar-trace-{}", std::process::id()));
        let mut trace = FrameTrace::open(&dir).unwrap();
        trace.write(&frame_line(1, 2, 3, 0.5));
        trace.write(&frame_line(4, 5, 6, 1.0));
        assert_eq!(
            std::fs::read_to_string(&dir).unwrap(),
            "frame 1 2 3 0.500\nframe 4 5 6 1.000\n"
        );
        std::fs::remove_file(&dir).unwrap();
    }
}
