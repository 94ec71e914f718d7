//! The arithmetic of a recording, free of GStreamer: which frame a moment belongs to and its
//! timestamps, the elapsed time as the window shows it, and copying or comparing the guest's
//! framebuffer rows.

use std::time::Duration;

const NANOS_PER_SECOND: u128 = 1_000_000_000;

/// A steady frame rate. Frame `n` is due at `n / fps` seconds after the start, computed from
/// the index each time, so timestamps never drift however long the recording runs.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct FramePacer {
    fps: u32,
}

impl FramePacer {
    /// A pacer at `fps` frames per second (at least 1).
    pub fn new(fps: u32) -> FramePacer {
        FramePacer { fps: fps.max(1) }
    }

    pub fn fps(&self) -> u32 {
        self.fps
    }

    /// The presentation timestamp of frame `index`, in nanoseconds from the start.
    pub fn pts_ns(&self, index: u64) -> u64 {
        (index as u128 * NANOS_PER_SECOND / self.fps as u128) as u64
    }

    /// How long frame `index` lasts: up to the next frame's timestamp.
    pub fn duration_ns(&self, index: u64) -> u64 {
        self.pts_ns(index + 1) - self.pts_ns(index)
    }

    /// When frame `index` is due, from the start.
    pub fn due(&self, index: u64) -> Duration {
        Duration::from_nanos(self.pts_ns(index))
    }

    /// The frame whose slot `elapsed` falls in. A capture that wakes late takes this one and
    /// skips the slots it slept through, instead of catching up with a burst.
    pub fn frame_at(&self, elapsed: Duration) -> u64 {
        (elapsed.as_nanos() * self.fps as u128 / NANOS_PER_SECOND) as u64
    }

    /// The frame to capture at `elapsed` when `last` was the latest one captured (or skipped):
    /// `None` while still inside the slot of `last`.
    pub fn next_frame(&self, elapsed: Duration, last: Option<u64>) -> Option<u64> {
        let now = self.frame_at(elapsed);
        match last {
            Some(last) if now <= last => None,
            _ => Some(now),
        }
    }
}

/// The elapsed time of a recording as the window shows it: `00:12`, `59:59`, `1:00:00`.
pub fn format_elapsed(elapsed: Duration) -> String {
    let seconds = elapsed.as_secs();
    let (hours, minutes, seconds) = (seconds / 3600, seconds / 60 % 60, seconds % 60);
    if hours > 0 {
        format!("{hours}:{minutes:02}:{seconds:02}")
    } else {
        format!("{minutes:02}:{seconds:02}")
    }
}

/// The shape of the framebuffer in memory: `height` rows of `row_bytes` useful bytes, `stride`
/// bytes apart.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Rows {
    pub row_bytes: usize,
    pub stride: usize,
    pub height: usize,
}

impl Rows {
    /// Bytes of a frame with the rows packed together, as the encoder takes it.
    pub fn packed_len(&self) -> usize {
        self.row_bytes * self.height
    }

    /// Bytes of the framebuffer these rows span.
    pub fn span(&self) -> usize {
        match self.height {
            0 => 0,
            h => (h - 1) * self.stride + self.row_bytes,
        }
    }

    /// Copies the rows out of `frame`, packed.
    pub fn copy_packed(&self, frame: &[u8], out: &mut [u8]) {
        if self.stride == self.row_bytes {
            out.copy_from_slice(&frame[..self.packed_len()]);
            return;
        }
        for (y, row) in out.chunks_exact_mut(self.row_bytes).enumerate() {
            let start = y * self.stride;
            row.copy_from_slice(&frame[start..start + self.row_bytes]);
        }
    }

