//! Deleting a VM: a confirmation that lists the VM's disks, each with a check box to delete its
//! volume too (as virt-manager's delete dialog does).

use adw::prelude::*;
use gettextrs::gettext;

use crate::connection::VmInfo;

/// Asks, then calls `confirmed` with the volumes to delete with the VM.
pub fn ask(parent: &impl IsA<gtk::Window>, vm: &VmInfo, confirmed: impl Fn(Vec<String>) + 'static) {
    let dialog = adw::MessageDialog::new(
        Some(parent),
        Some(&gettext("Delete {name}?").replace("{name}", &vm.name)),
        Some(&gettext(
            "The VM's definition is removed. Checked volumes are deleted with it; this cannot be undone.",
        )),
    );
    let checks = gtk::Box::new(gtk::Orientation::Vertical, 6);
    let mut boxes = Vec::new();
    if vm.disks.is_empty() {
        checks.append(&gtk::Label::new(Some(&gettext("This VM has no disks."))));
    }
    for (volume, readonly) in &vm.disks {
        let label = if *readonly {
            gettext("Delete volume {volume} (read-only, maybe shared)")
        } else {
            gettext("Delete volume {volume}")
        }
        .replace("{volume}", volume);
        // Read-only disks are often shared bases: kept unless asked.
        let check = gtk::CheckButton::builder()
            .label(label)
            .active(!readonly)
            .build();
        checks.append(&check);
        boxes.push((volume.clone(), check));
    }
    dialog.set_extra_child(Some(&checks));
    dialog.add_response("cancel", &gettext("Cancel"));
    dialog.add_response("delete", &gettext("Delete"));
    dialog.set_response_appearance("delete", adw::ResponseAppearance::Destructive);
    dialog.set_default_response(Some("cancel"));
    dialog.set_close_response("cancel");
    dialog.connect_response(None, move |_, response| {
        if response == "delete" {
            confirmed(
                boxes
                    .iter()
                    .filter(|(_, check)| check.is_active())
                    .map(|(volume, _)| volume.clone())
                    .collect(),
            );
        }
    });
    dialog.present();
}
