//! virtio-blk requests with fuzzed headers, buffer layouts and payloads, served by the engine's
//! `serve_request` against a raw or a qcow2 image. Besides not crashing, a read that succeeds
//! must give the guest what the disk holds, and a write that succeeds must be on the disk.
#![no_main]

use std::path::PathBuf;
use std::sync::{Mutex, OnceLock};

use hangar_engine::devices::virtio::block::{
    serve_request, BlockCounters, SECTOR_SIZE, S_IOERR, S_OK, S_UNSUPP, T_DISCARD, T_FLUSH,
    T_GET_ID, T_IN, T_OUT, T_WRITE_ZEROES,
};
use hangar_engine::devices::virtio::serve_available;
use hangar_engine::disk::{Disk, DiskFormat, DiskSpec};
use hangar_fuzz::{guest_memory, scratch_dir, Buffer, Input, QueueBuilder};
use libfuzzer_sys::fuzz_target;
use vm_memory::{Bytes, GuestAddress};

const BASE_QCOW2: &[u8] = include_bytes!("../fixtures/base.qcow2");

fn dir() -> &'static PathBuf {
    static DIR: OnceLock<PathBuf> = OnceLock::new();
    DIR.get_or_init(|| scratch_dir("virtio-blk"))
}

/// A fresh image each run, so that every input replays the same way.
fn open_disk(kind: u8) -> Disk {
    let (name, bytes, format) = match kind % 3 {
        0 => ("disk.qcow2", BASE_QCOW2.to_vec(), Some(DiskFormat::Qcow2)),
        _ => (
            "disk.raw",
            (0..64 * 1024).map(|i| (i / 512) as u8).collect(),
            Some(DiskFormat::Raw),
        ),
    };
    let path = dir().join(name);
    std::fs::write(&path, bytes).unwrap();
    Disk::open(&DiskSpec {
        path,
        format,
        readonly: kind % 3 == 2,
        serial: Some("fuzz-serial".into()),
    })
    .unwrap()
}

struct Request {
    kind: u32,
    sector: u64,
    buffers: Vec<Buffer>,
    payload: Vec<u8>,
}

fn request(input: &mut Input) -> Request {
    let kinds = [T_IN, T_OUT, T_FLUSH, T_GET_ID, T_DISCARD, T_WRITE_ZEROES];
    let selector = input.u8();
    let kind = if usize::from(selector) < kinds.len() * 40 {
        kinds[usize::from(selector) % kinds.len()]
    } else {
        input.u32()
    };
    let shape = input.u8();
    let sector = if shape & 1 == 0 {
        u64::from(input.u8())
    } else {
        input.u64()
    };
    let mut buffers = vec![Buffer {
        len: if shape & 2 == 0 {
            16
        } else {
            u32::from(input.u8())
        },
        writable: shape & 4 != 0,
        misplaced: None,
    }];
    for _ in 0..(shape >> 4) % 5 {
        let flags = input.u8();
        let len = match flags & 3 {
            0 => 512,
            1 => u32::from(input.u16()),
            2 => 16 * u32::from(input.u8() % 4),
            _ => input.u32(),
        };
        buffers.push(Buffer {
            len,
            writable: flags & 4 != 0,
            misplaced: Some(flags >> 4),
        });
    }
    if shape & 8 == 0 {
        buffers.push(Buffer {
            len: 1,
            writable: true,
            misplaced: None,
        });
    }
    let n = usize::from(input.u8()) * 16;
    let payload = input.bytes(n).to_vec();
    Request {
        kind,
        sector,
        buffers,
        payload,
    }
}

