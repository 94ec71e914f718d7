//! Split virtqueues whose descriptor table, available ring and buffers are raw fuzz input, as a
//! hostile guest could write them, drained by the engine's `serve_available` into the real
//! virtio-blk, virtio-net and entropy-style request handlers. Nothing here may panic, hang or
//! allocate without bound.
#![no_main]

use std::io::{Read, Write};
use std::sync::{Mutex, OnceLock};

use hangar_engine::devices::virtio::block::{serve_request, BlockCounters};
use hangar_engine::devices::virtio::net::{receive_into, transmit_chain, NetCounters};
use hangar_engine::devices::virtio::{serve_available, Queue, QueueT, VirtioError};
use hangar_engine::disk::{Disk, DiskSpec};
use hangar_engine::net::MAX_FRAME;
use hangar_fuzz::{guest_memory, scratch_dir, Input};
use libfuzzer_sys::fuzz_target;
use virtio_queue::mock::MockSplitQueue;
use vm_memory::{Bytes, GuestAddress};

fn disk() -> &'static Mutex<Disk> {
    static DISK: OnceLock<Mutex<Disk>> = OnceLock::new();
    DISK.get_or_init(|| {
        let path = scratch_dir("virtqueue").join("disk.raw");
        std::fs::write(&path, vec![0xa5u8; 64 * 1024]).unwrap();
        let spec = DiskSpec {
            path,
            format: None,
            readonly: false,
            serial: Some("fuzz".into()),
        };
        Mutex::new(Disk::open(&spec).unwrap())
    })
}

fuzz_target!(|data: &[u8]| {
    let mut input = Input::new(data);
    let size = 1u16 << (input.u8() % 9);
    let mode = input.u8();
    let memory = guest_memory();
    // The mock zeroes the rings' indices when it is made; the guest's bytes go in after.
    let mock = MockSplitQueue::new(&memory, size);
    let mut queue: Queue = mock.create_queue().unwrap();
    // The rest is what the guest wrote from address 0: descriptor table, rings, buffers.
    let image = input.rest();
    memory
        .write_slice(
            &image[..image.len().min(hangar_fuzz::MEMORY_SIZE)],
            GuestAddress(0),
        )
        .unwrap();
    queue.set_event_idx(mode & 0x80 != 0);
    let block_counters = BlockCounters::default();
    let net_counters = NetCounters::default();
    let frame = vec![0x5au8; usize::from(mode & 0x3f) * 1024 + usize::from(mode & 0x40)];
    for _ in 0..2 {
        let result = serve_available(&mut queue, &memory, 0, |chain| match mode % 4 {
            0 => serve_request(chain, &memory, disk(), &block_counters),
            1 => transmit_chain(chain, &memory, &net_counters, |frame| {
                assert!(frame.len() <= MAX_FRAME);
                true
            }),
            2 => receive_into(chain, &memory, &frame, &net_counters),
            _ => {
                // What virtio-rng and the balloon's statistics queue do with a chain.
                let request = |e: virtio_queue::Error| VirtioError::Request {
                    queue: 0,
                    reason: e.to_string(),
                };
                let mut reader = chain.clone().reader(&memory).map_err(request)?;
                let mut writer = chain.writer(&memory).map_err(request)?;
                let mut bytes = vec![0u8; reader.available_bytes().min(4096)];
                let _ = reader.read(&mut bytes);
                let n = writer.available_bytes().min(4096);
                writer.write_all(&vec![1u8; n]).ok();
                Ok(n as u32)
            }
        });
        if result.is_err() {
            break;
        }
    }
});
