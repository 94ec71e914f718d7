//! MSI-X: the vector table and pending bits a device exposes in a BAR, delivered through KVM GSI
//! routing and one irqfd per vector, so a device thread raises an interrupt with one eventfd
//! write and no vCPU exit.

use std::collections::BTreeMap;
use std::sync::{Arc, Mutex};

use kvm_bindings::{
    kvm_irq_routing_entry, kvm_irq_routing_entry__bindgen_ty_1, kvm_irq_routing_irqchip,
    kvm_irq_routing_msi, KvmIrqRouting, KVM_IRQCHIP_IOAPIC, KVM_IRQCHIP_PIC_MASTER,
    KVM_IRQCHIP_PIC_SLAVE, KVM_IRQ_ROUTING_IRQCHIP, KVM_IRQ_ROUTING_MSI,
};
use kvm_ioctls::VmFd;
use vmm_sys_util::eventfd::EventFd;

use crate::devices::lock;

/// Bytes per MSI-X table entry.
pub const MSIX_ENTRY_SIZE: u64 = 16;
/// MSI-X capability id.
pub const MSIX_CAPABILITY_ID: u8 = 0x11;
const CONTROL_ENABLE: u16 = 1 << 15;
const CONTROL_FUNCTION_MASK: u16 = 1 << 14;
const VECTOR_MASKED: u32 = 1;
/// GSIs below this belong to the IOAPIC (and the PICs below 16).
const FIRST_MSI_GSI: u32 = 24;

#[derive(Debug, thiserror::Error)]
pub enum MsixError {
    #[error("cannot create an interrupt event fd: {0}")]
    EventFd(std::io::Error),
    #[error("KVM refused to {step}: {source}")]
    Kvm {
        step: &'static str,
        source: kvm_ioctls::Error,
    },
}

/// The VM's GSI routing table: the irqchip's default routes plus one MSI route per vector.
/// KVM_SET_GSI_ROUTING replaces the whole table, so every change rewrites all of it.
pub struct MsiRouter {
    vm: Arc<VmFd>,
    next_gsi: u32,
    routes: BTreeMap<u32, MsiMessage>,
}

/// The address and data of one MSI.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct MsiMessage {
    pub address: u64,
    pub data: u32,
}

impl MsiRouter {
    pub fn new(vm: Arc<VmFd>) -> Self {
        MsiRouter {
            vm,
            next_gsi: FIRST_MSI_GSI,
            routes: BTreeMap::new(),
        }
    }

    fn allocate(&mut self) -> u32 {
        let gsi = self.next_gsi;
        self.next_gsi += 1;
        gsi
    }

    fn set_route(&mut self, gsi: u32, message: MsiMessage) -> Result<(), MsixError> {
        if self.routes.insert(gsi, message) == Some(message) {
            return Ok(());
        }
        let routing =
            KvmIrqRouting::from_entries(&routing_entries(&self.routes)).map_err(|_| {
                MsixError::Kvm {
                    step: "take the GSI routing table",
                    source: kvm_ioctls::Error::new(libc::E2BIG),
                }
            })?;
        self.vm
            .set_gsi_routing(&routing)
            .map_err(|source| MsixError::Kvm {
                step: "set the GSI routing table",
                source,
            })
    }
}

/// The whole routing table: what KVM_CREATE_IRQCHIP sets up by default (ISA IRQs on both the
/// PICs and the IOAPIC, 16..24 on the IOAPIC only), then the MSI routes.
fn routing_entries(routes: &BTreeMap<u32, MsiMessage>) -> Vec<kvm_irq_routing_entry> {
    let irqchip = |gsi: u32, chip: u32, pin: u32| kvm_irq_routing_entry {
        gsi,
        type_: KVM_IRQ_ROUTING_IRQCHIP,
        u: kvm_irq_routing_entry__bindgen_ty_1 {
            irqchip: kvm_irq_routing_irqchip { irqchip: chip, pin },
        },
        ..Default::default()
    };
    let mut entries = Vec::new();
    for gsi in 0..FIRST_MSI_GSI {
        if gsi < 16 {
            let chip = if gsi < 8 {
                KVM_IRQCHIP_PIC_MASTER
            } else {
                KVM_IRQCHIP_PIC_SLAVE
            };
            entries.push(irqchip(gsi, chip, gsi % 8));
        }
        entries.push(irqchip(gsi, KVM_IRQCHIP_IOAPIC, gsi));
    }
    for (&gsi, message) in routes {
        entries.push(kvm_irq_routing_entry {
            gsi,
            type_: KVM_IRQ_ROUTING_MSI,
            u: kvm_irq_routing_entry__bindgen_ty_1 {
                msi: kvm_irq_routing_msi {
                    address_lo: message.address as u32,
                    address_hi: (message.address >> 32) as u32,
                    data: message.data,
                    ..Default::default()
                },
            },
            ..Default::default()
        });
    }
    entries
}

