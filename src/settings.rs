//! Hangar's preferences in GSettings (schema `dev.hangar.App`, data/dev.hangar.App.gschema.xml):
//! found where the user's session keeps schemas once scripts/install-user-data has installed
//! it, or else in the build's own compiled copy, for running from the source tree. Without
//! either, the GUI runs on the defaults and the Preferences window says why.

use gtk::gio;
use gtk::prelude::*;

use crate::widgets::display::input::{GrabKey, ScaleMode};
use crate::APP_ID;

/// The schema compiled by build.rs.
const BUILD_SCHEMA_DIR: &str = concat!(env!("OUT_DIR"), "/schemas");

/// The preferences, or `None` when no schema can be found.
pub fn settings() -> Option<gio::Settings> {
    let default = gio::SettingsSchemaSource::default();
    if let Some(schema) = default.as_ref().and_then(|s| s.lookup(APP_ID, true)) {
        return Some(gio::Settings::new_full(
            &schema,
            None::<&gio::SettingsBackend>,
            None,
        ));
    }
    let built =
        gio::SettingsSchemaSource::from_directory(BUILD_SCHEMA_DIR, default.as_ref(), false)
            .ok()?;
    let schema = built.lookup(APP_ID, false)?;
    Some(gio::Settings::new_full(
        &schema,
        None::<&gio::SettingsBackend>,
        None,
    ))
}

/// The graph columns of the VM list, by their settings key.
pub const COLUMN_KEYS: [&str; 4] = [
    "show-cpu-column",
    "show-memory-column",
    "show-disk-column",
    "show-network-column",
];

pub fn scale_mode(settings: Option<&gio::Settings>) -> ScaleMode {
    match settings.map(|s| s.string("console-scaling")).as_deref() {
        Some("1:1") => ScaleMode::OneToOne,
        _ => ScaleMode::Fit,
    }
}

pub fn grab_key(settings: Option<&gio::Settings>) -> GrabKey {
    settings.map_or(GrabKey::default(), |s| {
        GrabKey::from_nick(&s.string("grab-key"))
    })
}

/// Samples across a performance graph.
pub fn graph_history(settings: Option<&gio::Settings>) -> usize {
    settings.map_or(120, |s| s.uint("graph-history") as usize)
}

pub fn confirm(settings: Option<&gio::Settings>, key: &str) -> bool {
    settings.is_none_or(|s| s.boolean(key))
}
