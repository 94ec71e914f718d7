//! Screenshots: the framebuffer as a PNG file, written atomically (temporary file, fsync,
//! rename), so a reader never sees half an image.

use std::fs::File;
use std::io::Write;
use std::path::{Path, PathBuf};

/// Errors writing a screenshot. Each names the path and what to do.
#[derive(Debug, thiserror::Error)]
pub enum ScreenshotError {
    #[error("screenshot path {0:?} is not absolute; give a full path such as /tmp/screen.png")]
    Relative(PathBuf),
    #[error("screenshot path {0:?} names no file")]
    NoFileName(PathBuf),
    #[error("cannot write {path}: {source}; check that the directory exists and is writable")]
    Write {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("cannot encode the PNG for {path}: {reason}")]
    Encode { path: PathBuf, reason: String },
}

/// Turns x8r8g8b8 pixels (little-endian: blue, green, red, unused) into packed RGB rows.
pub fn xrgb_to_rgb(pixels: &[u8], width: u32, height: u32, stride: u32) -> Vec<u8> {
    let mut rgb = Vec::with_capacity(width as usize * height as usize * 3);
    for row in pixels.chunks(stride as usize).take(height as usize) {
        for pixel in row[..width as usize * 4].chunks_exact(4) {
            rgb.extend_from_slice(&[pixel[2], pixel[1], pixel[0]]);
        }
    }
    rgb
}

/// Writes `pixels` (x8r8g8b8 rows of `stride` bytes) to `path` as an RGB PNG.
pub fn write_png(
    path: &Path,
    pixels: &[u8],
    width: u32,
    height: u32,
    stride: u32,
) -> Result<(), ScreenshotError> {
    if !path.is_absolute() {
        return Err(ScreenshotError::Relative(path.to_path_buf()));
    }
    let Some(name) = path.file_name() else {
        return Err(ScreenshotError::NoFileName(path.to_path_buf()));
    };
    let mut tmp_name = std::ffi::OsString::from(".");
    tmp_name.push(name);
    tmp_name.push(format!(".tmp{}", std::process::id()));
    let tmp = path.with_file_name(tmp_name);
    let write_err = |source| ScreenshotError::Write {
        path: path.to_path_buf(),
        source,
    };
    let file = File::create(&tmp).map_err(write_err)?;
    let result = encode(file, path, pixels, width, height, stride).and_then(|file| {
        file.sync_all().map_err(write_err)?;
        std::fs::rename(&tmp, path).map_err(write_err)
    });
    if result.is_err() {
        let _ = std::fs::remove_file(&tmp);
    }
    result
}

fn encode(
    mut file: File,
    path: &Path,
    pixels: &[u8],
    width: u32,
    height: u32,
    stride: u32,
) -> Result<File, ScreenshotError> {
    let encode_err = |err: png::EncodingError| ScreenshotError::Encode {
        path: path.to_path_buf(),
        reason: err.to_string(),
    };
    let mut png_bytes = Vec::new();
    let mut encoder = png::Encoder::new(&mut png_bytes, width, height);
    encoder.set_color(png::ColorType::Rgb);
    encoder.set_depth(png::BitDepth::Eight);
    // Screens are mostly flat areas; fast compression keeps a 4K screenshot quick.
    encoder.set_compression(png::Compression::Fast);
    let mut writer = encoder.write_header().map_err(encode_err)?;
    writer
        .write_image_data(&xrgb_to_rgb(pixels, width, height, stride))
        .map_err(encode_err)?;
    writer.finish().map_err(encode_err)?;
    file.write_all(&png_bytes)
        .map_err(|source| ScreenshotError::Write {
            path: path.to_path_buf(),
            source,
        })?;
    Ok(file)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn pixels_become_rgb_and_padding_is_skipped() {
        // 2x2 pixels with 4 bytes of padding per row.
        let pixels = [
            1, 2, 3, 0, 4, 5, 6, 0, 9, 9, 9, 9, //
            7, 8, 9, 0, 10, 11, 12, 0, 9, 9, 9, 9,
        ];
        assert_eq!(
            xrgb_to_rgb(&pixels, 2, 2, 12),
            vec![3, 2, 1, 6, 5, 4, 9, 8, 7, 12, 11, 10]
        );
    }

    #[test]
    fn a_png_round_trips_and_bad_paths_are_refused() {
        let dir = std::env::temp_dir().join(format!("hangar-shot-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let path = dir.join("s.png");
        let pixels: Vec<u8> = (0..4 * 4 * 3).map(|i| i as u8).collect();
        write_png(&path, &pixels, 4, 3, 16).unwrap();
        let decoder = png::Decoder::new(File::open(&path).unwrap());
        let mut reader = decoder.read_info().unwrap();
        let mut out = vec![0; reader.output_buffer_size()];
        let info = reader.next_frame(&mut out).unwrap();
        assert_eq!((info.width, info.height), (4, 3));
        assert_eq!(&out[..3], &[2, 1, 0]);
        assert_eq!(
            std::fs::read_dir(&dir).unwrap().count(),
            1,
            "no temp file left"
        );

        let err = write_png(Path::new("rel.png"), &pixels, 4, 3, 16).unwrap_err();
        assert!(err.to_string().contains("not absolute"), "{err}");
        let err = write_png(&dir.join("missing/s.png"), &pixels, 4, 3, 16).unwrap_err();
        assert!(err.to_string().contains("missing/s.png"), "{err}");
        std::fs::remove_dir_all(&dir).unwrap();
    }
}
