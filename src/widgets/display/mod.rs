//! The graphical console: the display stream's protocol (`stream`), tile bookkeeping (`tiles`),
//! geometry and keys (`input`), the socket and shared framebuffer (`socket`), the benchmarks'
//! frame trace (`trace`), and the GTK widget built from `gdk::MemoryTexture` tiles (`widget`).
//! On GTK ≥ 4.16 a texture with update regions (or a dmabuf) could replace the tiles; GTK 4.8
//! has neither.

pub mod input;
pub mod socket;
pub mod stream;
pub mod tiles;
pub mod trace;
pub mod widget;

pub use widget::DisplayWidget;
