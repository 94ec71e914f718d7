//! virtio-balloon (virtio 1.2, 5.5), for its statistics queue: the guest reports its free,
//! available and cached memory, which `stats` passes on. The device hands the statistics buffer
//! back every [`STATS_INTERVAL`] to ask for fresh figures. The balloon's target stays 0, so
//! the guest never gives pages up; the inflate and deflate queues are served for completeness.

use std::io::Read;
use std::os::fd::{AsRawFd, RawFd};
use std::sync::{Arc, Mutex};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use vm_memory::GuestMemoryMmap;
use vmm_sys_util::timerfd::TimerFd;

use super::worker::{DeviceThread, QueueHandler};
use super::{
    drain_queue, ActivateContext, Interrupt, Queue, QueueT, VirtioDevice, VirtioError, F_VERSION_1,
    TYPE_BALLOON,
};
use crate::devices::lock;
use crate::protocol::BalloonStats;

const QUEUE_SIZE: u16 = 64;
const INFLATE: usize = 0;
const DEFLATE: usize = 1;
const STATS: usize = 2;
const F_STATS_VQ: u64 = 1 << 1;
/// How often the guest is asked for fresh statistics.
pub const STATS_INTERVAL: Duration = Duration::from_secs(2);

const TAG_MEMFREE: u16 = 4;
const TAG_MEMTOT: u16 = 5;
const TAG_AVAIL: u16 = 6;
const TAG_CACHES: u16 = 7;

/// The latest statistics, shared with the worker's `stats`.
pub type SharedBalloonStats = Arc<Mutex<Option<BalloonStats>>>;

#[derive(Default)]
pub struct Balloon {
    stats: SharedBalloonStats,
}

impl Balloon {
    pub fn new(stats: SharedBalloonStats) -> Balloon {
        Balloon { stats }
    }
}

impl VirtioDevice for Balloon {
    fn name(&self) -> &'static str {
        "virtio-balloon"
    }
    fn device_type(&self) -> u32 {
        TYPE_BALLOON
    }
    fn pci_class(&self) -> u32 {
        0x05_00_00
    }
    fn features(&self) -> u64 {
        F_VERSION_1 | F_STATS_VQ
    }
    fn queue_max_sizes(&self) -> &[u16] {
        &[QUEUE_SIZE, QUEUE_SIZE, QUEUE_SIZE]
    }
    fn read_config(&self, _offset: u64, data: &mut [u8]) {
        // num_pages (the target) and actual are both 0.
        data.fill(0);
    }
    fn activate(&mut self, context: ActivateContext) -> Result<DeviceThread, VirtioError> {
        let mut kicks = Vec::new();
        let mut queues = Vec::new();
        for (index, queue) in context.queues.into_iter().enumerate() {
            match queue {
                Some(q) => {
                    kicks.push((index, q.kick));
                    queues.push(Some(q.queue));
                }
                None => queues.push(None),
            }
        }
        let mut timer = TimerFd::new().map_err(|e| VirtioError::Backend(e.to_string()))?;
        timer
            .reset(STATS_INTERVAL, Some(STATS_INTERVAL))
            .map_err(|e| VirtioError::Backend(e.to_string()))?;
        let handler = BalloonQueues {
            memory: context.memory,
            queues,
            interrupt: context.interrupt.clone(),
            stats: self.stats.clone(),
            held_stats_buffer: None,
            timer,
        };
        DeviceThread::spawn(self.name(), kicks, handler, context.interrupt)
    }
}

struct BalloonQueues {
    memory: GuestMemoryMmap,
    queues: Vec<Option<Queue>>,
    interrupt: Interrupt,
    stats: SharedBalloonStats,
    /// The statistics buffer the device keeps until it wants fresh figures.
    held_stats_buffer: Option<u16>,
    timer: TimerFd,
}

