//! Tile bookkeeping for the console: the framebuffer is cut into 128×128 tiles, each its own
//! texture, so that a damage rectangle costs only the tiles it touches (as libmks does on GTK
//! without texture update regions).

use crate::widgets::display::stream::DamageRect;

pub const TILE_SIZE: u32 = 128;

/// The tile grid of a framebuffer.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct TileGrid {
    pub width: u32,
    pub height: u32,
}

/// One tile: its place in the grid and the framebuffer pixels it covers.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Tile {
    pub column: u32,
    pub row: u32,
    pub x: u32,
    pub y: u32,
    pub width: u32,
    pub height: u32,
}

impl TileGrid {
    pub fn new(width: u32, height: u32) -> TileGrid {
        TileGrid { width, height }
    }

    pub fn columns(&self) -> u32 {
        self.width.div_ceil(TILE_SIZE)
    }

    pub fn rows(&self) -> u32 {
        self.height.div_ceil(TILE_SIZE)
    }

    pub fn len(&self) -> usize {
        (self.columns() * self.rows()) as usize
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// Index of a tile in row-major order.
    pub fn index(&self, column: u32, row: u32) -> usize {
        (row * self.columns() + column) as usize
    }

    pub fn tile(&self, column: u32, row: u32) -> Tile {
        let x = column * TILE_SIZE;
        let y = row * TILE_SIZE;
        Tile {
            column,
            row,
            x,
            y,
            width: TILE_SIZE.min(self.width - x),
            height: TILE_SIZE.min(self.height - y),
        }
    }

    pub fn all(&self) -> impl Iterator<Item = Tile> + '_ {
        (0..self.rows())
            .flat_map(move |row| (0..self.columns()).map(move |col| self.tile(col, row)))
    }

    /// The tiles a damage rectangle touches, clipped to the framebuffer; none for a rectangle
    /// that is empty or lies outside it (a worker's mistake must not cost a panic).
    pub fn touched(&self, rect: &DamageRect) -> impl Iterator<Item = Tile> + '_ {
        let x_end = rect.x.saturating_add(rect.width).min(self.width);
        let y_end = rect.y.saturating_add(rect.height).min(self.height);
        let (cols, rows) = if rect.x >= x_end || rect.y >= y_end {
            (0..0, 0..0)
        } else {
            (
                rect.x / TILE_SIZE..x_end.div_ceil(TILE_SIZE),
                rect.y / TILE_SIZE..y_end.div_ceil(TILE_SIZE),
            )
        };
        rows.flat_map(move |row| cols.clone().map(move |col| self.tile(col, row)))
    }
}

/// Copies one tile out of an x8r8g8b8 framebuffer as opaque B8G8R8 (GTK 4.8 has no X8 memory
/// format, and the X byte may be 0).
pub fn tile_bgr(frame: &[u8], stride: usize, tile: &Tile) -> Vec<u8> {
    let mut out = Vec::with_capacity((tile.width * tile.height * 3) as usize);
    for y in tile.y..tile.y + tile.height {
        let start = y as usize * stride + tile.x as usize * 4;
        let row = &frame[start..start + tile.width as usize * 4];
        for pixel in row.chunks_exact(4) {
            out.extend_from_slice(&pixel[..3]);
        }
    }
    out
}

/// Copies one tile out of an x8r8g8b8 framebuffer as opaque premultiplied B8G8R8A8: the X
/// byte (which may be 0) becomes 0xff. That is cairo's own ARGB32 layout on little-endian and
/// GL's BGRA, so GTK takes the texture without converting it again, as it must for 3-byte
/// pixels.
pub fn tile_bgra(frame: &[u8], stride: usize, tile: &Tile) -> Vec<u8> {
    let row_bytes = tile.width as usize * 4;
    let mut out = vec![0u8; row_bytes * tile.height as usize];
    for (y, row) in out.chunks_exact_mut(row_bytes).enumerate() {
        let start = (tile.y as usize + y) * stride + tile.x as usize * 4;
        let source = &frame[start..start + row_bytes];
        for (to, from) in row.chunks_exact_mut(4).zip(source.chunks_exact(4)) {
            let pixel = u32::from_le_bytes([from[0], from[1], from[2], from[3]]) | 0xff00_0000;
            to.copy_from_slice(&pixel.to_le_bytes());
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    fn rect(x: u32, y: u32, width: u32, height: u32) -> DamageRect {
        DamageRect {
            x,
            y,
            width,
            height,
        }
    }

    #[test]
    fn grid_covers_partial_edge_tiles() {
        let grid = TileGrid::new(640, 480);
        assert_eq!((grid.columns(), grid.rows()), (5, 4));
        let last = grid.tile(4, 3);
        assert_eq!(
            (last.x, last.y, last.width, last.height),
            (512, 384, 128, 96)
        );
        assert_eq!(grid.all().count(), 20);
        let odd = TileGrid::new(130, 1);
        assert_eq!(odd.tile(1, 0).width, 2);
    }

    #[test]
    fn damage_touches_only_its_tiles() {
        let grid = TileGrid::new(640, 480);
        let one: Vec<_> = grid.touched(&rect(10, 10, 5, 5)).collect();
        assert_eq!(one.len(), 1);
        assert_eq!((one[0].column, one[0].row), (0, 0));
        // Straddling the corner of four tiles.
        let four: Vec<_> = grid
            .touched(&rect(127, 127, 2, 2))
            .map(|t| (t.column, t.row))
            .collect();
        assert_eq!(four, [(0, 0), (1, 0), (0, 1), (1, 1)]);
        // Exactly one tile wide, aligned: no neighbour.
        assert_eq!(grid.touched(&rect(128, 0, 128, 128)).count(), 1);
        assert_eq!(grid.touched(&rect(0, 0, 640, 480)).count(), 20);
    }

    #[test]
    fn bad_damage_is_clipped_or_ignored() {
        let grid = TileGrid::new(640, 480);
        assert_eq!(grid.touched(&rect(0, 0, 0, 10)).count(), 0);
        assert_eq!(grid.touched(&rect(700, 0, 10, 10)).count(), 0);
        assert_eq!(grid.touched(&rect(600, 450, u32::MAX, u32::MAX)).count(), 1);
    }

    #[test]
    fn tiles_convert_to_opaque_bgr() {
        // 2×1 framebuffer, stride with padding; X bytes are 0.
        let frame = [1, 2, 3, 0, 4, 5, 6, 0, 99, 99];
        let tile = TileGrid::new(2, 1).tile(0, 0);
        assert_eq!(tile_bgr(&frame, 10, &tile), [1, 2, 3, 4, 5, 6]);
    }

    #[test]
    fn tiles_convert_to_opaque_bgra() {
        // 1×2 tile at x=1 of a 2×2 framebuffer, stride with padding; X bytes 0 and 7.
        let frame = [
            9, 9, 9, 9, 1, 2, 3, 0, 99, 99, 9, 9, 9, 9, 4, 5, 6, 7, 99, 99,
        ];
        let tile = Tile {
            column: 0,
            row: 0,
            x: 1,
            y: 0,
            width: 1,
            height: 2,
        };
        assert_eq!(tile_bgra(&frame, 10, &tile), [1, 2, 3, 255, 4, 5, 6, 255]);
    }
}
