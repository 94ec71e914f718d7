//! One boot of a VM: the KVM VM, guest RAM, devices and vCPU threads, built from a
//! [`VmConfig`]. A reset drops the machine and builds a fresh one from the same config.

use std::sync::{Arc, Mutex};
use std::time::Instant;

use kvm_bindings::{
    kvm_pit_config, kvm_userspace_memory_region, KVM_MAX_CPUID_ENTRIES, KVM_MEM_LOG_DIRTY_PAGES,
    KVM_PIT_SPEAKER_DUMMY,
};
use kvm_ioctls::{Kvm, VcpuFd, VmFd};
use vm_memory::{Bytes, GuestAddress, GuestMemoryBackend, GuestMemoryMmap, GuestMemoryRegion};
use vmm_sys_util::eventfd::EventFd;

use crate::arch::x86_64::boot::{self, EntryPoint, LinearFramebuffer, LoadedKernel};
use crate::arch::x86_64::layout::*;
use crate::arch::x86_64::{acpi, cpuid, msr, regs};
use crate::attachments::Attachments;
use crate::config::VmConfig;
use crate::devices::i8042::I8042;
use crate::devices::input::KeyboardRouter;
use crate::devices::pci::msix::{MsiRouter, MsixError};
use crate::devices::pci::{self, PciBarWindow, PciBus, PciEcam};
use crate::devices::pm::{PowerManagement, ResetControl};
use crate::devices::pvpanic::PvPanic;
use crate::devices::rtc::Cmos;
use crate::devices::serial::{Console, SerialPort};
use crate::devices::virtio::balloon::{Balloon, SharedBalloonStats};
use crate::devices::virtio::block::Block;
use crate::devices::virtio::input::{InputHandle, InputKind, BTN_LEFT, BTN_MIDDLE, BTN_RIGHT};
use crate::devices::virtio::net::Net;
use crate::devices::virtio::pci::{VirtioPciDevice, BAR_SIZE};
use crate::devices::virtio::rng::Rng;
use crate::devices::virtio::VirtioDevice;
use crate::devices::{lock, Buses, InterruptLine};
use crate::display::Framebuffer;
use crate::memory::{self, MemoryError};
use crate::protocol::{PointerButton, VcpuStats};
use crate::vcpu::{EventSender, RunControl, VcpuSet, VcpuThread};

