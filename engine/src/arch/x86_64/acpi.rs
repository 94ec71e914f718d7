//! ACPI tables: RSDP, XSDT, FADT, FACS, DSDT, MADT and MCFG, laid out in the BIOS area at
//! [`ACPI_START`].
//!
//! The machine uses ACPI fixed hardware (not the hardware-reduced profile): a PM1a event block
//! with the power button, a PM1a control block for sleep states, and the SCI on IRQ 9. Debian's
//! kernels have no MP-table parser, so the MADT is what makes secondary vCPUs visible.

use acpi_tables::aml;
use acpi_tables::facs::FACS;
use acpi_tables::fadt::{FADTBuilder, Flags, PmProfile};
use acpi_tables::gas::{AccessSize, AddressSpace, GAS};
use acpi_tables::mcfg::MCFG;
use acpi_tables::rsdp::Rsdp;
use acpi_tables::sdt::Sdt;
use acpi_tables::xsdt::XSDT;
use acpi_tables::Aml;

use super::layout::*;

const OEM_ID: [u8; 6] = *b"HANGAR";
const OEM_REVISION: u32 = 1;

/// FADT IAPC_BOOT_ARCH: the machine has legacy ISA devices (COM1, CMOS RTC).
const IAPC_LEGACY_DEVICES: u16 = 1 << 0;
/// FADT IAPC_BOOT_ARCH: the machine has an 8042 keyboard controller (Linux's i8042 driver
/// trusts this bit and the DSDT's PNP0303 device).
const IAPC_8042: u16 = 1 << 1;
/// Offset of IAPC_BOOT_ARCH in the FADT.
#[cfg(test)]
const FADT_IAPC_BOOT_ARCH_OFFSET: usize = 109;
/// Reset register value that asks for a hard reset.
pub const RESET_VALUE: u8 = 0x06;
/// CMOS index of the century register.
pub const CMOS_CENTURY_INDEX: u8 = 0x32;

const MADT_LOCAL_APIC: u8 = 0;
const MADT_IO_APIC: u8 = 1;
const MADT_INTERRUPT_OVERRIDE: u8 = 2;
const MADT_LOCAL_APIC_NMI: u8 = 4;
/// MADT flags: the machine also has dual 8259 PICs.
const MADT_PCAT_COMPAT: u32 = 1;
/// MPS INTI flags: active high, level triggered.
const MPS_ACTIVE_HIGH_LEVEL: u16 = 0x1 | (0x3 << 2);

/// The tables, as one blob to copy to [`ACPI_START`].
#[derive(Clone, Debug)]
pub struct AcpiTables {
    pub bytes: Vec<u8>,
}

/// Appends tables at aligned offsets and remembers where each went.
struct TableArea {
    bytes: Vec<u8>,
}

impl TableArea {
    fn place(&mut self, table: &[u8], align: usize) -> u64 {
        let offset = self.bytes.len().next_multiple_of(align);
        self.bytes.resize(offset, 0);
        self.bytes.extend_from_slice(table);
        ACPI_START + offset as u64
    }
}

fn aml_bytes(item: &dyn Aml) -> Vec<u8> {
    let mut bytes = Vec::new();
    item.to_aml_bytes(&mut bytes);
    bytes
}

fn table(signature: [u8; 4], revision: u8, table_id: [u8; 8], body: &[u8]) -> Vec<u8> {
    let mut sdt = Sdt::new(signature, 36, revision, OEM_ID, table_id, OEM_REVISION);
    sdt.append_slice(body);
    sdt.as_slice().to_vec()
}

/// AML for an ISA device: its PNP id, one I/O range and one edge-triggered interrupt.
fn isa_device(path: &str, hid: &str, port: u16, ports: u8, irq: u32) -> Vec<u8> {
    aml_bytes(&aml::Device::new(
        path.into(),
        vec![
            &aml::Name::new("_HID".into(), &aml::EISAName::new(hid)),
            &aml::Name::new("_UID".into(), &aml::ONE),
            &aml::Name::new(
                "_CRS".into(),
                &aml::ResourceTemplate::new(vec![
                    &aml::IO::new(port, port, 1, ports),
                    &aml::Interrupt::new(true, true, false, false, irq),
                ]),
            ),
        ],
    ))
}