fuzz_target!(|data: &[u8]| {
    let mut input = Input::new(data);
    let disk_kind = input.u8();
    let layout = input.u8();
    let memory = guest_memory();
    let mut builder = QueueBuilder::new(&memory, 256, layout & 1 != 0);
    let mut requests = Vec::new();
    for _ in 0..1 + (layout >> 1) % 4 {
        let req = request(&mut input);
        if !builder.chain(&req.buffers) {
            break;
        }
        requests.push(req);
    }
    let addresses = builder.addresses.clone();
    // The header goes in the first buffer; the payload fills the rest in order.
    for (req, addrs) in requests.iter().zip(&addresses) {
        let mut header = [0u8; 16];
        header[0..4].copy_from_slice(&req.kind.to_le_bytes());
        header[8..16].copy_from_slice(&req.sector.to_le_bytes());
        let _ = memory.write_slice(&header, GuestAddress(addrs[0]));
        let mut payload = &req.payload[..];
        for (buffer, &addr) in req.buffers.iter().zip(addrs).skip(1) {
            let n = payload.len().min(buffer.len as usize);
            let _ = memory.write_slice(&payload[..n], GuestAddress(addr));
            payload = &payload[n..];
        }
    }
    let Some(mut queue) = builder.build(layout & 0x80 != 0) else {
        return;
    };
    let disk = Mutex::new(open_disk(disk_kind));
    let counters = BlockCounters::default();
    let mut served = 0;
    let result = serve_available(&mut queue, &memory, 0, |chain| {
        let written = serve_request(chain, &memory, &disk, &counters);
        served += 1;
        written
    });
    if result.is_err() {
        return;
    }
    assert_eq!(served, requests.len(), "every request is served once");
    // A misplaced buffer may overlap the others; then only "no panic, no hang" is checked.
    if requests
        .iter()
        .flat_map(|r| &r.buffers)
        .any(|b| b.misplaced.unwrap_or(0) >= 12)
    {
        return;
    }
    let disk = disk.lock().unwrap();
    for (req, addrs) in requests.iter().zip(&addresses) {
        // The status is the last byte of the chain's writable part: of the last buffer when
        // the driver made it writable, as drivers do.
        let (last, &last_addr) = (req.buffers.last().unwrap(), addrs.last().unwrap());
        if !last.writable || last.len == 0 || last.misplaced.unwrap_or(0) >= 12 {
            continue;
        }
        let status_addr = last_addr + u64::from(last.len) - 1;
        let status: u8 = memory.read_obj(GuestAddress(status_addr)).unwrap();
        assert!(
            [S_OK, S_IOERR, S_UNSUPP].contains(&status),
            "status {status} for {:?}",
            req.kind
        );
        // The oracle covers the plain layout: header, one data buffer, status.
        let plain = req.buffers.len() == 3
            && req.buffers[0].len == 16
            && !req.buffers[0].writable
            && last.len == 1
            && last.writable
            && req.buffers[1].misplaced.unwrap_or(0) < 12;
        if status != S_OK || !plain {
            continue;
        }
        let data = &req.buffers[1];
        // Only used for reads and writes that succeeded, whose range lies inside the disk.
        let offset = req.sector.wrapping_mul(SECTOR_SIZE);
        let mut on_disk = vec![0u8; data.len as usize];
        match req.kind {
            T_IN if data.writable => {
                disk.read_at(&mut on_disk, offset).unwrap();
                let mut in_guest = vec![0u8; data.len as usize];
                memory
                    .read_slice(&mut in_guest, GuestAddress(addrs[1]))
                    .unwrap();
                // A later write in the same batch may have changed the disk since.
                if requests.len() == 1 {
                    assert_eq!(in_guest, on_disk, "a read gives the guest the disk's bytes");
                }
            }
            T_OUT if !data.writable && requests.len() == 1 => {
                disk.read_at(&mut on_disk, offset).unwrap();
                let mut sent = vec![0u8; data.len as usize];
                memory
                    .read_slice(&mut sent, GuestAddress(addrs[1]))
                    .unwrap();
                assert_eq!(on_disk, sent, "a write is on the disk");
            }
            _ => {}
        }
    }
});
