//! What a VM has attached besides RAM and built-in devices: its disks (and network back-ends),
//! opened once per worker and kept across guest resets, so a reboot never drops a lock or
//! reopens an image.

use std::sync::{Arc, Mutex};

use crate::config::VmConfig;
use crate::devices::virtio::block::BlockCounters;
use crate::disk::{Disk, DiskError};
use crate::protocol::DiskStats;

/// An open disk and its counters.
pub struct AttachedDisk {
    pub disk: Arc<Mutex<Disk>>,
    pub counters: Arc<BlockCounters>,
}

#[derive(Default)]
pub struct Attachments {
    pub disks: Vec<AttachedDisk>,
}

impl Attachments {
    /// Opens and locks every disk of `config`, or names the first that cannot be used.
    pub fn open(config: &VmConfig) -> Result<Attachments, DiskError> {
        let mut disks = Vec::new();
        for spec in &config.disks {
            disks.push(AttachedDisk {
                disk: Arc::new(Mutex::new(Disk::open(spec)?)),
                counters: Arc::default(),
            });
        }
        Ok(Attachments { disks })
    }

    pub fn disk_stats(&self) -> Vec<DiskStats> {
        self.disks
            .iter()
            .map(|d| d.counters.snapshot(&crate::devices::lock(&d.disk).path))
            .collect()
    }
}