/// AML for the PS/2 keyboard: the i8042's data and command ports and IRQ 1.
fn keyboard_device() -> Vec<u8> {
    aml_bytes(&aml::Device::new(
        "_SB_.KBD_".into(),
        vec![
            &aml::Name::new("_HID".into(), &aml::EISAName::new("PNP0303")),
            &aml::Name::new(
                "_CRS".into(),
                &aml::ResourceTemplate::new(vec![
                    &aml::IO::new(I8042_DATA_PORT, I8042_DATA_PORT, 1, 1),
                    &aml::IO::new(I8042_COMMAND_PORT, I8042_COMMAND_PORT, 1, 1),
                    &aml::Interrupt::new(true, true, false, false, I8042_KBD_IRQ),
                ]),
            ),
        ],
    ))
}

/// AML for the pvpanic device: an ACPI (not EISA) id and one I/O port.
fn pvpanic_device() -> Vec<u8> {
    aml_bytes(&aml::Device::new(
        "_SB_.PEVT".into(),
        vec![
            &aml::Name::new("_HID".into(), &"QEMU0001"),
            &aml::Name::new(
                "_CRS".into(),
                &aml::ResourceTemplate::new(vec![&aml::IO::new(PVPANIC_PORT, PVPANIC_PORT, 1, 1)]),
            ),
        ],
    ))
}

/// AML for the PCI host bridge: bus 0, the I/O ports outside the configuration ports, and the
/// 32-bit memory window the BARs are placed in. Every device uses MSI-X, so there is no _PRT.
fn pci_host_bridge() -> Vec<u8> {
    let window_end = PCI_BAR_WINDOW_END as u32 - 1;
    aml_bytes(&aml::Device::new(
        "_SB_.PCI0".into(),
        vec![
            &aml::Name::new("_HID".into(), &aml::EISAName::new("PNP0A08")),
            &aml::Name::new("_CID".into(), &aml::EISAName::new("PNP0A03")),
            &aml::Name::new("_ADR".into(), &aml::ZERO),
            &aml::Name::new("_SEG".into(), &aml::ZERO),
            &aml::Name::new("_UID".into(), &aml::ZERO),
            &aml::Name::new("_BBN".into(), &aml::ZERO),
            &aml::Name::new(
                "_CRS".into(),
                &aml::ResourceTemplate::new(vec![
                    &aml::AddressSpace::new_bus_number(0x0u16, 0x0u16),
                    &aml::IO::new(PCI_CONFIG_ADDRESS_PORT, PCI_CONFIG_ADDRESS_PORT, 1, 8),
                    &aml::AddressSpace::new_io(0x0u16, PCI_CONFIG_ADDRESS_PORT - 1, None),
                    &aml::AddressSpace::new_io(PCI_CONFIG_ADDRESS_PORT + 8, 0xffffu16, None),
                    &aml::AddressSpace::new_memory(
                        aml::AddressSpaceCacheable::NotCacheable,
                        true,
                        PCI_BAR_WINDOW_START as u32,
                        window_end,
                        None,
                    ),
                ]),
            ),
        ],
    ))
}

/// The MCFG: where bus 0's ECAM configuration space is.
fn mcfg() -> Vec<u8> {
    let mut mcfg = MCFG::new(OEM_ID, *b"HANGARMC", OEM_REVISION);
    mcfg.add_ecam(PCI_ECAM_START, 0, 0, 0);
    aml_bytes(&mcfg)
}

/// The DSDT: the PCI host bridge, the ISA devices by PNP id, pvpanic, and the S5 sleep state.
pub fn dsdt() -> Vec<u8> {
    let mut body = pci_host_bridge();
    body.extend(isa_device("_SB_.COM1", "PNP0501", COM1_PORT, 8, COM1_IRQ));
    body.extend(isa_device("_SB_.RTC_", "PNP0B00", CMOS_PORT, 2, 8));
    body.extend(keyboard_device());
    body.extend(pvpanic_device());
    body.extend(aml_bytes(&aml::Name::new(
        "_S5_".into(),
        &aml::Package::new(vec![&S5_SLEEP_TYPE, &S5_SLEEP_TYPE, &aml::ZERO, &aml::ZERO]),
    )));
    table(*b"DSDT", 2, *b"HANGARDS", &body)
}

