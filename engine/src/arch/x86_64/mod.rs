//! x86_64: memory layout, boot protocols, CPU state and ACPI.

pub mod acpi;
pub mod boot;
pub mod bzimage;
pub mod cpuid;
pub mod layout;
pub mod msr;
pub mod regs;
