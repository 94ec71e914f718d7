//! `hangar`: Hangar's desktop GUI. Opens the manager window, or with `--show-vm NAME` a VM's
//! window directly. Talks to `hangard` on the session bus.

use clap::Parser;
use gtk::prelude::*;
use gtk::{gio, glib};
use hangar::{i18n, manager, APP_ID};

#[derive(Parser, Debug)]
#[command(name = "hangar", version, about = "Hangar: desktop virtual machines")]
struct Args {
    /// Open the window of the VM with this name instead of the manager window.
    #[arg(long, value_name = "NAME")]
    show_vm: Option<String>,
}

fn main() -> glib::ExitCode {
    let args = Args::parse();
    i18n::init();
    gio::resources_register_include!("hangar.gresource").expect("the bundled GResource loads");

    let app = adw::Application::builder()
        .application_id(APP_ID)
        .flags(gio::ApplicationFlags::NON_UNIQUE)
        .build();
    app.connect_startup(|_| {
        let provider = gtk::CssProvider::new();
        provider.load_from_resource("/dev/hangar/Hangar/style.css");
        if let Some(display) = gtk::gdk::Display::default() {
            gtk::style_context_add_provider_for_display(
                &display,
                &provider,
                gtk::STYLE_PROVIDER_PRIORITY_APPLICATION,
            );
        }
    });
    let relm = relm4::RelmApp::from_app(app)
        .with_args(Vec::new())
        .visible_on_activate(args.show_vm.is_none());
    relm.run::<manager::ManagerWindow>(manager::ManagerInit {
        show_vm: args.show_vm,
    });
    glib::ExitCode::SUCCESS
}
