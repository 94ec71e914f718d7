//! CPUID for one vCPU: what KVM supports, with the topology of this machine (one socket, one
//! core per vCPU, no SMT) and the hypervisor bit.

use kvm_bindings::kvm_cpuid_entry2;

/// CPUID vendor "AuthenticAMD", as EBX of leaf 0.
const VENDOR_AMD_EBX: u32 = 0x6874_7541;
/// Leaf 1 ECX: running under a hypervisor.
const ECX_HYPERVISOR: u32 = 1 << 31;
/// Leaf 1 ECX: the local APIC timer has TSC-deadline mode. KVM emulates it but leaves it out
/// of KVM_GET_SUPPORTED_CPUID; without it Linux falls back to the PIT for timer events.
const ECX_TSC_DEADLINE: u32 = 1 << 24;
/// Leaf 1 EDX: more than one logical processor per package.
const EDX_HTT: u32 = 1 << 28;
/// Topology level types in leaves 0xB and 0x1F.
const LEVEL_TYPE_SMT: u32 = 1;
const LEVEL_TYPE_CORE: u32 = 2;

/// Bits of an APIC id that number the cores of a package with `vcpus` cores.
pub fn core_id_bits(vcpus: u8) -> u32 {
    u32::from(vcpus.max(1)).next_power_of_two().trailing_zeros()
}

/// What the host offers beyond KVM_GET_SUPPORTED_CPUID.
#[derive(Clone, Copy, Debug, Default)]
pub struct HostCpu {
    /// KVM can emulate the TSC-deadline timer.
    pub tsc_deadline: bool,
    /// The host CPU's brand string, leaves 0x80000002..=0x80000004 (EAX, EBX, ECX, EDX each).
    pub brand: Option<[[u32; 4]; 3]>,
}

impl HostCpu {
    /// Reads the host's brand string with CPUID.
    pub fn brand_from_host() -> Option<[[u32; 4]; 3]> {
        use std::arch::x86_64::__cpuid;
        // CPUID is unprivileged and the leaves below exist if the maximum extended leaf says so.
        let max_extended = __cpuid(0x8000_0000).eax;
        if max_extended < 0x8000_0004 {
            return None;
        }
        let mut brand = [[0; 4]; 3];
        for (index, leaf) in (0x8000_0002u32..=0x8000_0004).enumerate() {
            let regs = __cpuid(leaf);
            brand[index] = [regs.eax, regs.ebx, regs.ecx, regs.edx];
        }
        Some(brand)
    }
}

/// Rewrites the supported CPUID entries for vCPU `apic_id` of `vcpus`.
pub fn filter_cpuid(entries: &mut [kvm_cpuid_entry2], apic_id: u8, vcpus: u8, host: &HostCpu) {
    let is_amd = entries
        .iter()
        .any(|e| e.function == 0 && e.ebx == VENDOR_AMD_EBX);
    let count = u32::from(vcpus);
    let id = u32::from(apic_id);
    let shift = core_id_bits(vcpus);
    for entry in entries.iter_mut() {
        match entry.function {
            0x1 => {
                entry.ebx = (entry.ebx & 0x0000_ffff) | (id << 24) | ((count & 0xff) << 16);
                entry.ecx |= ECX_HYPERVISOR;
                if host.tsc_deadline {
                    entry.ecx |= ECX_TSC_DEADLINE;
                }
                if vcpus > 1 {
                    entry.edx |= EDX_HTT;
                } else {
                    entry.edx &= !EDX_HTT;
                }
            }
            0x4 => {
                // Deterministic cache parameters: cores per package and sharing per level.
                let level = (entry.eax >> 5) & 0x7;
                let sharing = if level >= 3 { count - 1 } else { 0 };
                entry.eax =
                    (entry.eax & 0x3fff) | ((count - 1).min(63) << 26) | (sharing.min(0xfff) << 14);
            }
            0xb | 0x1f => {
                let (eax, ebx, kind) = match entry.index {
                    0 => (0, 1, LEVEL_TYPE_SMT),
                    1 => (shift, count, LEVEL_TYPE_CORE),
                    _ => (0, 0, 0),
                };
                entry.eax = eax;
                entry.ebx = ebx;
                entry.ecx = (kind << 8) | (entry.index & 0xff);
                entry.edx = id;
            }
            0x8000_0008 if is_amd => {
                entry.ecx = (entry.ecx & !0xf0ff) | (shift << 12) | ((count - 1) & 0xff);
            }
            0x8000_001e if is_amd => {
                entry.eax = id;
                entry.ebx = id & 0xff;
                entry.ecx = 0;
            }
            0x8000_0002..=0x8000_0004 => {
                if let Some(brand) = host.brand {
                    let [eax, ebx, ecx, edx] = brand[(entry.function - 0x8000_0002) as usize];
                    (entry.eax, entry.ebx, entry.ecx, entry.edx) = (eax, ebx, ecx, edx);
                }
            }
            _ => {}
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn entry(function: u32, index: u32) -> kvm_cpuid_entry2 {
        kvm_cpuid_entry2 {
            function,
            index,
            ..Default::default()
        }
    }

    #[test]
    fn each_vcpu_gets_its_apic_id_and_the_count() {
        let mut entries = vec![entry(0, 0), entry(1, 0), entry(0xb, 0), entry(0xb, 1)];
        entries[1].ebx = 0xaabb_0800;
        filter_cpuid(&mut entries, 3, 4, &HostCpu::default());
        assert_eq!(entries[1].ebx >> 24, 3);
        assert_eq!((entries[1].ebx >> 16) & 0xff, 4);
        assert_eq!(entries[1].ebx & 0xffff, 0x0800);
        assert_ne!(entries[1].ecx & ECX_HYPERVISOR, 0);
        assert_ne!(entries[1].edx & EDX_HTT, 0);
        assert_eq!(entries[2].edx, 3);
        assert_eq!(entries[2].ebx, 1);
        assert_eq!(entries[3].eax, 2);
        assert_eq!(entries[3].ebx, 4);
        assert_eq!(entries[3].ecx >> 8, LEVEL_TYPE_CORE);
    }

    #[test]
    fn amd_core_count_is_published() {
        let mut entries = vec![entry(0, 0), entry(0x8000_0008, 0)];
        entries[0].ebx = VENDOR_AMD_EBX;
        filter_cpuid(&mut entries, 0, 2, &HostCpu::default());
        assert_eq!(entries[1].ecx & 0xff, 1);
        assert_eq!((entries[1].ecx >> 12) & 0xf, 1);
    }

    #[test]
    fn host_extras_are_applied() {
        let mut entries = vec![entry(1, 0), entry(0x8000_0003, 0)];
        let host = HostCpu {
            tsc_deadline: true,
            brand: Some([[1, 2, 3, 4], [5, 6, 7, 8], [9, 10, 11, 12]]),
        };
        filter_cpuid(&mut entries, 0, 1, &host);
        assert_ne!(entries[0].ecx & ECX_TSC_DEADLINE, 0);
        assert_eq!((entries[1].eax, entries[1].edx), (5, 8));
        filter_cpuid(&mut entries, 0, 1, &HostCpu::default());
        assert_ne!(
            entries[0].ecx & ECX_TSC_DEADLINE,
            0,
            "never cleared, only added"
        );
    }

    #[test]
    fn core_id_bits_round_up() {
        assert_eq!(core_id_bits(1), 0);
        assert_eq!(core_id_bits(2), 1);
        assert_eq!(core_id_bits(3), 2);
        assert_eq!(core_id_bits(64), 6);
    }
}
