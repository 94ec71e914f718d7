//! Image files from fuzz input opened through the engine's disk layer, as `--disk` opens them:
//! format detection, the qcow2 header checks, the backing-chain walk (a raw and a qcow2 base
//! sit beside the image, and the image may name itself), then imago's L1/L2 and refcount
//! handling through reads, writes, write-zeroes, discard and flush. A corrupt image must be an
//! error naming the file, never a panic, a hang or an unbounded allocation; data written to an
//! image that opened must read back.
#![no_main]

use std::path::PathBuf;
use std::sync::OnceLock;

use hangar_engine::disk::{Disk, DiskFormat, DiskSpec};
use libfuzzer_sys::fuzz_target;

const BASE_QCOW2: &[u8] = include_bytes!("../fixtures/base.qcow2");

fn dir() -> &'static PathBuf {
    static DIR: OnceLock<PathBuf> = OnceLock::new();
    DIR.get_or_init(|| {
        let dir = hangar_fuzz::scratch_dir("qcow2");
        std::fs::write(dir.join("base.raw"), vec![0x42u8; 64 * 1024]).unwrap();
        std::fs::write(dir.join("base.qcow2"), BASE_QCOW2).unwrap();
        dir
    })
}

fuzz_target!(|data: &[u8]| {
    // The last byte picks how the image is attached; the rest is the file.
    let Some((&how, image)) = data.split_last() else {
        return;
    };
    let path = dir().join("image.qcow2");
    std::fs::write(&path, image).unwrap();
    let spec = DiskSpec {
        path: path.clone(),
        format: match how % 3 {
            0 => None,
            1 => Some(DiskFormat::Qcow2),
            _ => Some(DiskFormat::Raw),
        },
        readonly: how & 4 != 0,
        serial: None,
    };
    let Ok(mut disk) = Disk::open(&spec) else {
        return;
    };
    let size = disk.size();
    let mut buffer = vec![0u8; 4096];
    let offsets = [
        0,
        size / 2,
        size.saturating_sub(4096),
        size.saturating_sub(1),
    ];
    for &offset in &offsets {
        let len = (size - offset.min(size)).min(4096) as usize;
        let _ = disk.read_at(&mut buffer[..len], offset);
    }
    if spec.readonly {
        return;
    }
    let pattern: Vec<u8> = (0..1536).map(|i| (i * 7 + 3) as u8).collect();
    for &offset in &offsets[..3] {
        let len = (size - offset.min(size)).min(pattern.len() as u64) as usize;
        if disk.write_at(&pattern[..len], offset).is_ok() {
            let mut back = vec![0u8; len];
            if disk.read_at(&mut back, offset).is_ok() {
                assert_eq!(back, pattern[..len], "written data reads back at {offset}");
            }
        }
    }
    let _ = disk.write_zeroes(0, size.min(8192));
    let _ = disk.discard(size / 2, size.min(65536) / 2);
    let _ = disk.flush();
    let _ = disk.read_at(&mut buffer[..size.min(4096) as usize], 0);
});
