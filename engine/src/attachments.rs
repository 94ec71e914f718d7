//! What a VM has attached besides RAM and built-in devices: its disks and network back-ends,
//! opened once per worker and kept across guest resets, so a reboot never drops a lock or
//! reopens an image.

use std::sync::{Arc, Mutex};

use crate::config::VmConfig;
use crate::devices::virtio::block::BlockCounters;
use crate::devices::virtio::net::NetCounters;
use crate::disk::{Disk, DiskError};
use crate::net::{NetBackend, NetError};
use crate::protocol::{DiskStats, NetStats};

#[derive(Debug, thiserror::Error)]
pub enum AttachError {
    #[error(transparent)]
    Disk(#[from] DiskError),
    #[error(transparent)]
    Net(#[from] NetError),
}

/// An open disk and its counters.
pub struct AttachedDisk {
    pub disk: Arc<Mutex<Disk>>,
    pub counters: Arc<BlockCounters>,
}

/// An open network back-end, the guest's MAC address, and the NIC's counters.
pub struct AttachedNic {
    pub backend: Arc<Mutex<NetBackend>>,
    pub mac: [u8; 6],
    pub counters: Arc<NetCounters>,
}

#[derive(Default)]
pub struct Attachments {
    pub disks: Vec<AttachedDisk>,
    pub nics: Vec<AttachedNic>,
}

impl Attachments {
    /// Opens and locks every disk of `config` and connects every NIC, or names the first that
    /// cannot be used.
    pub fn open(config: &VmConfig) -> Result<Attachments, AttachError> {
        let mut disks = Vec::new();
        for spec in &config.disks {
            disks.push(AttachedDisk {
                disk: Arc::new(Mutex::new(Disk::open(spec)?)),
                counters: Arc::default(),
            });
        }
        let mut nics = Vec::new();
        for (index, spec) in config.nics.iter().enumerate() {
            nics.push(AttachedNic {
                backend: Arc::new(Mutex::new(NetBackend::open(spec, index)?)),
                mac: spec.mac.unwrap_or_else(|| default_mac(index)),
                counters: Arc::default(),
            });
        }
        Ok(Attachments { disks, nics })
    }

    /// What the sandbox must leave reachable for these attachments: the images (read-only ones
    /// and backing files for reading), and the private directories of worker-started passts.
    pub fn sandbox_paths(&self, paths: &mut crate::sandbox::SandboxPaths) {
        for attached in &self.disks {
            let disk = crate::devices::lock(&attached.disk);
            let chain = crate::disk::backing_chain(&disk.path).unwrap_or_default();
            if disk.readonly {
                paths.read.push(disk.path.clone());
            } else {
                paths.read_write.push(disk.path.clone());
            }
            paths
                .read
                .extend(chain.into_iter().filter(|p| *p != disk.path));
        }
        for nic in &self.nics {
            if let Some(dir) = crate::devices::lock(&nic.backend).private_dir() {
                paths.read_write.push(dir.to_path_buf());
            }
        }
    }

    pub fn net_stats(&self) -> Vec<NetStats> {
        self.nics.iter().map(|n| n.counters.snapshot()).collect()
    }

    pub fn disk_stats(&self) -> Vec<DiskStats> {
        self.disks
            .iter()
            .map(|d| d.counters.snapshot(&crate::devices::lock(&d.disk).path))
            .collect()
    }
}

/// A locally administered MAC address, different per NIC and per worker.
fn default_mac(index: usize) -> [u8; 6] {
    let pid = std::process::id().to_be_bytes();
    [0x02, 0x48, pid[2], pid[3], 0x00, index as u8]
}
