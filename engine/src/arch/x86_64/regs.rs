//! The bootstrap processor's entry state: GDT, identity page tables, segment, control and
//! general registers, FPU, and the local APIC's LINT pins.

use kvm_bindings::{kvm_fpu, kvm_regs, kvm_segment, kvm_sregs};
use vm_memory::{Bytes, GuestAddress, GuestMemoryMmap};

use super::boot::EntryPoint;
use super::layout::*;

const X86_CR0_PE: u64 = 1 << 0;
const X86_CR0_ET: u64 = 1 << 4;
const X86_CR0_PG: u64 = 1 << 31;
const X86_CR4_PAE: u64 = 1 << 5;
const EFER_LME: u64 = 1 << 8;
const EFER_LMA: u64 = 1 << 10;

/// Page-table entry bits: present, writable, and (for directories) a 2 MiB page.
const PTE_PRESENT_RW: u64 = 0x3;
const PDE_HUGE_PAGE: u64 = 0x80;
/// Page directories covering the 4 GiB identity map.
const PAGE_DIRECTORIES: u64 = 4;

/// Errors writing the boot state.
#[derive(Debug, thiserror::Error)]
pub enum RegsError {
    #[error("cannot write {what} into guest memory: {reason}")]
    GuestWrite { what: &'static str, reason: String },
}

/// A GDT entry from its flags (access byte in bits 0..8, flags in 12..16), base and limit.
pub const fn gdt_entry(flags: u16, base: u32, limit: u32) -> u64 {
    ((base as u64 & 0xff00_0000) << 32)
        | ((flags as u64 & 0xf0ff) << 40)
        | ((limit as u64 & 0x000f_0000) << 32)
        | ((base as u64 & 0x00ff_ffff) << 16)
        | (limit as u64 & 0x0000_ffff)
}

/// The KVM segment register a GDT entry describes.
pub fn segment_from_gdt(entry: u64, index: u8) -> kvm_segment {
    let base = ((entry >> 16) & 0x00ff_ffff) | ((entry >> 32) & 0xff00_0000);
    let mut limit = ((entry & 0xffff) | ((entry >> 32) & 0x000f_0000)) as u32;
    let granularity = ((entry >> 55) & 1) as u8;
    if granularity == 1 {
        limit = (limit << 12) | 0xfff;
    }
    kvm_segment {
        base,
        limit,
        selector: u16::from(index) * 8,
        type_: ((entry >> 40) & 0xf) as u8,
        present: ((entry >> 47) & 1) as u8,
        dpl: ((entry >> 45) & 0x3) as u8,
        db: ((entry >> 54) & 1) as u8,
        s: ((entry >> 44) & 1) as u8,
        l: ((entry >> 53) & 1) as u8,
        g: granularity,
        avl: ((entry >> 52) & 1) as u8,
        unusable: u8::from(((entry >> 47) & 1) == 0),
        padding: 0,
    }
}

/// The GDT for an entry point: null, code, data, TSS.
pub fn gdt_for(entry: EntryPoint) -> [u64; 4] {
    match entry {
        EntryPoint::Linux64(_) => [
            0,
            gdt_entry(0xa09b, 0, 0xfffff), // 64-bit code
            gdt_entry(0xc093, 0, 0xfffff), // data
            gdt_entry(0x808b, 0, 0xfffff), // TSS
        ],
        EntryPoint::Pvh(_) => [
            0,
            gdt_entry(0xc09b, 0, 0xffff_ffff), // 32-bit code
            gdt_entry(0xc093, 0, 0xffff_ffff), // data
            gdt_entry(0x008b, 0, 0x67),        // TSS
        ],
    }
}

fn write_u64s(
    mem: &GuestMemoryMmap,
    base: u64,
    values: impl IntoIterator<Item = u64>,
    what: &'static str,
) -> Result<(), RegsError> {
    for (index, value) in values.into_iter().enumerate() {
        mem.write_obj(value, GuestAddress(base + 8 * index as u64))
            .map_err(|err| RegsError::GuestWrite {
                what,
                reason: err.to_string(),
            })?;
    }
    Ok(())
}

/// Writes the GDT and an empty IDT, and returns the segment registers for `entry`.
pub fn write_descriptor_tables(
    mem: &GuestMemoryMmap,
    entry: EntryPoint,
    sregs: &mut kvm_sregs,
) -> Result<(), RegsError> {
    let gdt = gdt_for(entry);
    write_u64s(mem, GDT_START, gdt, "the GDT")?;
    write_u64s(mem, IDT_START, [0], "the IDT")?;
    sregs.gdt.base = GDT_START;
    sregs.gdt.limit = (std::mem::size_of_val(&gdt) - 1) as u16;
    sregs.idt.base = IDT_START;
    sregs.idt.limit = 7;

    let code = segment_from_gdt(gdt[1], 1);
    let data = segment_from_gdt(gdt[2], 2);
    sregs.cs = code;
    sregs.ds = data;
    sregs.es = data;
    sregs.fs = data;
    sregs.gs = data;
    sregs.ss = data;
    sregs.tr = segment_from_gdt(gdt[3], 3);
    Ok(())
}

/// Writes identity page tables for the first 4 GiB, with 2 MiB pages.
pub fn write_identity_page_tables(mem: &GuestMemoryMmap) -> Result<(), RegsError> {
    write_u64s(mem, PML4_START, [PDPTE_START | PTE_PRESENT_RW], "the PML4")?;
    write_u64s(
        mem,
        PDPTE_START,
        (0..PAGE_DIRECTORIES).map(|i| (PDE_START + i * 0x1000) | PTE_PRESENT_RW),
        "the PDPT",
    )?;
    write_u64s(
        mem,
        PDE_START,
        (0..PAGE_DIRECTORIES * 512).map(|i| (i << 21) | PDE_HUGE_PAGE | PTE_PRESENT_RW),
        "the page directories",
    )
}

/// Sets control registers for `entry`.
pub fn set_control_registers(entry: EntryPoint, sregs: &mut kvm_sregs) {
    match entry {
        EntryPoint::Linux64(_) => {
            sregs.cr3 = PML4_START;
            sregs.cr4 |= X86_CR4_PAE;
            sregs.cr0 |= X86_CR0_PE | X86_CR0_PG | X86_CR0_ET;
            sregs.efer |= EFER_LME | EFER_LMA;
        }
        EntryPoint::Pvh(_) => {
            sregs.cr0 = X86_CR0_PE | X86_CR0_ET;
            sregs.cr3 = 0;
            sregs.cr4 = 0;
            sregs.efer = 0;
        }
    }
}

/// General registers at entry.
pub fn boot_regs(entry: EntryPoint) -> kvm_regs {
    match entry {
        EntryPoint::Linux64(rip) => kvm_regs {
            rflags: 0x2,
            rip: rip.0,
            rsp: BOOT_STACK_POINTER,
            rbp: BOOT_STACK_POINTER,
            rsi: ZERO_PAGE_START,
            ..Default::default()
        },
        EntryPoint::Pvh(rip) => kvm_regs {
            rflags: 0x2,
            rip: rip.0,
            rbx: PVH_INFO_START,
            ..Default::default()
        },
    }
}

/// FPU state at reset: x87 control word and MXCSR defaults.
pub fn boot_fpu() -> kvm_fpu {
    kvm_fpu {
        fcw: 0x37f,
        mxcsr: 0x1f80,
        ..Default::default()
    }
}

const APIC_LVT0: usize = 0x350;
const APIC_LVT1: usize = 0x360;
const APIC_MODE_NMI: u32 = 0x4;
const APIC_MODE_EXTINT: u32 = 0x7;

fn lapic_reg(regs: &[std::os::raw::c_char], offset: usize) -> u32 {
    let bytes = [
        regs[offset] as u8,
        regs[offset + 1] as u8,
        regs[offset + 2] as u8,
        regs[offset + 3] as u8,
    ];
    u32::from_le_bytes(bytes)
}

fn set_lapic_reg(regs: &mut [std::os::raw::c_char], offset: usize, value: u32) {
    for (index, byte) in value.to_le_bytes().iter().enumerate() {
        regs[offset + index] = *byte as std::os::raw::c_char;
    }
}

/// Routes LINT0 as ExtINT (the 8259 PIC) and LINT1 as NMI, as firmware does.
pub fn set_lint_pins(regs: &mut [std::os::raw::c_char]) {
    let with_mode = |value: u32, mode: u32| (value & !0x700) | (mode << 8);
    let lvt0 = lapic_reg(regs, APIC_LVT0);
    set_lapic_reg(regs, APIC_LVT0, with_mode(lvt0, APIC_MODE_EXTINT));
    let lvt1 = lapic_reg(regs, APIC_LVT1);
    set_lapic_reg(regs, APIC_LVT1, with_mode(lvt1, APIC_MODE_NMI));
}

#[cfg(test)]
mod tests {
    use super::*;
    use vm_memory::GuestMemoryMmap;