/// Errors building or starting a machine. Each says which step failed.
#[derive(Debug, thiserror::Error)]
pub enum MachineError {
    #[error("cannot open /dev/kvm: {0}. Is KVM enabled in the BIOS and the kvm module loaded, and are you in the kvm group?")]
    OpenKvm(kvm_ioctls::Error),
    #[error("KVM refused to {step}: {source}")]
    Kvm {
        step: &'static str,
        source: kvm_ioctls::Error,
    },
    #[error(transparent)]
    Memory(#[from] MemoryError),
    #[error(transparent)]
    Boot(#[from] boot::BootError),
    #[error(transparent)]
    Regs(#[from] regs::RegsError),
    #[error("cannot write the ACPI tables into guest memory: {0}")]
    Acpi(String),
    #[error("cannot create an event fd: {0}")]
    EventFd(std::io::Error),
    #[error("cannot start a vCPU thread: {0}")]
    Thread(std::io::Error),
    #[error("cannot set up the interrupts of a PCI device: {0}")]
    Msix(#[from] MsixError),
    #[error("no room for another PCI device (the bus or its memory window is full)")]
    PciFull,
    #[error("cannot set up the virtio-input devices: {0}")]
    Input(std::io::Error),
}

fn kvm_step<T>(
    step: &'static str,
    result: Result<T, kvm_ioctls::Error>,
) -> Result<T, MachineError> {
    result.map_err(|source| MachineError::Kvm { step, source })
}

/// Raises the SCI through the in-kernel IOAPIC.
struct KvmIrqLine {
    vm: Arc<VmFd>,
    irq: u32,
}

impl InterruptLine for KvmIrqLine {
    fn set_level(&self, high: bool) {
        // Fails only if the irqchip is gone, i.e. the machine is being torn down.
        let _ = self.vm.set_irq_line(self.irq, high);
    }
}

/// What [`Machine::build_on`] prepares besides guest RAM.
struct MachineParts {
    vcpus: Vec<VcpuFd>,
    bus: Buses,
    balloon_stats: SharedBalloonStats,
    serial: Arc<Mutex<SerialPort>>,
    pm: Arc<Mutex<PowerManagement>>,
    keyboards: KeyboardRouter,
    tablet: Option<InputHandle>,
}

/// Maps the framebuffer into the guest at [`FRAMEBUFFER_START`] with dirty-page logging, so
/// the worker can find what the guest drew.
fn register_framebuffer(vm: &VmFd, framebuffer: &Framebuffer) -> Result<(), MachineError> {
    let mapping = kvm_userspace_memory_region {
        slot: FRAMEBUFFER_SLOT,
        guest_phys_addr: FRAMEBUFFER_START,
        memory_size: framebuffer.size(),
        userspace_addr: framebuffer.host_address(),
        flags: KVM_MEM_LOG_DIRTY_PAGES,
    };
    // SAFETY: the worker owns the framebuffer mapping and keeps it alive longer than any
    // machine (it outlives resets); the Machine holds an Arc to it as well.
    kvm_step("map the framebuffer", unsafe {
        vm.set_user_memory_region(mapping)
    })
}

/// Tells KVM where guest RAM is, one memory slot per region.
fn register_memory(vm: &VmFd, memory: &GuestMemoryMmap) -> Result<(), MachineError> {
    for (slot, region) in memory.iter().enumerate() {
        let host = region
            .get_host_address(vm_memory::MemoryRegionAddress(0))
            .map_err(|err| {
                MachineError::Memory(MemoryError::Map {
                    size: region.len(),
                    reason: err.to_string(),
                })
            })?;
        let mapping = kvm_userspace_memory_region {
            slot: slot as u32,
            guest_phys_addr: region.start_addr().0,
            memory_size: region.len(),
            userspace_addr: host as u64,
            flags: 0,
        };
        // SAFETY: the mapping belongs to the machine's guest memory, which the Machine owns and
        // keeps alive as long as the VM (the VM fd is dropped first, see the field order).
        kvm_step("map guest RAM", unsafe {
            vm.set_user_memory_region(mapping)
        })?;
    }
    Ok(())
}

/// Builds PCI bus 0 with `devices` on the virtio-pci transport, and puts its configuration
/// access and BAR window on the buses.
fn add_pci(
    bus: &mut Buses,
    vm: &Arc<VmFd>,
    memory: &GuestMemoryMmap,
    devices: Vec<Box<dyn VirtioDevice>>,
) -> Result<(), MachineError> {
    let pci = Arc::new(Mutex::new(PciBus::new(
        PCI_BAR_WINDOW_START,
        PCI_BAR_WINDOW_END,
    )));
    let router = Arc::new(Mutex::new(MsiRouter::new(vm.clone())));
    for device in devices {
        let bar = lock(&pci)
            .allocate_bar(BAR_SIZE)
            .ok_or(MachineError::PciFull)?;
        let transport =
            VirtioPciDevice::new(device, vm.clone(), memory.clone(), router.clone(), bar)?;
        lock(&pci)
            .add(Arc::new(Mutex::new(transport)))
            .ok_or(MachineError::PciFull)?;
    }
    let (address, data) = pci::config_ports(pci.clone());
    bus.pio
        .insert(PCI_CONFIG_ADDRESS_PORT, 1, Arc::new(Mutex::new(address)));
    bus.pio
        .insert(PCI_CONFIG_DATA_PORT, 4, Arc::new(Mutex::new(data)));
    bus.mmio.insert(
        PCI_ECAM_START,
        PCI_ECAM_SIZE,
        Arc::new(Mutex::new(PciEcam(pci.clone()))),
    );
    bus.mmio.insert(
        PCI_BAR_WINDOW_START,
        PCI_BAR_WINDOW_END - PCI_BAR_WINDOW_START,
        Arc::new(Mutex::new(PciBarWindow {
            bus: pci,
            base: PCI_BAR_WINDOW_START,
        })),
    );
    Ok(())
}

/// A built machine, before or after its vCPUs start.
pub struct Machine {
    // Field order is drop order: vCPUs go first, then devices, the VM and memory.
    vcpus: Option<VcpuSet>,
    pending_vcpus: Vec<VcpuFd>,
    bus: Arc<Buses>,
    serial: Arc<Mutex<SerialPort>>,
    pm: Arc<Mutex<PowerManagement>>,
    balloon_stats: SharedBalloonStats,
    keyboards: KeyboardRouter,
    tablet: Option<InputHandle>,
    vm: Arc<VmFd>,
    memory: GuestMemoryMmap,
    framebuffer: Option<Arc<Framebuffer>>,
    booted: Instant,
}

impl Machine {
    /// Builds the VM, loads the kernel and prepares every vCPU, without running anything.
    /// `framebuffer` is the worker's, kept across resets; it must match `config.display`.
    pub fn build(
        kvm: &Kvm,
        config: &VmConfig,
        console: Console,
        attachments: &Attachments,
        framebuffer: Option<Arc<Framebuffer>>,
    ) -> Result<Machine, MachineError> {
        let vm = Arc::new(kvm_step("create a VM", kvm.create_vm())?);
        let memory = memory::create_guest_memory(config.memory)?;
        if let Some(framebuffer) = &framebuffer {
            register_framebuffer(&vm, framebuffer)?;
        }
        let announced = framebuffer.as_deref().map(|fb| LinearFramebuffer {
            base: FRAMEBUFFER_START,
            width: fb.width,
            height: fb.height,
            stride: fb.stride,
            size: fb.size(),
        });
        // Registering RAM with KVM is the slowest step of start-up (milliseconds, mostly KVM
        // waiting for a grace period), so it runs beside everything else that does not need it:
        // the irqchip, kernel loading and vCPU set-up.
        std::thread::scope(|scope| {
            let slots = scope.spawn(|| register_memory(&vm, &memory));
            let built = Self::build_on(
                kvm,
                config,
                console,
                attachments,
                vm.clone(),
                &memory,
                announced,
            );
            let slots = slots
                .join()
                .unwrap_or_else(|panic| std::panic::resume_unwind(panic));
            slots.and(built)
        })
        .map(|parts| Machine {
            vcpus: None,
            pending_vcpus: parts.vcpus,
            bus: Arc::new(parts.bus),
            serial: parts.serial,
            pm: parts.pm,
            balloon_stats: parts.balloon_stats,
            keyboards: parts.keyboards,
            tablet: parts.tablet,
            vm,
            memory,
            framebuffer,
            booted: Instant::now(),
        })
    }

    fn build_on(
        kvm: &Kvm,
        config: &VmConfig,
        console: Console,
        attachments: &Attachments,
        vm: Arc<VmFd>,
        memory: &GuestMemoryMmap,
        framebuffer: Option<LinearFramebuffer>,
    ) -> Result<MachineParts, MachineError> {
        kvm_step("set the TSS address", vm.set_tss_address(KVM_TSS_ADDR))?;
        kvm_step("create the in-kernel irqchip", vm.create_irq_chip())?;
        let pit = kvm_pit_config {
            flags: KVM_PIT_SPEAKER_DUMMY,
            ..Default::default()
        };
        kvm_step("create the in-kernel PIT", vm.create_pit2(pit))?;
        let kernel = boot::load_kernel(memory, &config.kernel, framebuffer.is_some())?;
        let initrd = match &config.initrd {
            Some(path) => Some(boot::load_initrd(memory, path, &kernel)?),
            None => None,
        };
        boot::write_cmdline(memory, &config.cmdline)?;
        match kernel.entry {
            EntryPoint::Linux64(_) => boot::write_zero_page(
                memory,
                &kernel,
                initrd,
                config.cmdline.len(),
                config.memory,
                framebuffer.as_ref(),
            )?,
            EntryPoint::Pvh(_) => boot::write_pvh_start_info(memory, initrd, config.memory)?,
        }
        let tables = acpi::create_acpi_tables(config.vcpus);
        memory
            .write_slice(&tables.bytes, GuestAddress(ACPI_START))
            .map_err(|err| MachineError::Acpi(err.to_string()))?;

        let serial_irq = EventFd::new(libc::EFD_NONBLOCK).map_err(MachineError::EventFd)?;
        kvm_step(
            "connect COM1's interrupt",
            vm.register_irqfd(&serial_irq, COM1_IRQ),
        )?;
        let serial = Arc::new(Mutex::new(SerialPort::new(serial_irq, console)));
        let sci = Arc::new(KvmIrqLine {
            vm: vm.clone(),
            irq: SCI_IRQ,
        });
        let pm = Arc::new(Mutex::new(PowerManagement::new(sci)));
        let i8042 = Arc::new(Mutex::new(I8042::new(Arc::new(KvmIrqLine {
            vm: vm.clone(),
            irq: I8042_KBD_IRQ,
        }))));
        let mut keyboards = KeyboardRouter::default();
        let mut tablet = None;
        let mut inputs = Vec::new();
        // With a screen, a virtio-input keyboard and tablet unless the configuration leaves
        // one out: keys go to the virtio keyboard once the guest's driver listens, to the i8042
        // before that (early boot, guests without it) and always when there is none.
        if framebuffer.is_some() {
            if config.input.keyboard {
                let keyboard =
                    InputHandle::new(InputKind::Keyboard).map_err(MachineError::Input)?;
                keyboards.add(Arc::new(Mutex::new(keyboard.clone())));
                inputs.push(keyboard);
            }
            if config.input.tablet {
                let pointer = InputHandle::new(InputKind::Tablet).map_err(MachineError::Input)?;
                inputs.push(pointer.clone());
                tablet = Some(pointer);
            }
        }
        keyboards.add(i8042.clone());
        let mut bus = Buses::default();
        let balloon_stats = SharedBalloonStats::default();
        let mut virtio: Vec<Box<dyn VirtioDevice>> =
            vec![Box::new(Rng), Box::new(Balloon::new(balloon_stats.clone()))];
        for attached in &attachments.disks {
            virtio.push(Box::new(Block::new(
                attached.disk.clone(),
                attached.counters.clone(),
            )));
        }
        for nic in &attachments.nics {
            virtio.push(Box::new(Net::new(
                nic.backend.clone(),
                nic.counters.clone(),
                nic.mac,
            )));
        }
        for input in &inputs {
            virtio.push(Box::new(input.device()));
        }
        add_pci(&mut bus, &vm, memory, virtio)?;
        bus.pio.insert(COM1_PORT, 8, serial.clone());
        bus.pio.insert(
            I8042_DATA_PORT,
            I8042_COMMAND_PORT - I8042_DATA_PORT + 1,
            i8042,
        );
        bus.pio
            .insert(CMOS_PORT, 2, Arc::new(Mutex::new(Cmos::default())));
        bus.pio.insert(PM1A_EVT_PORT, 6, pm.clone());
        bus.pio
            .insert(RESET_PORT, 1, Arc::new(Mutex::new(ResetControl::default())));
        bus.pio
            .insert(PVPANIC_PORT, 1, Arc::new(Mutex::new(PvPanic)));

        let supported = kvm_step(
            "report its CPUID",
            kvm.get_supported_cpuid(KVM_MAX_CPUID_ENTRIES),
        )?;
        let host = cpuid::HostCpu {
            tsc_deadline: kvm.check_extension(kvm_ioctls::Cap::TscDeadlineTimer),
            brand: cpuid::HostCpu::brand_from_host(),
        };
        let mut pending_vcpus = Vec::new();
        for id in 0..config.vcpus {
            let vcpu = kvm_step("create a vCPU", vm.create_vcpu(u64::from(id)))?;
            configure_vcpu(&vcpu, memory, &kernel, id, config.vcpus, &supported, &host)?;
            pending_vcpus.push(vcpu);
        }

        Ok(MachineParts {
            vcpus: pending_vcpus,
            bus,
            balloon_stats,
            serial,
            pm,
            keyboards,
            tablet,
        })
    }

    /// Starts one thread per vCPU.
    pub fn start(&mut self, events: &EventSender) -> Result<(), MachineError> {
        let run = Arc::new(RunControl::default());
        let mut threads = Vec::new();
        for (id, vcpu) in self.pending_vcpus.drain(..).enumerate() {
            let thread = VcpuThread::spawn(
                id as u8,
                vcpu,
                self.bus.clone(),
                run.clone(),
                events.clone(),
            )
            .map_err(MachineError::Thread)?;
            threads.push(thread);
        }
        self.booted = Instant::now();
        self.vcpus = Some(VcpuSet::new(threads, run));
        Ok(())
    }

    /// Pauses every vCPU; false if one did not stop in time.
    pub fn pause(&self) -> bool {
        self.vcpus.as_ref().is_none_or(VcpuSet::pause)
    }

    pub fn resume(&self) {
        if let Some(vcpus) = &self.vcpus {
            vcpus.resume();
        }
    }

    /// Stops and joins the vCPU threads.
    pub fn stop(&mut self) {
        if let Some(vcpus) = self.vcpus.take() {
            vcpus.stop();
        }
    }

    pub fn press_power_button(&self) {
        lock(&self.pm).press_power_button();
    }

    pub fn send_serial_input(&self, bytes: &[u8]) {
        lock(&self.serial).queue_input(bytes);
    }

    /// Types a key (Linux evdev code) on whichever keyboard the guest has enabled.
    pub fn send_key(&self, evdev: u16, down: bool) {
        self.keyboards.key(evdev, down);
    }

    /// Moves the tablet's pointer to (`x`, `y`), 0..=32767 on both axes. Without a display
    /// there is no tablet and nothing happens.
    pub fn send_pointer(&self, x: u32, y: u32) {
        if let Some(tablet) = &self.tablet {
            tablet.pointer(x, y);
        }
    }

    /// Presses or releases a tablet button.
    pub fn send_button(&self, button: PointerButton, down: bool) {
        if let Some(tablet) = &self.tablet {
            let code = match button {
                PointerButton::Left => BTN_LEFT,
                PointerButton::Middle => BTN_MIDDLE,
                PointerButton::Right => BTN_RIGHT,
            };
            tablet.button(code, down);
        }
    }

    /// Turns the tablet's wheel by `delta` steps, positive away from the user.
    pub fn send_wheel(&self, delta: i32) {
        if let Some(tablet) = &self.tablet {
            tablet.wheel(delta);
        }
    }

    /// The framebuffer pages the guest wrote since the last call, one bit per page; `None`
    /// without a framebuffer or if KVM refused.
    pub fn framebuffer_dirty_pages(&self) -> Option<Vec<u64>> {
        let framebuffer = self.framebuffer.as_ref()?;
        self.vm
            .get_dirty_log(FRAMEBUFFER_SLOT, framebuffer.size() as usize)
            .ok()
    }

    pub fn vcpu_stats(&self) -> Vec<VcpuStats> {
        self.vcpus.as_ref().map(VcpuSet::stats).unwrap_or_default()
    }

    /// What the guest last reported about its memory, once its balloon driver runs.
    pub fn balloon_stats(&self) -> Option<crate::protocol::BalloonStats> {
        lock(&self.balloon_stats).clone()
    }

    pub fn memory_bytes(&self) -> u64 {
        self.memory.iter().map(|r| r.len()).sum()
    }

    pub fn uptime(&self) -> std::time::Duration {
        self.booted.elapsed()
    }
}

impl Drop for Machine {
    fn drop(&mut self) {
        self.stop();
    }
}

fn configure_vcpu(
    vcpu: &VcpuFd,
    memory: &GuestMemoryMmap,
    kernel: &LoadedKernel,
    id: u8,
    count: u8,
    supported: &kvm_bindings::CpuId,
    host: &cpuid::HostCpu,
) -> Result<(), MachineError> {
    let mut cpuid = supported.clone();
    cpuid::filter_cpuid(cpuid.as_mut_slice(), id, count, host);
    kvm_step("accept the vCPU's CPUID", vcpu.set_cpuid2(&cpuid))?;

    let entries = msr::boot_msrs();
    let msrs = kvm_bindings::Msrs::from_entries(&entries).map_err(|_| MachineError::Kvm {
        step: "take the boot MSR list",
        source: kvm_ioctls::Error::new(libc::E2BIG),
    })?;
    // KVM sets as many as it supports; a missing one (e.g. MISC_ENABLE on some hosts) is not
    // fatal for the guest.
    kvm_step("set the boot MSRs", vcpu.set_msrs(&msrs))?;

    let mut lapic = kvm_step("read the local APIC", vcpu.get_lapic())?;
    regs::set_lint_pins(&mut lapic.regs);
    kvm_step("set the local APIC", vcpu.set_lapic(&lapic))?;
    kvm_step("set the FPU", vcpu.set_fpu(&regs::boot_fpu()))?;

    // Secondary vCPUs wait for INIT/SIPI from the guest; only the BSP gets an entry state.
    if id == 0 {
        let mut sregs = kvm_step("read segment registers", vcpu.get_sregs())?;
        regs::write_descriptor_tables(memory, kernel.entry, &mut sregs)?;
        if let EntryPoint::Linux64(_) = kernel.entry {
            regs::write_identity_page_tables(memory)?;
        }
        regs::set_control_registers(kernel.entry, &mut sregs);
        kvm_step("set segment registers", vcpu.set_sregs(&sregs))?;
        kvm_step(
            "set registers",
            vcpu.set_regs(&regs::boot_regs(kernel.entry)),
        )?;
    }
    Ok(())
}
