//! Hangar's engine: the `hangar-vmm` worker (one process per VM) and the protocol its clients
//! speak.

pub mod arch;
pub mod attachments;
pub mod config;
pub mod control;
pub mod devices;
pub mod disk;
pub mod display;
pub mod host;
pub mod machine;
pub mod memory;
pub mod net;
pub mod protocol;
pub mod sandbox;
pub mod vcpu;
pub mod worker;

/// Implements serde's `Serialize` and `Deserialize` through a type's `Display` and `FromStr`,
/// for values written as one string (serial modes, UUIDs).
macro_rules! serde_via_string {
    ($type:ty) => {
        impl serde::Serialize for $type {
            fn serialize<S: serde::Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
                serializer.serialize_str(&self.to_string())
            }
        }

        impl<'de> serde::Deserialize<'de> for $type {
            fn deserialize<D: serde::Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
                <String as serde::Deserialize>::deserialize(deserializer)?
                    .parse()
                    .map_err(serde::de::Error::custom)
            }
        }
    };
}
pub(crate) use serde_via_string;
