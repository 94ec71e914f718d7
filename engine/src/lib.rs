//! Hangar's engine: the `hangar-vmm` worker (one process per VM) and the protocol its clients
//! speak.

pub mod arch;
pub mod config;
pub mod control;
pub mod devices;
pub mod host;
pub mod machine;
pub mod memory;
pub mod protocol;
pub mod vcpu;
pub mod worker;
