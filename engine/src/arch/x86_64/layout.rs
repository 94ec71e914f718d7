//! The guest-physical memory map of a Hangar x86_64 machine, in one place.
//!
//! ```text
//! 0x0000_0500  GDT                      0x0000_7000  zero page (Linux boot_params)
//! 0x0000_0520  IDT                      0x0000_8ff0  boot stack top
//! 0x0000_6000  PVH hvm_start_info       0x0000_9000  identity page tables (PML4, PDPT, 4 PDs)
//! 0x0000_6100  PVH memory map           0x0002_0000  kernel command line
//! 0x0009_fc00  start of the legacy hole (EBDA, VGA, BIOS area), reserved
//! 0x000e_0000  ACPI tables (RSDP first)
//! 0x0010_0000  kernel (HIMEM)            ... RAM up to 3 GiB
//! 0xc000_0000  32-bit MMIO gap: framebuffer 0xd000_0000, PCI ECAM 0xe000_0000,
//!              PCI BARs 0xe100_0000..0xf000_0000, IOAPIC 0xfec0_0000, LAPIC 0xfee0_0000
//! 0x1_0000_0000  RAM above 4 GiB, for guests with more than 3 GiB
//! ```

/// Global descriptor table.
pub const GDT_START: u64 = 0x500;
/// Interrupt descriptor table (empty; the guest installs its own).
pub const IDT_START: u64 = 0x520;
/// PVH `hvm_start_info`.
pub const PVH_INFO_START: u64 = 0x6000;
/// PVH memory map, right after `hvm_start_info`.
pub const PVH_MEMMAP_START: u64 = 0x6100;
/// PVH module list (the initrd).
pub const PVH_MODLIST_START: u64 = 0x6f00;
/// Linux zero page (`boot_params`).
pub const ZERO_PAGE_START: u64 = 0x7000;
/// Initial stack pointer for the bootstrap processor.
pub const BOOT_STACK_POINTER: u64 = 0x8ff0;
/// Page-map level 4 of the identity mapping; the PDPT and page directories follow it.
pub const PML4_START: u64 = 0x9000;
/// Page-directory-pointer table.
pub const PDPTE_START: u64 = 0xa000;
/// First of four page directories (2 MiB pages covering 4 GiB).
pub const PDE_START: u64 = 0xb000;
/// Kernel command line.
pub const CMDLINE_START: u64 = 0x20000;
/// Largest command line accepted, including the terminating NUL.
pub const CMDLINE_MAX_SIZE: usize = 4096;
/// End of conventional memory usable as RAM below 1 MiB.
pub const EBDA_START: u64 = 0x9fc00;
/// ACPI tables live in the BIOS area, where Linux also scans for the RSDP.
pub const ACPI_START: u64 = 0xe0000;
/// Size of the ACPI table area.
pub const ACPI_SIZE: u64 = 0x20000;
/// Where the kernel is loaded, and where RAM above the legacy hole starts.
pub const HIMEM_START: u64 = 0x100000;
/// Start of the 32-bit MMIO gap; RAM below 4 GiB ends here.
pub const MMIO_GAP_START: u64 = 0xc000_0000;
/// End of the 32-bit MMIO gap.
pub const MMIO_GAP_END: u64 = 0x1_0000_0000;
/// The linear framebuffer: its own memory slot in the MMIO gap, never in the e820 RAM map.
/// Up to 256 MiB, clear of the PCI ECAM and BAR window at 0xe000_0000.
pub const FRAMEBUFFER_START: u64 = 0xd000_0000;
/// Largest framebuffer the window at [`FRAMEBUFFER_START`] holds.
pub const FRAMEBUFFER_MAX_SIZE: u64 = 0x1000_0000;
/// KVM memory slot of the framebuffer; RAM uses the slots from 0 up.
pub const FRAMEBUFFER_SLOT: u32 = 16;
/// PCI configuration space (ECAM) of bus 0, announced in the MCFG and reserved in e820.
pub const PCI_ECAM_START: u64 = 0xe000_0000;
/// One bus: 32 slots of 8 functions of 4 KiB.
pub const PCI_ECAM_SIZE: u64 = 0x10_0000;
/// Where PCI BARs are placed (the host bridge's 32-bit memory window).
pub const PCI_BAR_WINDOW_START: u64 = 0xe100_0000;
pub const PCI_BAR_WINDOW_END: u64 = 0xf000_0000;
/// Legacy PCI configuration access: address register and data window.
pub const PCI_CONFIG_ADDRESS_PORT: u16 = 0xcf8;
pub const PCI_CONFIG_DATA_PORT: u16 = 0xcfc;
/// In-kernel IOAPIC.
pub const IOAPIC_ADDR: u32 = 0xfec0_0000;
/// Local APIC of every vCPU.
pub const LAPIC_ADDR: u32 = 0xfee0_0000;
/// KVM's task-state segment pages, needed by Intel VMX; inside the MMIO gap.
pub const KVM_TSS_ADDR: usize = 0xfffb_d000;

/// COM1.
pub const COM1_PORT: u16 = 0x3f8;
/// COM1's ISA interrupt.
pub const COM1_IRQ: u32 = 4;
/// i8042 keyboard controller data and command ports.
pub const I8042_DATA_PORT: u16 = 0x60;
pub const I8042_COMMAND_PORT: u16 = 0x64;
/// The i8042 keyboard port's ISA interrupt.
pub const I8042_KBD_IRQ: u32 = 1;
/// CMOS RTC index and data ports.
pub const CMOS_PORT: u16 = 0x70;
/// ACPI PM1a event block (status, enable).
pub const PM1A_EVT_PORT: u16 = 0x600;
/// ACPI PM1a control block.
pub const PM1A_CNT_PORT: u16 = 0x604;
/// ACPI system control interrupt (level, active high).
pub const SCI_IRQ: u32 = 9;
/// pvpanic device (QEMU's ISA port).
pub const PVPANIC_PORT: u16 = 0x505;
/// Reset control register (also the FADT reset register).
pub const RESET_PORT: u16 = 0xcf9;
/// SLP_TYP value of the S5 (soft off) sleep state, as published in the DSDT's `_S5_`.
pub const S5_SLEEP_TYPE: u16 = 5;