/// The MADT: one local APIC per vCPU, the IOAPIC, the SCI override and LINT1 as NMI.
pub fn madt(vcpus: u8) -> Vec<u8> {
    let mut body = Vec::new();
    body.extend_from_slice(&LAPIC_ADDR.to_le_bytes());
    body.extend_from_slice(&MADT_PCAT_COMPAT.to_le_bytes());
    for id in 0..vcpus {
        // type, length, ACPI processor uid, APIC id, flags (enabled)
        body.extend_from_slice(&[MADT_LOCAL_APIC, 8, id, id]);
        body.extend_from_slice(&1u32.to_le_bytes());
    }
    // type, length, IOAPIC id (after the vCPUs' ids), reserved, address, GSI base
    body.extend_from_slice(&[MADT_IO_APIC, 12, vcpus, 0]);
    body.extend_from_slice(&IOAPIC_ADDR.to_le_bytes());
    body.extend_from_slice(&0u32.to_le_bytes());
    // type, length, bus (ISA), source IRQ, GSI, flags
    body.extend_from_slice(&[MADT_INTERRUPT_OVERRIDE, 10, 0, SCI_IRQ as u8]);
    body.extend_from_slice(&SCI_IRQ.to_le_bytes());
    body.extend_from_slice(&MPS_ACTIVE_HIGH_LEVEL.to_le_bytes());
    // type, length, ACPI processor uid (0xff: all), flags, LINT#
    body.extend_from_slice(&[MADT_LOCAL_APIC_NMI, 6, 0xff, 0, 0, 1]);
    table(*b"APIC", 4, *b"HANGARMA", &body)
}

fn fadt(dsdt_address: u64, facs_address: u64) -> Vec<u8> {
    let mut fadt = FADTBuilder::new(OEM_ID, *b"HANGARFA", OEM_REVISION)
        .dsdt_64(dsdt_address)
        .firmware_ctrl_64(facs_address)
        .preferred_pm_profile(PmProfile::Desktop)
        .flag(Flags::Wbinvd)
        .flag(Flags::ProcC1)
        .flag(Flags::SlpButton)
        .flag(Flags::ResetRegSup);
    fadt.sci_int = (SCI_IRQ as u16).into();
    fadt.pm1a_evt_blk = u32::from(PM1A_EVT_PORT).into();
    fadt.pm1a_cnt_blk = u32::from(PM1A_CNT_PORT).into();
    fadt.pm1_evt_len = 4;
    fadt.pm1_cnt_len = 2;
    fadt.century = CMOS_CENTURY_INDEX;
    fadt.iapc_boot_arch = (IAPC_LEGACY_DEVICES | IAPC_8042).into();
    fadt.reset_reg = GAS::new(
        AddressSpace::SystemIo,
        8,
        0,
        AccessSize::ByteAccess,
        u64::from(RESET_PORT),
    );
    fadt.reset_value = RESET_VALUE;
    aml_bytes(&fadt.finalize())
}

