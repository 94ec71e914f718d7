//! The guest's screen: a linear framebuffer in shared memory, damage found through KVM's dirty
//! log, the stream that hands both to clients, and screenshots.
//!
//! The guest draws into [`Framebuffer`] memory that KVM maps at
//! [`FRAMEBUFFER_START`](crate::arch::x86_64::layout::FRAMEBUFFER_START). Clients get the same
//! memfd and map it read-only; after that only damage rectangles travel, so no pixel is copied
//! between processes.

pub mod damage;
pub mod framebuffer;
pub mod screenshot;
pub mod stream;

pub use damage::{damage_from_dirty_pages, DamageRect};
pub use framebuffer::{Framebuffer, FramebufferError};