struct Vector {
    message: MsiMessage,
    control: u32,
    pending: bool,
    gsi: u32,
    irqfd: EventFd,
}

/// The MSI-X state of one function: its table, pending bits and the capability's control bits.
pub struct MsixTable {
    vectors: Vec<Vector>,
    control: u16,
    router: Arc<Mutex<MsiRouter>>,
}

impl MsixTable {
    /// A table of `count` vectors, each with a GSI and an irqfd registered with KVM.
    pub fn new(count: u16, router: Arc<Mutex<MsiRouter>>) -> Result<Self, MsixError> {
        let mut vectors = Vec::new();
        for _ in 0..count {
            let irqfd = EventFd::new(libc::EFD_NONBLOCK).map_err(MsixError::EventFd)?;
            let mut router_guard = lock(&router);
            let gsi = router_guard.allocate();
            router_guard
                .vm
                .register_irqfd(&irqfd, gsi)
                .map_err(|source| MsixError::Kvm {
                    step: "register an MSI-X irqfd",
                    source,
                })?;
            vectors.push(Vector {
                message: MsiMessage::default(),
                control: VECTOR_MASKED,
                pending: false,
                gsi,
                irqfd,
            });
        }
        Ok(MsixTable {
            vectors,
            control: 0,
            router,
        })
    }

    pub fn len(&self) -> u16 {
        self.vectors.len() as u16
    }

    pub fn is_empty(&self) -> bool {
        self.vectors.is_empty()
    }

    /// The capability body: id, next (filled by the config space), control, table and PBA
    /// locations (offsets within `bar`).
    pub fn capability(&self, bar: u8, table_offset: u32, pba_offset: u32) -> [u8; 12] {
        let mut body = [0u8; 12];
        body[0] = MSIX_CAPABILITY_ID;
        body[2..4].copy_from_slice(&(self.len() - 1).to_le_bytes());
        body[4..8].copy_from_slice(&(table_offset | u32::from(bar)).to_le_bytes());
        body[8..12].copy_from_slice(&(pba_offset | u32::from(bar)).to_le_bytes());
        body
    }

    /// Which capability bytes the guest may write: the enable and function-mask bits.
    pub fn capability_mask() -> [u8; 4] {
        [0, 0, 0, 0xc0]
    }

    /// Called after the guest wrote the capability's control word.
    pub fn set_control(&mut self, control: u16) {
        self.control = control & (CONTROL_ENABLE | CONTROL_FUNCTION_MASK);
        self.deliver_pending();
    }

    fn deliverable(&self, vector: &Vector) -> bool {
        self.control & CONTROL_ENABLE != 0
            && self.control & CONTROL_FUNCTION_MASK == 0
            && vector.control & VECTOR_MASKED == 0
    }

    fn deliver_pending(&mut self) {
        for i in 0..self.vectors.len() {
            if self.vectors[i].pending && self.deliverable(&self.vectors[i]) {
                self.vectors[i].pending = false;
                let _ = self.vectors[i].irqfd.write(1);
            }
        }
    }

    /// Raises `vector`, or marks it pending while it is masked. Out-of-range vectors (the
    /// guest's choice) are ignored.
    pub fn notify(&mut self, vector: u16) {
        let deliverable = match self.vectors.get(usize::from(vector)) {
            Some(v) => self.deliverable(v),
            None => return,
        };
        let v = &mut self.vectors[usize::from(vector)];
        if deliverable {
            let _ = v.irqfd.write(1);
        } else if self.control & CONTROL_ENABLE != 0 {
            v.pending = true;
        }
    }