/// Builds every table for a machine with `vcpus` processors.
pub fn create_acpi_tables(vcpus: u8) -> AcpiTables {
    // The RSDP goes first, at ACPI_START, where it is found; it is filled in last.
    let mut area = TableArea {
        bytes: vec![0; Rsdp::len()],
    };
    let facs = area.place(&aml_bytes(&FACS::new()), 64);
    let dsdt = area.place(&dsdt(), 16);
    let fadt = area.place(&fadt(dsdt, facs), 16);
    let madt = area.place(&madt(vcpus), 16);
    let mcfg = area.place(&mcfg(), 16);
    let mut xsdt = XSDT::new(OEM_ID, *b"HANGARXS", OEM_REVISION);
    xsdt.add_entry(fadt);
    xsdt.add_entry(madt);
    xsdt.add_entry(mcfg);
    let xsdt = area.place(&aml_bytes(&xsdt), 16);
    let rsdp = aml_bytes(&Rsdp::new(OEM_ID, xsdt));
    area.bytes[..rsdp.len()].copy_from_slice(&rsdp);
    debug_assert!(area.bytes.len() as u64 <= ACPI_SIZE);
    AcpiTables { bytes: area.bytes }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn checksum_ok(bytes: &[u8]) -> bool {
        bytes.iter().fold(0u8, |sum, b| sum.wrapping_add(*b)) == 0
    }

    fn table_at(blob: &[u8], address: u64) -> &[u8] {
        let offset = (address - ACPI_START) as usize;
        let len = u32::from_le_bytes(blob[offset + 4..offset + 8].try_into().unwrap()) as usize;
        &blob[offset..offset + len]
    }

    fn u64_at(bytes: &[u8], offset: usize) -> u64 {
        u64::from_le_bytes(bytes[offset..offset + 8].try_into().unwrap())
    }

    #[test]
    fn every_table_is_reachable_from_the_rsdp_with_a_valid_checksum() {
        let tables = create_acpi_tables(2);
        let blob = &tables.bytes;
        assert_eq!(&blob[..8], b"RSD PTR ");
        assert!(checksum_ok(&blob[..20]));
        assert!(checksum_ok(&blob[..36]));
        let xsdt = table_at(blob, u64_at(blob, 24));
        assert_eq!(&xsdt[..4], b"XSDT");
        assert!(checksum_ok(xsdt));
        let entries: Vec<u64> = (36..xsdt.len())
            .step_by(8)
            .map(|o| u64_at(xsdt, o))
            .collect();
        let signatures: Vec<&[u8]> = entries.iter().map(|&a| &table_at(blob, a)[..4]).collect();
        assert_eq!(signatures, vec![&b"FACP"[..], &b"APIC"[..], &b"MCFG"[..]]);
        // MCFG: 8 reserved bytes, then base address, segment, start and end bus.
        let mcfg = table_at(blob, entries[2]);
        assert_eq!(u64_at(mcfg, 44), PCI_ECAM_START);
        assert_eq!(&mcfg[52..56], &[0, 0, 0, 0]);
        for &address in &entries {
            assert!(checksum_ok(table_at(blob, address)));
        }
        let fadt = table_at(blob, entries[0]);
        let dsdt = table_at(blob, u64_at(fadt, 140));
        assert_eq!(&dsdt[..4], b"DSDT");
        assert!(checksum_ok(dsdt));
        // SCI_INT, PM1a_EVT_BLK, PM1a_CNT_BLK
        assert_eq!(u16::from_le_bytes([fadt[46], fadt[47]]), 9);
        assert_eq!(u32::from_le_bytes(fadt[56..60].try_into().unwrap()), 0x600);
        assert_eq!(u32::from_le_bytes(fadt[64..68].try_into().unwrap()), 0x604);
        let boot_arch = u16::from_le_bytes([
            fadt[FADT_IAPC_BOOT_ARCH_OFFSET],
            fadt[FADT_IAPC_BOOT_ARCH_OFFSET + 1],
        ]);
        assert_eq!(boot_arch & IAPC_8042, IAPC_8042);
        assert!((blob.len() as u64) < ACPI_SIZE);
    }

    #[test]
    fn madt_lists_one_enabled_local_apic_per_vcpu() {
        let madt = madt(4);
        let mut offset = 44;
        let mut apic_ids = Vec::new();
        let mut kinds = Vec::new();
        while offset < madt.len() {
            let (kind, len) = (madt[offset], madt[offset + 1] as usize);
            if kind == MADT_LOCAL_APIC {
                apic_ids.push(madt[offset + 3]);
                assert_eq!(madt[offset + 4] & 1, 1);
            }
            kinds.push(kind);
            offset += len;
        }
        assert_eq!(offset, madt.len());
        assert_eq!(apic_ids, vec![0, 1, 2, 3]);
        assert!(kinds.contains(&MADT_IO_APIC));
        assert!(kinds.contains(&MADT_INTERRUPT_OVERRIDE));
    }

    #[test]
    fn dsdt_publishes_s5() {
        let dsdt = dsdt();
        assert!(dsdt.windows(4).any(|w| w == b"_S5_"));
        assert!(dsdt.windows(4).any(|w| w == b"COM1"));
        assert!(dsdt.windows(8).any(|w| w == b"QEMU0001"));
        // The keyboard, by its compressed EISA id PNP0303.
        assert!(dsdt.windows(4).any(|w| w == b"KBD_"));
        assert!(dsdt.windows(4).any(|w| w == [0x41, 0xd0, 0x03, 0x03]));
    }
}
