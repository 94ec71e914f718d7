//! The daemon side of Hangar: the headless model behind `hangard` (libvirt's place in the
//! classic stack). Definitions, storage, supervision of workers, stats and host capabilities
//! live here without D-Bus; `service` puts them on the bus and `api` is what clients share.

pub mod api;
pub mod capabilities;
pub mod definition;
pub mod inventory;
pub mod locations;
pub mod network;
pub mod service;
pub mod stats;
pub mod storage;
pub mod store;
pub mod supervisor;