    /// Whether `frame` shows the same pixels as `packed`, an earlier packed copy.
    pub fn same_as(&self, frame: &[u8], packed: &[u8]) -> bool {
        if packed.len() != self.packed_len() {
            return false;
        }
        if self.stride == self.row_bytes {
            return frame[..self.packed_len()] == *packed;
        }
        packed
            .chunks_exact(self.row_bytes)
            .enumerate()
            .all(|(y, row)| frame[y * self.stride..y * self.stride + self.row_bytes] == *row)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn timestamps_follow_the_index_without_drift() {
        let pacer = FramePacer::new(30);
        assert_eq!(pacer.pts_ns(0), 0);
        assert_eq!(pacer.pts_ns(1), 33_333_333);
        assert_eq!(pacer.pts_ns(30), 1_000_000_000);
        // An hour in, still exact.
        assert_eq!(pacer.pts_ns(30 * 3600), 3600 * 1_000_000_000);
        // Durations tile the timeline with no gap or overlap.
        let total: u64 = (0..30).map(|i| pacer.duration_ns(i)).sum();
        assert_eq!(total, 1_000_000_000);
        assert!((0..30).all(|i| (33_333_333..=33_333_334).contains(&pacer.duration_ns(i))));
        assert_eq!(pacer.due(3), Duration::from_nanos(100_000_000));
        assert_eq!(FramePacer::new(0).fps(), 1);
    }

    #[test]
    fn a_late_wake_up_skips_slots_instead_of_bursting() {
        let pacer = FramePacer::new(30);
        let ms = Duration::from_millis;
        assert_eq!(pacer.next_frame(ms(0), None), Some(0));
        assert_eq!(pacer.next_frame(ms(20), Some(0)), None);
        assert_eq!(pacer.next_frame(ms(34), Some(0)), Some(1));
        // Slept 200 ms: the frame of now, not the six in between.
        assert_eq!(pacer.next_frame(ms(234), Some(1)), Some(7));
        assert_eq!(pacer.frame_at(ms(1000)), 30);
        assert_eq!(pacer.frame_at(ms(999)), 29);
    }

    #[test]
    fn elapsed_time_reads_like_a_clock() {
        let s = Duration::from_secs;
        assert_eq!(format_elapsed(Duration::ZERO), "00:00");
        assert_eq!(format_elapsed(Duration::from_millis(12_999)), "00:12");
        assert_eq!(format_elapsed(s(59 * 60 + 59)), "59:59");
        assert_eq!(format_elapsed(s(3600)), "1:00:00");
        assert_eq!(format_elapsed(s(25 * 3600 + 61)), "25:01:01");
    }

    #[test]
    fn rows_are_packed_and_compared_across_a_padded_stride() {
        // Two rows of 2 pixels (8 bytes), 12 bytes apart.
        let frame: Vec<u8> = (0..20).collect();
        let rows = Rows {
            row_bytes: 8,
            stride: 12,
            height: 2,
        };
        assert_eq!(rows.span(), 20);
        let mut packed = vec![0; rows.packed_len()];
        rows.copy_packed(&frame, &mut packed);
        assert_eq!(
            packed,
            [0, 1, 2, 3, 4, 5, 6, 7, 12, 13, 14, 15, 16, 17, 18, 19]
        );
        assert!(rows.same_as(&frame, &packed));
        let mut changed = frame.clone();
        changed[13] = 99;
        assert!(!rows.same_as(&changed, &packed));
        // The padding is not part of the picture.
        let mut padding = frame.clone();
        padding[9] = 99;
        assert!(rows.same_as(&padding, &packed));
        assert!(!rows.same_as(&frame, &packed[..8]));
    }

    #[test]
    fn tight_rows_copy_in_one_piece() {
        let frame: Vec<u8> = (0..16).collect();
        let rows = Rows {
            row_bytes: 8,
            stride: 8,
            height: 2,
        };
        let mut packed = vec![0; 16];
        rows.copy_packed(&frame, &mut packed);
        assert_eq!(packed, frame);
        assert!(rows.same_as(&frame, &packed));
        assert_eq!(
            Rows {
                row_bytes: 8,
                stride: 8,
                height: 0
            }
            .span(),
            0
        );
    }
}
