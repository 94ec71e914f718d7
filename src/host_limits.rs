//! What the host allows a VM, from hangard's capabilities: the bounds and defaults the New VM
//! assistant and the hardware editor offer for CPUs and memory.

use hangar_engine::host::capabilities::HostCapabilities;

pub const MIN_MEMORY_MIB: u64 = hangar_engine::config::MIN_MEMORY >> 20;
const MAX_MEMORY_MIB: u64 = hangar_engine::config::MAX_MEMORY >> 20;

/// The host's CPUs and memory.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct HostLimits {
    pub cpus: u32,
    pub memory: u64,
}

impl HostLimits {
    pub fn from_capabilities(caps: &HostCapabilities) -> HostLimits {
        HostLimits {
            cpus: u32::try_from(caps.host_cpus).unwrap_or(u32::MAX),
            memory: caps.host_memory_bytes,
        }
    }

    /// Memory a new VM gets unless the user says otherwise: 1 GiB, less on a small host.
    pub fn default_memory_mib(&self) -> u64 {
        ((self.memory / 4) >> 20).clamp(MIN_MEMORY_MIB, 1024)
    }

    pub fn default_vcpus(&self) -> u32 {
        self.cpus.clamp(1, 2)
    }

    pub fn max_memory_mib(&self) -> u64 {
        (self.memory >> 20).min(MAX_MEMORY_MIB)
    }

    pub fn max_vcpus(&self) -> u32 {
        self.cpus
            .clamp(1, u32::from(hangar_engine::config::MAX_VCPUS))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_host_bounds_what_is_offered() {
        let host = HostLimits {
            cpus: 2,
            memory: 8 << 30,
        };
        assert_eq!((host.max_vcpus(), host.max_memory_mib()), (2, 8192));
        assert_eq!((host.default_vcpus(), host.default_memory_mib()), (2, 1024));
        let big = HostLimits {
            cpus: 256,
            memory: 1 << 30,
        };
        assert_eq!(big.max_vcpus(), 64);
        assert_eq!(big.default_memory_mib(), 256);
    }
}
