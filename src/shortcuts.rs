//! The keyboard shortcuts window (Ctrl+?). GTK 4.8 fills a GtkShortcutsWindow only from
//! GtkBuilder XML, so the XML is written here from the list below, in the user's language.

use gettextrs::gettext;
use gtk::prelude::*;

/// Sections of (title, [(accelerator, what it does)]).
fn groups() -> Vec<(String, Vec<(&'static str, String)>)> {
    vec![
        (
            gettext("Virtual machines"),
            vec![
                ("<Control>n", gettext("New VM")),
                ("<Control>o", gettext("Open the selected VM")),
                ("Delete", gettext("Delete the selected VM")),
                ("<Control>f", gettext("Search by name")),
            ],
        ),
        (
            gettext("Console"),
            vec![
                (
                    "<Control>Alt_L",
                    gettext("Release the keyboard (as set in Preferences)"),
                ),
                ("F11", gettext("Fullscreen")),
            ],
        ),
        (
            gettext("Serial console"),
            vec![
                ("<Control><Shift>c", gettext("Copy")),
                ("<Control><Shift>v", gettext("Paste")),
                ("<Control>plus", gettext("Larger Text")),
                ("<Control>minus", gettext("Smaller Text")),
                ("<Control>0", gettext("Normal Size")),
            ],
        ),
        (
            gettext("General"),
            vec![
                ("<Control>comma", gettext("Preferences")),
                ("<Control>question", gettext("Keyboard Shortcuts")),
                ("<Control>q", gettext("Quit")),
            ],
        ),
    ]
}

fn escape(text: &str) -> String {
    text.replace('&', "&amp;")
        .replace('<', "&lt;")
        .replace('>', "&gt;")
        .replace('"', "&quot;")
}

/// The GtkBuilder XML of the window, with every text escaped.
pub fn builder_xml(groups: &[(String, Vec<(&str, String)>)]) -> String {
    let mut xml = String::from(
        "<interface><object class=\"GtkShortcutsWindow\" id=\"shortcuts\"><property name=\"modal\">1</property>\
         <child><object class=\"GtkShortcutsSection\"><property name=\"section-name\">hangar</property>",
    );
    for (title, shortcuts) in groups {
        xml.push_str(&format!(
            "<child><object class=\"GtkShortcutsGroup\"><property name=\"title\">{}</property>",
            escape(title)
        ));
        for (accelerator, what) in shortcuts {
            xml.push_str(&format!(
                "<child><object class=\"GtkShortcutsShortcut\"><property name=\"accelerator\">{}</property>\
                 <property name=\"title\">{}</property></object></child>",
                escape(accelerator),
                escape(what)
            ));
        }
        xml.push_str("</object></child>");
    }
    xml.push_str("</object></child></object></interface>");
    xml
}

pub fn show(parent: &impl IsA<gtk::Window>) {
    let builder = gtk::Builder::from_string(&builder_xml(&groups()));
    if let Some(window) = builder.object::<gtk::ShortcutsWindow>("shortcuts") {
        window.set_transient_for(Some(parent));
        window.present();
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn texts_are_escaped_into_the_xml() {
        let xml = builder_xml(&[(
            "Disks & <stuff>".to_string(),
            vec![("<Control>n", "Say \"hi\"".to_string())],
        )]);
        assert!(xml.contains("Disks &amp; &lt;stuff&gt;"), "{xml}");
        assert!(xml.contains("&lt;Control&gt;n"), "{xml}");
        assert!(xml.contains("Say &quot;hi&quot;"), "{xml}");
        assert_eq!(xml.matches("GtkShortcutsShortcut").count(), 1);
    }

    #[test]
    fn every_listed_shortcut_is_in_the_window() {
        let groups = groups();
        let xml = builder_xml(&groups);
        let count: usize = groups.iter().map(|(_, s)| s.len()).sum();
        assert_eq!(xml.matches("class=\"GtkShortcutsShortcut\"").count(), count);
    }
}
