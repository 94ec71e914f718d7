//! virtio-net on both paths, with fuzzed buffer layouts, headers and frames: the guest's
//! transmit chains through `transmit_chain`, frames into its receive buffers through
//! `receive_into`, and passt's length-framed byte stream through `FrameReader`, cut into
//! fuzzed pieces. A frame never exceeds `MAX_FRAME`, and what arrives is what was sent.
#![no_main]

use hangar_engine::devices::virtio::net::{receive_into, transmit_chain, NetCounters, HEADER_LEN};
use hangar_engine::devices::virtio::{serve_available, QueueT};
use hangar_engine::net::{stream_frame, FrameReader, MAX_FRAME};
use hangar_fuzz::{guest_memory, Buffer, Input, QueueBuilder};
use libfuzzer_sys::fuzz_target;
use vm_memory::{Bytes, GuestAddress};

fn buffers(input: &mut Input, writable: bool) -> Vec<Buffer> {
    let count = 1 + input.u8() % 4;
    (0..count)
        .map(|_| {
            let flags = input.u8();
            Buffer {
                len: match flags & 3 {
                    0 => u32::from(input.u8()),
                    1 => u32::from(input.u16()),
                    2 => HEADER_LEN as u32,
                    _ => input.u32() % (2 * MAX_FRAME as u32),
                },
                writable: if flags & 4 == 0 { writable } else { !writable },
                misplaced: Some(flags >> 4),
            }
        })
        .collect()
}

fn transmit(input: &mut Input) {
    let memory = guest_memory();
    let layout = input.u8();
    let mut builder = QueueBuilder::new(&memory, 256, layout & 1 != 0);
    for _ in 0..1 + (layout >> 1) % 4 {
        let chain = buffers(input, false);
        if !builder.chain(&chain) {
            break;
        }
        for (buffer, &addr) in chain.iter().zip(builder.addresses.last().unwrap()) {
            let bytes = input.bytes(buffer.len as usize);
            let _ = memory.write_slice(bytes, GuestAddress(addr));
        }
    }
    let Some(mut queue) = builder.build(layout & 0x80 != 0) else {
        return;
    };
    let counters = NetCounters::default();
    let mut sent = Vec::new();
    let _ = serve_available(&mut queue, &memory, 1, |chain| {
        transmit_chain(chain, &memory, &counters, |frame| {
            assert!(frame.len() <= MAX_FRAME, "a {}-byte frame", frame.len());
            sent.push(frame.len());
            layout & 0x40 == 0
        })
    });
    let stats = counters.snapshot();
    // Every frame handed to the back-end is counted, as sent or as dropped.
    assert!(stats.tx_packets + stats.tx_dropped >= sent.len() as u64);
}

fn receive(input: &mut Input) {
    let memory = guest_memory();
    let layout = input.u8();
    let mut builder = QueueBuilder::new(&memory, 256, layout & 1 != 0);
    let chain = buffers(input, true);
    if !builder.chain(&chain) {
        return;
    }
    let Some(mut queue) = builder.build(layout & 0x80 != 0) else {
        return;
    };
    let len = usize::from(input.u16()) + usize::from(layout & 2) * 32768;
    let frame: Vec<u8> = (0..len).map(|i| i as u8).collect();
    let counters = NetCounters::default();
    let Some(chain) = queue.pop_descriptor_chain(&memory) else {
        return;
    };
    if let Ok(written) = receive_into(chain, &memory, &frame, &counters) {
        assert!(frame.len() <= MAX_FRAME || written == 0);
        if written > 0 {
            assert_eq!(written as usize, HEADER_LEN + frame.len());
        }
    }
}

fn stream(input: &mut Input) {
    let mut reader = FrameReader::default();
    let mut echoed = Vec::new();
    while !input.is_empty() {
        let n = usize::from(input.u8()) + 1;
        let piece = input.bytes(n);
        reader.push(piece);
        loop {
            match reader.next_frame() {
                Ok(Some(frame)) => {
                    assert!(frame.len() <= MAX_FRAME);
                    echoed.push(frame);
                }
                Ok(None) => break,
                Err(_) => return,
            }
        }
    }
    // Frames written the way the worker writes them read back the same.
    let mut again = FrameReader::default();
    for frame in &echoed {
        again.push(&stream_frame(frame));
    }
    for frame in &echoed {
        assert_eq!(again.next_frame().unwrap().as_ref(), Some(frame));
    }
    assert_eq!(again.next_frame().unwrap(), None);
}

fuzz_target!(|data: &[u8]| {
    let mut input = Input::new(data);
    match input.u8() % 3 {
        0 => transmit(&mut input),
        1 => receive(&mut input),
        _ => stream(&mut input),
    }
});
