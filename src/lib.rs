//! Hangar's GUI as a library: the windows (`manager`, `vm_window`, `delete_dialog`), the
//! connection to hangard, the widgets (console display, graphs) and the pure logic beside them.
//! `src/main.rs` is the `hangar` program; tests use the widgets directly.

pub mod about;
pub mod connection;
pub mod delete_dialog;
pub mod force_off_dialog;
pub mod hardware;
pub mod host_limits;
pub mod i18n;
pub mod manager;
pub mod new_vm;
pub mod preferences;
pub mod recording;
pub mod serial_text;
pub mod settings;
pub mod shortcuts;
pub mod stats_history;
pub mod vm_list;
pub mod vm_window;
pub mod widgets;

/// The GUI's application id. Not hangard's bus name (dev.hangar.Hangar): GApplication owns its
/// id on the session bus.
pub const APP_ID: &str = "dev.hangar.App";
