//! The About window.

use adw::prelude::*;
use gettextrs::gettext;

pub fn show(parent: &impl IsA<gtk::Window>) {
    let about = adw::AboutWindow::builder()
        .transient_for(parent)
        .modal(true)
        .application_name(gettext("Hangar"))
        .application_icon(crate::APP_ID)
        .version(env!("CARGO_PKG_VERSION"))
        .developer_name(gettext("The Hangar developers"))
        .comments(gettext(
            "Create, run and watch virtual machines on this computer's KVM.",
        ))
        .license_type(gtk::License::Gpl30)
        // Translators: your names, one per line, shown in the About window.
        .translator_credits(gettext("translator-credits"))
        .build();
    about.present();
}
