//! An empty GTK4 window: the floor for the GUI's cold-start benchmark (bench/gui.py). It does
//! what any GTK4 app must before its first window shows, and nothing else.

use gtk::prelude::*;

fn main() -> gtk::glib::ExitCode {
    let app = gtk::Application::builder()
        .application_id("dev.hangar.EmptyWindow")
        .flags(gtk::gio::ApplicationFlags::NON_UNIQUE)
        .build();
    app.connect_activate(|app| {
        gtk::ApplicationWindow::builder()
            .application(app)
            .title("Empty")
            .default_width(800)
            .default_height(600)
            .build()
            .present();
    });
    app.run()
}