    /// A read of the table; `offset` is relative to the table start.
    pub fn read_table(&self, offset: u64, data: &mut [u8]) {
        let entry = self.entry_bytes(offset / MSIX_ENTRY_SIZE);
        copy_out(&entry, (offset % MSIX_ENTRY_SIZE) as usize, data);
    }

    fn entry_bytes(&self, index: u64) -> [u8; 16] {
        let mut bytes = [0u8; 16];
        if let Some(v) = self.vectors.get(index as usize) {
            bytes[0..8].copy_from_slice(&v.message.address.to_le_bytes());
            bytes[8..12].copy_from_slice(&v.message.data.to_le_bytes());
            bytes[12..16].copy_from_slice(&v.control.to_le_bytes());
        }
        bytes
    }

    /// A write to the table. Address or data changes update the vector's KVM route.
    pub fn write_table(&mut self, offset: u64, data: &[u8]) -> Result<(), MsixError> {
        let index = (offset / MSIX_ENTRY_SIZE) as usize;
        if index >= self.vectors.len() {
            return Ok(());
        }
        let mut bytes = self.entry_bytes(index as u64);
        let start = (offset % MSIX_ENTRY_SIZE) as usize;
        let end = (start + data.len()).min(16);
        bytes[start..end].copy_from_slice(&data[..end - start]);
        let v = &mut self.vectors[index];
        let message = MsiMessage {
            address: u64::from_le_bytes(bytes[0..8].try_into().unwrap()),
            data: u32::from_le_bytes(bytes[8..12].try_into().unwrap()),
        };
        v.control = u32::from_le_bytes(bytes[12..16].try_into().unwrap()) & VECTOR_MASKED;
        if message != v.message {
            v.message = message;
            let gsi = v.gsi;
            lock(&self.router).set_route(gsi, message)?;
        }
        self.deliver_pending();
        Ok(())
    }

    /// A read of the pending-bit array.
    pub fn read_pba(&self, offset: u64, data: &mut [u8]) {
        let mut bits = vec![0u8; self.vectors.len().div_ceil(64) * 8];
        for (i, v) in self.vectors.iter().enumerate() {
            if v.pending {
                bits[i / 8] |= 1 << (i % 8);
            }
        }
        copy_out(&bits, offset as usize, data);
    }
}

/// Copies `source[offset..]` into `data`, padding with zeros past its end.
fn copy_out(source: &[u8], offset: usize, data: &mut [u8]) {
    for (i, byte) in data.iter_mut().enumerate() {
        *byte = source.get(offset + i).copied().unwrap_or(0);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_routing_table_keeps_the_irqchip_defaults() {
        let mut routes = BTreeMap::new();
        routes.insert(
            24,
            MsiMessage {
                address: 0xfee0_0000,
                data: 0x4021,
            },
        );
        let entries = routing_entries(&routes);
        // 16 ISA IRQs on both PICs and the IOAPIC, 8 more on the IOAPIC, one MSI.
        assert_eq!(entries.len(), 16 * 2 + 8 + 1);
        let msi = entries.last().unwrap();
        assert_eq!((msi.gsi, msi.type_), (24, KVM_IRQ_ROUTING_MSI));
        // SAFETY: an MSI entry's union member is `msi`.
        let message = unsafe { msi.u.msi };
        assert_eq!((message.address_lo, message.data), (0xfee0_0000, 0x4021));
        let ioapic_pins: Vec<u32> = entries
            .iter()
            .filter(|e| e.type_ == KVM_IRQ_ROUTING_IRQCHIP)
            // SAFETY: an irqchip entry's union member is `irqchip`.
            .filter(|e| unsafe { e.u.irqchip.irqchip } == KVM_IRQCHIP_IOAPIC)
            .map(|e| e.gsi)
            .collect();
        assert_eq!(ioapic_pins, (0..24).collect::<Vec<_>>());
    }

    #[test]
    fn copy_out_pads_with_zeros() {
        let mut data = [0xaa; 4];
        copy_out(&[1, 2, 3], 1, &mut data);
        assert_eq!(data, [2, 3, 0, 0]);
    }
}
