//! From KVM's dirty-page bitmap to damage rectangles: pages become row ranges of the linear
//! framebuffer, and neighbouring ranges merge. Pure logic, no KVM.

use serde::{Deserialize, Serialize};

/// At most this many rectangles go out per update; more are merged across the smallest gaps.
pub const MAX_RECTS: usize = 16;

/// A changed area of the screen, in pixels.
#[derive(Clone, Copy, Debug, Serialize, Deserialize, PartialEq, Eq)]
pub struct DamageRect {
    pub x: u32,
    pub y: u32,
    pub width: u32,
    pub height: u32,
}

/// The rows `[start, end)` touched by the dirty pages of `bitmap` (bit `n` of word `n / 64` is
/// page `n`), in order, with overlapping and adjacent ranges merged.
pub fn dirty_rows(bitmap: &[u64], page_size: u64, stride: u32, height: u32) -> Vec<(u32, u32)> {
    let stride = u64::from(stride);
    let limit = stride * u64::from(height);
    let mut rows: Vec<(u32, u32)> = Vec::new();
    for (word_index, &word) in bitmap.iter().enumerate() {
        let mut bits = word;
        while bits != 0 {
            let bit = u64::from(bits.trailing_zeros());
            bits &= bits - 1;
            let page = word_index as u64 * 64 + bit;
            let start = page * page_size;
            if start >= limit {
                continue;
            }
            let end = (start + page_size).min(limit);
            let first = (start / stride) as u32;
            let last = ((end - 1) / stride) as u32 + 1;
            match rows.last_mut() {
                Some(range) if first <= range.1 => range.1 = range.1.max(last),
                _ => rows.push((first, last)),
            }
        }
    }
    rows
}

/// Merges the pair of neighbouring ranges with the smallest gap until at most `max` remain.
pub fn limit_ranges(mut rows: Vec<(u32, u32)>, max: usize) -> Vec<(u32, u32)> {
    let max = max.max(1);
    while rows.len() > max {
        let (index, _) = rows
            .windows(2)
            .enumerate()
            .map(|(i, pair)| (i, pair[1].0 - pair[0].1))
            .min_by_key(|&(_, gap)| gap)
            .expect("more than one range");
        rows[index].1 = rows[index + 1].1;
        rows.remove(index + 1);
    }
    rows
}

/// Damage rectangles for a dirty bitmap of a `width` x `height` framebuffer with `stride`
/// bytes per row: full-width bands, since a page of a linear framebuffer spans whole rows or
/// more than one.
pub fn damage_from_dirty_pages(
    bitmap: &[u64],
    page_size: u64,
    width: u32,
    height: u32,
    stride: u32,
) -> Vec<DamageRect> {
    limit_ranges(dirty_rows(bitmap, page_size, stride, height), MAX_RECTS)
        .into_iter()
        .map(|(first, last)| DamageRect {
            x: 0,
            y: first,
            width,
            height: last - first,
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn bitmap(pages: &[u64], len: usize) -> Vec<u64> {
        let mut map = vec![0u64; len];
        for &page in pages {
            map[(page / 64) as usize] |= 1 << (page % 64);
        }
        map
    }

    #[test]
    fn a_clean_bitmap_has_no_damage() {
        assert!(damage_from_dirty_pages(&[0, 0], 4096, 1024, 768, 4096).is_empty());
    }

    #[test]
    fn one_page_per_row_maps_pages_to_rows_exactly() {
        // 1024 pixels x 4 bytes = one 4 KiB page per row.
        let rects = damage_from_dirty_pages(&bitmap(&[100, 101, 102], 13), 4096, 1024, 768, 4096);
        assert_eq!(
            rects,
            vec![DamageRect {
                x: 0,
                y: 100,
                width: 1024,
                height: 3
            }]
        );
    }

    #[test]
    fn separate_bands_stay_separate_and_adjacent_ones_merge() {
        let rows = dirty_rows(&bitmap(&[0, 1, 5, 6, 64, 65], 2), 4096, 4096, 768);
        assert_eq!(rows, vec![(0, 2), (5, 7), (64, 66)]);
    }

    #[test]
    fn a_page_spanning_two_rows_damages_both() {
        // 1280 x 4 = 5120 bytes per row: page 1 (4096..8192) covers rows 0 and 1.
        assert_eq!(dirty_rows(&bitmap(&[1], 1), 4096, 5120, 800), vec![(0, 2)]);
        // Page 5 (20480..24576) covers rows 4 only: 20480 / 5120 = 4, 24575 / 5120 = 4.
        assert_eq!(dirty_rows(&bitmap(&[5], 1), 4096, 5120, 800), vec![(4, 5)]);
        // Pages 0 and 1 both touch row 0; they merge into one range.
        assert_eq!(
            dirty_rows(&bitmap(&[0, 1], 1), 4096, 5120, 800),
            vec![(0, 2)]
        );
    }

    #[test]
    fn pages_past_the_visible_screen_are_ignored() {
        // A 640x400 screen uses 250 pages; the slot is rounded up further.
        let rows = dirty_rows(&bitmap(&[249, 250, 300], 5), 4096, 2560, 400);
        assert_eq!(rows, vec![(398, 400)]);
    }

    #[test]
    fn too_many_bands_merge_across_the_smallest_gaps() {
        let rows = vec![(0, 1), (3, 4), (10, 11), (11 + 1, 13), (40, 41)];
        assert_eq!(
            limit_ranges(rows.clone(), 4),
            vec![(0, 1), (3, 4), (10, 13), (40, 41)]
        );
        assert_eq!(limit_ranges(rows.clone(), 2), vec![(0, 13), (40, 41)]);
        assert_eq!(limit_ranges(rows, 1), vec![(0, 41)]);
    }

    #[test]
    fn a_full_redraw_is_one_rectangle() {
        let pages = (1920 * 1080 * 4) / 4096 + 1;
        let all: Vec<u64> = (0..pages as u64).collect();
        let map = bitmap(&all, pages / 64 + 1);
        assert_eq!(
            damage_from_dirty_pages(&map, 4096, 1920, 1080, 1920 * 4),
            vec![DamageRect {
                x: 0,
                y: 0,
                width: 1920,
                height: 1080
            }]
        );
    }
}