    #[test]
    fn gdt_entries_round_trip_into_segments() {
        let code = segment_from_gdt(gdt_entry(0xa09b, 0, 0xfffff), 1);
        assert_eq!(code.selector, 8);
        assert_eq!(code.l, 1);
        assert_eq!(code.type_, 0xb);
        assert_eq!(code.present, 1);
        assert_eq!(code.limit, 0xffff_ffff);
        let data = segment_from_gdt(gdt_entry(0xc093, 0, 0xfffff), 2);
        assert_eq!(data.db, 1);
        assert_eq!(data.type_, 0x3);
        assert_eq!(data.unusable, 0);
        assert_eq!(segment_from_gdt(0, 0).unusable, 1);
    }

    #[test]
    fn identity_map_covers_4g() {
        let mem = GuestMemoryMmap::<()>::from_ranges(&[(GuestAddress(0), 0x20000)]).unwrap();
        write_identity_page_tables(&mem).unwrap();
        let pml4: u64 = mem.read_obj(GuestAddress(PML4_START)).unwrap();
        assert_eq!(pml4, PDPTE_START | 3);
        let pdpt3: u64 = mem.read_obj(GuestAddress(PDPTE_START + 24)).unwrap();
        assert_eq!(pdpt3, (PDE_START + 0x3000) | 3);
        let last: u64 = mem
            .read_obj(GuestAddress(PDE_START + 8 * (4 * 512 - 1)))
            .unwrap();
        assert_eq!(last, (0xffe0_0000) | 0x83);
    }

    #[test]
    fn lint_pins_get_extint_and_nmi() {
        let mut regs = [0 as std::os::raw::c_char; 1024];
        set_lapic_reg(&mut regs, APIC_LVT0, 0x0001_0700 | 0x10000);
        set_lint_pins(&mut regs);
        assert_eq!(lapic_reg(&regs, APIC_LVT0) & 0x700, 0x700);
        assert_eq!(lapic_reg(&regs, APIC_LVT1) & 0x700, 0x400);
    }
}
