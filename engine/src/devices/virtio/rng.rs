//! virtio-rng: fills the guest's buffers from the host's getrandom(2), so a guest has entropy
//! early in boot.

use std::io::Write;

use vm_memory::GuestMemoryMmap;

use super::worker::{DeviceThread, QueueHandler};
use super::{drain_queue, ActivateContext, Interrupt, VirtioDevice, VirtioError, F_VERSION_1};
use super::{Queue, TYPE_RNG};

const QUEUE_SIZE: u16 = 64;
/// At most this much entropy per request, whatever the guest asks for.
const MAX_REQUEST: usize = 64 * 1024;

#[derive(Default)]
pub struct Rng;

impl VirtioDevice for Rng {
    fn name(&self) -> &'static str {
        "virtio-rng"
    }
    fn device_type(&self) -> u32 {
        TYPE_RNG
    }
    fn pci_class(&self) -> u32 {
        0x00_ff_00
    }
    fn features(&self) -> u64 {
        F_VERSION_1
    }
    fn queue_max_sizes(&self) -> &[u16] {
        &[QUEUE_SIZE]
    }
    fn read_config(&self, _offset: u64, data: &mut [u8]) {
        data.fill(0);
    }
    fn activate(&mut self, mut context: ActivateContext) -> Result<DeviceThread, VirtioError> {
        let Some(queue) = context.queues.first_mut().and_then(Option::take) else {
            return Err(VirtioError::Backend(
                "the driver did not enable the queue".into(),
            ));
        };
        let handler = RngQueue {
            memory: context.memory,
            queue: queue.queue,
            interrupt: context.interrupt.clone(),
        };
        DeviceThread::spawn(
            self.name(),
            vec![(0, queue.kick)],
            handler,
            context.interrupt,
        )
    }
}

struct RngQueue {
    memory: GuestMemoryMmap,
    queue: Queue,
    interrupt: Interrupt,
}

fn fill_random(buffer: &mut [u8]) -> std::io::Result<()> {
    let mut filled = 0;
    while filled < buffer.len() {
        let rest = &mut buffer[filled..];
        // SAFETY: `rest` is a valid, writable buffer of the length passed.
        let n = unsafe { libc::getrandom(rest.as_mut_ptr().cast(), rest.len(), 0) };
        if n < 0 {
            let err = std::io::Error::last_os_error();
            if err.kind() != std::io::ErrorKind::Interrupted {
                return Err(err);
            }
        } else {
            filled += n as usize;
        }
    }
    Ok(())
}

impl QueueHandler for RngQueue {
    fn queue_kicked(&mut self, index: usize) -> Result<(), VirtioError> {
        drain_queue(
            &mut self.queue,
            &self.memory,
            index,
            &self.interrupt,
            |chain| {
                let mut writer =
                    chain
                        .writer(&self.memory)
                        .map_err(|err| VirtioError::Request {
                            queue: index,
                            reason: err.to_string(),
                        })?;
                let mut entropy = vec![0u8; writer.available_bytes().min(MAX_REQUEST)];
                fill_random(&mut entropy).map_err(|err| VirtioError::Backend(err.to_string()))?;
                writer
                    .write_all(&entropy)
                    .map_err(|err| VirtioError::Request {
                        queue: index,
                        reason: err.to_string(),
                    })?;
                Ok(entropy.len() as u32)
            },
        )
    }
}