/// Reads the guest's (tag, value) statistics records.
pub fn parse_stats(bytes: &[u8]) -> BalloonStats {
    let mut stats = BalloonStats::default();
    for record in bytes.chunks_exact(10) {
        let tag = u16::from_le_bytes([record[0], record[1]]);
        let value = u64::from_le_bytes(record[2..10].try_into().unwrap());
        match tag {
            TAG_MEMFREE => stats.free_bytes = value,
            TAG_MEMTOT => stats.total_bytes = value,
            TAG_AVAIL => stats.available_bytes = value,
            TAG_CACHES => stats.cached_bytes = value,
            _ => {}
        }
    }
    stats.updated_unix_ms = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_millis() as u64)
        .unwrap_or(0);
    stats
}

impl BalloonQueues {
    fn receive_stats(&mut self) -> Result<(), VirtioError> {
        let Some(queue) = self.queues.get_mut(STATS).and_then(Option::as_mut) else {
            return Ok(());
        };
        while let Some(chain) = queue.pop_descriptor_chain(&self.memory) {
            let head = chain.head_index();
            let mut reader = chain
                .reader(&self.memory)
                .map_err(|err| VirtioError::Request {
                    queue: STATS,
                    reason: err.to_string(),
                })?;
            let mut bytes = vec![0u8; reader.available_bytes().min(4096)];
            reader
                .read_exact(&mut bytes)
                .map_err(|err| VirtioError::Request {
                    queue: STATS,
                    reason: err.to_string(),
                })?;
            *lock(&self.stats) = Some(parse_stats(&bytes));
            if let Some(previous) = self.held_stats_buffer.replace(head) {
                // A driver that queued a second buffer gets the first one back.
                queue
                    .add_used(&self.memory, previous, 0)
                    .map_err(|err| VirtioError::Queue {
                        queue: STATS,
                        reason: err.to_string(),
                    })?;
            }
        }
        Ok(())
    }

    /// Hands the statistics buffer back, which asks the driver for fresh figures.
    fn request_stats(&mut self) -> Result<(), VirtioError> {
        let _ = self.timer.wait();
        let (Some(queue), Some(head)) = (
            self.queues.get_mut(STATS).and_then(Option::as_mut),
            self.held_stats_buffer.take(),
        ) else {
            return Ok(());
        };
        queue
            .add_used(&self.memory, head, 0)
            .map_err(|err| VirtioError::Queue {
                queue: STATS,
                reason: err.to_string(),
            })?;
        self.interrupt.signal_queue(STATS);
        Ok(())
    }
}

impl QueueHandler for BalloonQueues {
    fn queue_kicked(&mut self, index: usize) -> Result<(), VirtioError> {
        match index {
            STATS => self.receive_stats(),
            INFLATE | DEFLATE => {
                let Some(queue) = self.queues.get_mut(index).and_then(Option::as_mut) else {
                    return Ok(());
                };
                // The target is 0, so there is nothing to do with the page numbers.
                drain_queue(queue, &self.memory, index, &self.interrupt, |_| Ok(0))
            }
            _ => Ok(()),
        }
    }

    fn backend_fds(&self) -> Vec<RawFd> {
        vec![self.timer.as_raw_fd()]
    }

    fn backend_ready(&mut self, _index: usize) -> Result<(), VirtioError> {
        self.request_stats()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn statistics_records_are_read_by_tag() {
        let mut bytes = Vec::new();
        for (tag, value) in [
            (TAG_MEMFREE, 100u64),
            (TAG_AVAIL, 200),
            (99, 7),
            (TAG_CACHES, 50),
        ] {
            bytes.extend_from_slice(&tag.to_le_bytes());
            bytes.extend_from_slice(&value.to_le_bytes());
        }
        bytes.extend_from_slice(&[1, 2, 3]); // a torn record is ignored
        let stats = parse_stats(&bytes);
        assert_eq!(
            (stats.free_bytes, stats.available_bytes, stats.cached_bytes),
            (100, 200, 50)
        );
        assert!(stats.updated_unix_ms > 0);
    }
}
