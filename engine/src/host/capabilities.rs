//! What this host can do: KVM and how it is backed, CPUs, memory, and the helper programs
//! (`passt`, `qemu-img`). Clients show it; `hangard` refuses with it what cannot work.

use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};

use crate::host::storage::find_in_path;

/// How guests run on this host.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum Acceleration {
    /// KVM on VT-x or AMD-V: guests run at native speed.
    Hardware,
    /// KVM without hardware virtualization underneath (kvm_pvm): ordinary guests are
    /// instruction-emulated, orders of magnitude slower.
    Emulated,
    /// No usable /dev/kvm.
    None,
}

/// The host's capabilities.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct HostCapabilities {
    pub kvm_usable: bool,
    /// Why /dev/kvm cannot be used, and what to do; empty when it can.
    pub kvm_problem: String,
    pub acceleration: Acceleration,
    /// Loaded KVM vendor modules (kvm_intel, kvm_amd, kvm_pvm).
    pub kvm_modules: Vec<String>,
    pub host_cpus: usize,
    pub host_memory_bytes: u64,
    pub passt: Option<PathBuf>,
    pub qemu_img: Option<PathBuf>,
}

/// CPU flags that mean hardware virtualization.
fn has_virtualization_flag(cpuinfo: &str) -> bool {
    cpuinfo
        .lines()
        .filter(|line| line.starts_with("flags"))
        .flat_map(|line| line.split_whitespace())
        .any(|flag| flag == "vmx" || flag == "svm")
}

/// KVM vendor modules named in /proc/modules.
fn kvm_modules(modules: &str) -> Vec<String> {
    modules
        .lines()
        .filter_map(|line| line.split_whitespace().next())
        .filter(|name| matches!(*name, "kvm_intel" | "kvm_amd" | "kvm_pvm"))
        .map(str::to_string)
        .collect()
}

/// MemTotal from /proc/meminfo, in bytes.
fn mem_total(meminfo: &str) -> u64 {
    meminfo
        .lines()
        .find_map(|line| line.strip_prefix("MemTotal:"))
        .and_then(|rest| rest.split_whitespace().next())
        .and_then(|kib| kib.parse::<u64>().ok())
        .map_or(0, |kib| kib * 1024)
}

/// Decides the acceleration from what the host reports.
fn classify(kvm_usable: bool, cpu_has_flag: bool, modules: &[String]) -> Acceleration {
    let vendor = modules.iter().any(|m| m == "kvm_intel" || m == "kvm_amd");
    match (
        kvm_usable,
        cpu_has_flag && vendor,
        modules.iter().any(|m| m == "kvm_pvm"),
    ) {
        (false, _, _) => Acceleration::None,
        (true, true, _) => Acceleration::Hardware,
        (true, false, true) => Acceleration::Emulated,
        // Built-in KVM with VT-x/AMD-V (no module listed) is still hardware.
        (true, false, false) if cpu_has_flag => Acceleration::Hardware,
        (true, false, false) => Acceleration::Emulated,
    }
}

fn kvm_problem() -> String {
    match std::fs::OpenOptions::new()
        .read(true)
        .write(true)
        .open("/dev/kvm")
    {
        Ok(_) => String::new(),
        Err(err) => match err.kind() {
            std::io::ErrorKind::NotFound => {
                "/dev/kvm does not exist; enable virtualization in the firmware and load \
                 kvm_intel or kvm_amd"
                    .into()
            }
            std::io::ErrorKind::PermissionDenied => {
                "/dev/kvm is not accessible to this user; add the user to the kvm group and log \
                 in again"
                    .into()
            }
            _ => format!("/dev/kvm cannot be opened: {err}"),
        },
    }
}

impl HostCapabilities {
    /// Probes this host.
    pub fn probe() -> HostCapabilities {
        let read = |path: &str| std::fs::read_to_string(path).unwrap_or_default();
        let problem = kvm_problem();
        let kvm_usable = problem.is_empty();
        let mut modules = kvm_modules(&read("/proc/modules"));
        // Containers often lack /proc/modules; /sys/module lists loaded and built-in modules.
        for name in ["kvm_intel", "kvm_amd", "kvm_pvm"] {
            if !modules.iter().any(|m| m == name) && Path::new("/sys/module").join(name).exists() {
                modules.push(name.to_string());
            }
        }
        let acceleration = classify(
            kvm_usable,
            has_virtualization_flag(&read("/proc/cpuinfo")),
            &modules,
        );
        HostCapabilities {
            kvm_usable,
            kvm_problem: problem,
            acceleration,
            kvm_modules: modules,
            host_cpus: std::thread::available_parallelism().map_or(1, |n| n.get()),
            host_memory_bytes: mem_total(&read("/proc/meminfo")),
            passt: find_in_path("passt"),
            qemu_img: find_in_path("qemu-img"),
        }
    }

    pub fn to_json(&self) -> String {
        serde_json::to_string(self).unwrap_or_default()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn cpu_flags_are_found() {
        let cpuinfo = "processor\t: 0\nflags\t\t: fpu vme svm sse\n";
        assert!(has_virtualization_flag(cpuinfo));
        assert!(!has_virtualization_flag("flags\t: fpu vmxx sse\n"));
    }

    #[test]
    fn modules_and_memory_parse() {
        let modules = "kvm_pvm 73728 0 - Live 0x0\nkvm 1142784 1 kvm_pvm, Live 0x0\n";
        assert_eq!(kvm_modules(modules), ["kvm_pvm"]);
        assert_eq!(
            mem_total("MemTotal:        8000000 kB\nMemFree: 1 kB\n"),
            8_192_000_000
        );
        assert_eq!(mem_total(""), 0);
    }

    #[test]
    fn acceleration_is_classified() {
        let m = |names: &[&str]| names.iter().map(|s| s.to_string()).collect::<Vec<_>>();
        assert_eq!(
            classify(true, true, &m(&["kvm_intel"])),
            Acceleration::Hardware
        );
        assert_eq!(
            classify(true, false, &m(&["kvm_pvm"])),
            Acceleration::Emulated
        );
        assert_eq!(
            classify(true, true, &m(&["kvm_pvm"])),
            Acceleration::Emulated
        );
        assert_eq!(classify(false, true, &m(&["kvm_amd"])), Acceleration::None);
    }

    #[test]
    fn this_host_probes_without_failing() {
        let caps = HostCapabilities::probe();
        assert!(caps.host_cpus >= 1);
        assert_eq!(caps.kvm_usable, caps.kvm_problem.is_empty());
    }
}
