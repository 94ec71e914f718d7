//! gettext set-up: the "hangar" text domain, found next to the installed binary
//! (`../share/locale`), through `HANGAR_LOCALEDIR`, or in the build's own compiled catalogs.

use std::path::PathBuf;

pub const DOMAIN: &str = "hangar";

/// Catalogs compiled by build.rs from po/*.po, for running from the source tree.
const BUILD_LOCALEDIR: &str = concat!(env!("OUT_DIR"), "/locale");

fn localedir() -> PathBuf {
    if let Some(dir) = std::env::var_os("HANGAR_LOCALEDIR") {
        return dir.into();
    }
    let installed = std::env::current_exe()
        .ok()
        .and_then(|exe| Some(exe.parent()?.parent()?.join("share/locale")))
        .filter(|dir| dir.join("ru/LC_MESSAGES/hangar.mo").is_file());
    installed.unwrap_or_else(|| BUILD_LOCALEDIR.into())
}

pub fn init() {
    gettextrs::setlocale(gettextrs::LocaleCategory::LcAll, "");
    // Without the domain the GUI stays in English; that is no reason to stop.
    let _ = gettextrs::bindtextdomain(DOMAIN, localedir());
    let _ = gettextrs::bind_textdomain_codeset(DOMAIN, "UTF-8");
    let _ = gettextrs::textdomain(DOMAIN);
}
