//! Words and rules of the VM list, apart from GTK: state names for people, icons, which
//! actions a state allows, and the name search.

use gettextrs::gettext;

use crate::connection::VmAction;

/// The state as a user reads it.
pub fn state_label(state: &str) -> String {
    match state {
        "running" => gettext("Running"),
        "paused" => gettext("Paused"),
        "shutoff" => gettext("Shut off"),
        "crashed" => gettext("Crashed"),
        "" => gettext("Unknown"),
        other => other.to_string(),
    }
}

pub fn state_icon(state: &str) -> &'static str {
    match state {
        "running" => "media-playback-start-symbolic",
        "paused" => "media-playback-pause-symbolic",
        "crashed" => "dialog-error-symbolic",
        _ => "system-shutdown-symbolic",
    }
}

/// Whether `action` makes sense for a VM in `state` (hangard refuses the others anyway; this
/// keeps the buttons honest).
pub fn allows(state: &str, action: VmAction) -> bool {
    match action {
        VmAction::Start => matches!(state, "shutoff" | "crashed"),
        VmAction::Suspend => state == "running",
        VmAction::Resume => state == "paused",
        VmAction::Shutdown | VmAction::Reboot => state == "running",
        VmAction::Destroy => matches!(state, "running" | "paused" | "crashed"),
    }
}

/// Case-insensitive substring match of the search text in a VM's name.
pub fn matches_search(name: &str, query: &str) -> bool {
    let query = query.trim();
    query.is_empty() || name.to_lowercase().contains(&query.to_lowercase())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn actions_follow_the_state() {
        assert!(allows("shutoff", VmAction::Start));
        assert!(!allows("running", VmAction::Start));
        assert!(allows("running", VmAction::Suspend));
        assert!(allows("paused", VmAction::Resume));
        assert!(!allows("shutoff", VmAction::Destroy));
        assert!(allows("crashed", VmAction::Destroy));
    }

    #[test]
    fn search_is_by_name_ignoring_case() {
        assert!(matches_search("Alpine-Edge", "edge"));
        assert!(matches_search("anything", "  "));
        assert!(!matches_search("debian", "alp"));
    }

    #[test]
    fn states_have_words_and_icons() {
        assert_eq!(state_label("shutoff"), "Shut off");
        assert_eq!(state_icon("paused"), "media-playback-pause-symbolic");
    }
}
