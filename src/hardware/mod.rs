//! The hardware editor: the Details page of a VM's window, editable while the VM is shut off.
//! `model` is the edit itself without GTK (the draft against the loaded definition, the JSON
//! and volumes Apply sends, refusals mapped to rows, sizes as people write them); `hangard`
//! the calls it makes; `page` the widgets.

pub mod hangard;
pub mod model;
pub mod page;
