//! Force Off asks first (unless turned off in Preferences): it stops the guest at once, like
//! pulling the power cord, and whatever the guest had not written is lost.

use adw::prelude::*;
use gettextrs::gettext;

pub fn ask(parent: &impl IsA<gtk::Window>, name: &str, confirmed: impl Fn() + 'static) {
    let dialog = adw::MessageDialog::new(
        Some(parent),
        Some(&gettext("Force off {name}?").replace("{name}", name)),
        Some(&gettext(
            "The VM stops at once, like pulling its power cord: what the guest has not saved is lost. Shut Down asks the guest to power off cleanly instead.",
        )),
    );
    dialog.add_response("cancel", &gettext("Cancel"));
    dialog.add_response("force-off", &gettext("Force Off"));
    dialog.set_response_appearance("force-off", adw::ResponseAppearance::Destructive);
    dialog.set_default_response(Some("cancel"));
    dialog.set_close_response("cancel");
    dialog.connect_response(None, move |_, response| {
        if response == "force-off" {
            confirmed();
        }
    });
    dialog.present();
}
