//! The line under a form field that says what is wrong with it (or, before the user has typed
//! anything, what the field wants): a non-activatable row, hidden while there is nothing to say.
//! The New VM assistant and the hardware editor put one under each field.

use adw::prelude::*;

#[derive(Clone)]
pub struct FieldError {
    /// Add this to the group, right after the field's own row.
    pub row: adw::PreferencesRow,
    label: gtk::Label,
}

impl Default for FieldError {
    fn default() -> Self {
        FieldError::new()
    }
}

impl FieldError {
    pub fn new() -> FieldError {
        let label = gtk::Label::builder()
            .xalign(0.0)
            .wrap(true)
            .selectable(true)
            .margin_start(12)
            .margin_end(12)
            .margin_top(6)
            .margin_bottom(6)
            .css_classes(["caption", "error"])
            .build();
        let row = adw::PreferencesRow::builder()
            .child(&label)
            .activatable(false)
            .selectable(false)
            .focusable(false)
            .visible(false)
            .build();
        FieldError { row, label }
    }

    /// A new line, added to `group` under the row added last.
    pub fn below(group: &adw::PreferencesGroup) -> FieldError {
        let error = FieldError::new();
        group.add(&error.row);
        error
    }

    /// Shows `message` as an error, or hides the line.
    pub fn show(&self, message: Option<&str>) {
        self.show_as(message, true);
    }

    /// Shows `message`, styled as an error or as a quiet hint.
    pub fn show_as(&self, message: Option<&str>, as_error: bool) {
        self.row.set_visible(message.is_some());
        self.label.set_label(message.unwrap_or_default());
        self.label.set_css_classes(if as_error {
            &["caption", "error"]
        } else {
            &["caption", "dim-label"]
        });
    }
}
