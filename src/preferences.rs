//! The Preferences window: statistics interval and graph history, the VM list's graph columns,
//! the console's default scaling and keyboard release keys, and which actions ask first. Every
//! row is bound to its GSettings key, so a change takes effect at once wherever it is used.

use adw::prelude::*;
use gettextrs::{gettext, ngettext};
use gtk::gio;

use crate::widgets::display::input::GrabKey;

/// Statistics intervals offered, in milliseconds.
const INTERVALS: [u32; 5] = [500, 1000, 2000, 5000, 10000];
/// Graph history lengths offered, in samples.
const HISTORIES: [u32; 4] = [60, 120, 300, 600];

pub fn show(parent: &impl IsA<gtk::Window>, settings: Option<&gio::Settings>) {
    let window = adw::PreferencesWindow::builder()
        .title(gettext("Preferences"))
        .transient_for(parent)
        .modal(true)
        .search_enabled(false)
        .build();
    let Some(settings) = settings else {
        let page = adw::PreferencesPage::new();
        let group = adw::PreferencesGroup::builder()
            .title(gettext("Preferences are not available"))
            .description(gettext(
                "Hangar's settings schema (dev.hangar.App) is not installed. Run scripts/install-user-service, or start Hangar from its build directory.",
            ))
            .build();
        page.add(&group);
        window.add(&page);
        window.present();
        return;
    };

    let general = adw::PreferencesPage::builder()
        .title(gettext("General"))
        .icon_name("preferences-system-symbolic")
        .build();
    let stats = adw::PreferencesGroup::builder()
        .title(gettext("Statistics"))
        .description(gettext(
            "How often running VMs are sampled for their graphs, and how much of it the graphs show.",
        ))
        .build();
    stats.add(&choice_row(
        settings,
        "stats-interval",
        &gettext("Sample every"),
        &INTERVALS,
        |ms| {
            if ms < 1000 {
                gettext("{n} ms").replace("{n}", &ms.to_string())
            } else {
                gettext("{n} s").replace("{n}", &(ms / 1000).to_string())
            }
        },
    ));
    stats.add(&choice_row(
        settings,
        "graph-history",
        &gettext("Graph history"),
        &HISTORIES,
        |samples| {
            ngettext("{n} sample", "{n} samples", samples).replace("{n}", &samples.to_string())
        },
    ));
    general.add(&stats);
    let columns = adw::PreferencesGroup::builder()
        .title(gettext("Graphs in the VM list"))
        .build();
    for (key, title) in [
        ("show-cpu-column", gettext("CPU usage")),
        ("show-memory-column", gettext("Memory usage")),
        ("show-disk-column", gettext("Disk I/O")),
        ("show-network-column", gettext("Network I/O")),
    ] {
        columns.add(&switch_row(settings, key, &title, None));
    }
    general.add(&columns);
    window.add(&general);

    let console = adw::PreferencesPage::builder()
        .title(gettext("Console"))
        .icon_name("video-display-symbolic")
        .build();
    let display = adw::PreferencesGroup::builder()
        .title(gettext("Graphical console"))
        .build();
    let scaling = adw::ComboRow::builder()
        .title(gettext("Scaling"))
        .subtitle(gettext("How a console window first shows the VM's screen"))
        .model(&gtk::StringList::new(&[
            &gettext("Scale to Fit"),
            &gettext("Actual Size (1:1)"),
        ]))
        .build();
    bind_selection(&scaling, settings, "console-scaling", &["fit", "1:1"]);
    display.add(&scaling);
    let labels: Vec<String> = GrabKey::ALL.iter().map(|k| k.label()).collect();
    let label_refs: Vec<&str> = labels.iter().map(String::as_str).collect();
    let grab = adw::ComboRow::builder()
        .title(gettext("Release keyboard with"))
        .subtitle(gettext(
            "The keys that give the keyboard back to this computer after a click in the console",
        ))
        .model(&gtk::StringList::new(&label_refs))
        .build();
    let nicks: Vec<&str> = GrabKey::ALL.iter().map(|k| k.nick()).collect();
    bind_selection(&grab, settings, "grab-key", &nicks);
    display.add(&grab);
    console.add(&display);
    let confirm = adw::PreferencesGroup::builder()
        .title(gettext("Confirmations"))
        .build();
    confirm.add(&switch_row(
        settings,
        "confirm-force-off",
        &gettext("Ask before Force Off"),
        Some(&gettext(
            "Force Off stops a VM at once, like pulling its power cord",
        )),
    ));
    confirm.add(&switch_row(
        settings,
        "confirm-delete",
        &gettext("Ask before deleting a VM"),
        Some(&gettext(
            "Without asking, the VM's definition is removed and its volumes are kept",
        )),
    ));
    console.add(&confirm);
    window.add(&console);
    window.present();
}

fn switch_row(
    settings: &gio::Settings,
    key: &str,
    title: &str,
    subtitle: Option<&str>,
) -> adw::ActionRow {
    let switch = gtk::Switch::builder().valign(gtk::Align::Center).build();
    settings.bind(key, &switch, "active").build();
    let row = adw::ActionRow::builder()
        .title(title)
        .activatable_widget(&switch)
        .build();
    if let Some(subtitle) = subtitle {
        row.set_subtitle(subtitle);
    }
    row.add_suffix(&switch);
    row
}

/// A row choosing one of `values` of the unsigned key `key`, each shown by `label`. A value
/// set elsewhere (by hand, dconf) that is not offered is added to the list, so it shows.
fn choice_row(
    settings: &gio::Settings,
    key: &'static str,
    title: &str,
    values: &[u32],
    label: impl Fn(u32) -> String,
) -> adw::ComboRow {
    let mut values = values.to_vec();
    let current = settings.uint(key);
    if !values.contains(&current) {
        values.push(current);
        values.sort_unstable();
    }
    let labels: Vec<String> = values.iter().map(|v| label(*v)).collect();
    let label_refs: Vec<&str> = labels.iter().map(String::as_str).collect();
    let row = adw::ComboRow::builder()
        .title(title)
        .model(&gtk::StringList::new(&label_refs))
        .build();
    if let Some(index) = values.iter().position(|v| *v == current) {
        row.set_selected(index as u32);
    }
    let settings = settings.clone();
    row.connect_selected_notify(move |row| {
        if let Some(value) = values.get(row.selected() as usize) {
            let _ = settings.set_uint(key, *value);
        }
    });
    row
}

/// A row choosing one of the string (enum) key's `nicks`.
fn bind_selection(
    row: &adw::ComboRow,
    settings: &gio::Settings,
    key: &'static str,
    nicks: &[&'static str],
) {
    let current = settings.string(key);
    if let Some(index) = nicks.iter().position(|n| *n == current.as_str()) {
        row.set_selected(index as u32);
    }
    let settings = settings.clone();
    let nicks = nicks.to_vec();
    row.connect_selected_notify(move |row| {
        if let Some(nick) = nicks.get(row.selected() as usize) {
            let _ = settings.set_string(key, nick);
        }
    });
}
