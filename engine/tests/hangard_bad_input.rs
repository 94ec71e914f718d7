//! Bad input through hangarctl and D-Bus: each refusal carries a `dev.hangar.Error.*` name and
//! a message naming what is wrong, and nothing is written.

#[path = "support/hangard.rs"]
mod hangard_env;
mod support;

use hangard_env::Host;
use serde_json::json;
use support::tiny_guest;

/// Everything hangard could have written: definitions and volumes.
fn written(host: &Host) -> (Vec<String>, Vec<String>) {
    (
        Host::files_in(&host.definitions_dir()),
        Host::files_in(&host.images_dir()),
    )
}

#[test]
fn invalid_definitions_are_refused_by_field_and_nothing_is_written() {
    let host = Host::new();
    let kernel = tiny_guest("hello");
    let good = host.definition_file(
        "taken",
        &json!({"name": "taken", "kernel": kernel, "memory": "32M"}),
    );
    host.ctl_ok(&["define", good.to_str().unwrap()]);
    let before = written(&host);

    // A link in an allowed place that leads out of it.
    let sneaky = host.dir.path("sneaky-initrd");
    std::os::unix::fs::symlink("/etc/passwd", &sneaky).unwrap();
    let bad_json = host.dir.path("bad-json.json");
    std::fs::write(&bad_json, "{\"name\": \"x\", \"kernel\": ").unwrap();
    let cases: Vec<(std::path::PathBuf, &str, &str)> = vec![
        (
            bad_json,
            "dev.hangar.Error.InvalidDefinition",
            "not a valid VM definition",
        ),
        (
            host.definition_file(
                "unknown",
                &json!({"name": "x", "kernel": kernel, "memroy": "1G"}),
            ),
            "dev.hangar.Error.InvalidDefinition",
            "memroy",
        ),
        (
            host.definition_file("zero", &json!({"name": "x", "kernel": kernel, "memory": 0})),
            "dev.hangar.Error.InvalidDefinition",
            "field \"memory\"",
        ),
        (
            host.definition_file(
                "nokernel",
                &json!({"name": "x", "kernel": "/nonexistent/vmlinuz"}),
            ),
            "dev.hangar.Error.InvalidDefinition",
            "/nonexistent/vmlinuz",
        ),
        (
            host.definition_file("etc", &json!({"name": "x", "kernel": "/etc/hostname"})),
            "dev.hangar.Error.InvalidDefinition",
            "outside the places Hangar reads kernels and images from",
        ),
        (
            host.definition_file(
                "sneaky",
                &json!({"name": "x", "kernel": kernel, "initrd": sneaky}),
            ),
            "dev.hangar.Error.InvalidDefinition",
            "field \"initrd\": /etc/passwd: is outside the places",
        ),
        (
            host.definition_file("dup", &json!({"name": "taken", "kernel": kernel})),
            "dev.hangar.Error.NameTaken",
            "\"taken\" is taken",
        ),
        (
            host.definition_file("slash", &json!({"name": "a/b", "kernel": kernel})),
            "dev.hangar.Error.InvalidDefinition",
            "field \"name\"",
        ),
        (
            host.definition_file(
                "baddisk",
                &json!({"name": "x", "kernel": kernel, "disks": [{"volume": "../etc"}]}),
            ),
            "dev.hangar.Error.InvalidDefinition",
            "disks[0].volume",
        ),
        (
            host.definition_file(
                "nodisk",
                &json!({"name": "x", "kernel": kernel, "disks": [{"volume": "missing.qcow2"}]}),
            ),
            "dev.hangar.Error.InvalidDefinition",
            "field \"disks[0].volume\": there is no volume \"missing.qcow2\" in the pool",
        ),
        (
            host.definition_file(
                "bigscreen",
                &json!({"name": "x", "kernel": kernel, "resolution": "7680x4320"}),
            ),
            "dev.hangar.Error.InvalidDefinition",
            "field \"resolution\": 7680x4320: must be between 640x400 and 3840x2160",
        ),
    ];
    for (file, name, needle) in cases {
        let (error, message, stderr) = host.ctl_err(&["define", file.to_str().unwrap()]);
        assert_eq!(error, name, "{}: {message}", file.display());
        assert!(message.contains(needle), "{}: {message}", file.display());
        assert!(stderr.contains(name), "{stderr}");
        assert_eq!(written(&host), before, "{} wrote something", file.display());
    }

    // Updates are checked the same way, and a failed update changes nothing.
    let zero = host.definition_file(
        "zero-update",
        &json!({"name": "taken", "kernel": kernel, "memory": 0, "generation": 1}),
    );
    let (error, message, _) = host.ctl_err(&["update", "taken", zero.to_str().unwrap()]);
    assert_eq!(error, "dev.hangar.Error.InvalidDefinition", "{message}");
    assert_eq!(host.ctl_json(&["dumpdef", "taken"])["generation"], 1);
    let gone = host.definition_file(
        "gone-update",
        &json!({"name": "taken", "kernel": kernel, "generation": 1,
                "disks": [{"volume": "gone.img"}]}),
    );
    let (error, message, _) = host.ctl_err(&["update", "taken", gone.to_str().unwrap()]);
    assert_eq!(error, "dev.hangar.Error.InvalidDefinition", "{message}");
    assert!(
        message.starts_with("field \"disks[0].volume\""),
        "{message}"
    );
    assert_eq!(host.ctl_json(&["dumpdef", "taken"])["generation"], 1);

    // The same rules hold for a client calling D-Bus directly.
    let bus = host.bus().unwrap();
    let manager = hangar_engine::host::api::ManagerProxyBlocking::new(&bus).unwrap();
    let err = manager.define("{\"name\": 5}").unwrap_err();
    match err {
        zbus::Error::MethodError(name, Some(message), _) => {
            assert_eq!(name.as_str(), "dev.hangar.Error.InvalidDefinition");
            assert!(message.contains("invalid type"), "{message}");
        }
        other => panic!("expected a D-Bus error, got {other:?}"),
    }
    assert_eq!(written(&host), before);
}

#[test]
fn volumes_in_use_and_bad_volume_names_are_refused() {
    let host = Host::new();
    host.ctl_ok(&["vol-create", "root.qcow2", "16M"]);
    let file = host.definition_file(
        "user",
        &json!({"name": "user", "kernel": tiny_guest("hello"), "disks": [{"volume": "root.qcow2"}]}),
    );
    host.ctl_ok(&["define", file.to_str().unwrap()]);
    let before = written(&host);

    let (error, message, _) = host.ctl_err(&["vol-delete", "root.qcow2"]);
    assert_eq!(error, "dev.hangar.Error.InUse");
    assert!(message.contains("\"user\""), "{message}");
    assert!(message.contains("--remove-storage"), "{message}");
    assert_eq!(written(&host), before);

    for bad in ["a/b", "../escape", "..", "/etc/passwd", "x..y"] {
        for args in [
            vec!["vol-create", bad, "1M"],
            vec!["vol-delete", bad],
            vec!["vol-resize", bad, "2M"],
        ] {
            let (error, message, _) = host.ctl_err(&args);
            assert_eq!(
                error, "dev.hangar.Error.InvalidArgument",
                "{args:?}: {message}"
            );
            assert!(message.contains("volume name"), "{args:?}: {message}");
        }
    }
    assert_eq!(written(&host), before);

    let (error, message, _) = host.ctl_err(&["vol-create", "zero.qcow2", "0"]);
    assert_eq!(error, "dev.hangar.Error.InvalidArgument", "{message}");
    let (error, message, _) = host.ctl_err(&["vol-create", "x.vmdk", "1M", "--format", "vmdk"]);
    assert_eq!(error, "dev.hangar.Error.InvalidArgument", "{message}");
    assert!(message.contains("qcow2 or raw"), "{message}");
    let (error, _, _) = host.ctl_err(&["dumpdef", "nobody"]);
    assert_eq!(error, "dev.hangar.Error.NotFound");
    // Importing reads only from the places kernels and images may come from.
    let (error, message, _) = host.ctl_err(&["vol-import", "shadow.img", "/etc/passwd"]);
    assert_eq!(error, "dev.hangar.Error.InvalidArgument", "{message}");
    assert!(message.contains("outside the places"), "{message}");
    assert_eq!(written(&host), before);
}

#[test]
fn hangard_listens_on_the_session_bus_only() {
    let host = Host::new();
    // Every socket hangard holds is a Unix socket: none of its socket inodes is in the
    // kernel's TCP or UDP tables.
    let inodes: Vec<String> = std::fs::read_dir(format!("/proc/{}/fd", host.hangard_pid()))
        .unwrap()
        .filter_map(|fd| {
            let target = std::fs::read_link(fd.ok()?.path()).ok()?;
            let text = target.to_str()?;
            Some(
                text.strip_prefix("socket:[")?
                    .trim_end_matches(']')
                    .to_string(),
            )
        })
        .collect();
    assert!(!inodes.is_empty(), "hangard holds no socket at all");
    for table in ["tcp", "tcp6", "udp", "udp6"] {
        let text = std::fs::read_to_string(format!("/proc/net/{table}")).unwrap_or_default();
        for line in text.lines().skip(1) {
            let inode = line.split_whitespace().nth(9).unwrap_or("");
            assert!(
                !inodes.iter().any(|own| own == inode),
                "hangard has an {table} socket: {line}"
            );
        }
    }
    let unix = std::fs::read_to_string("/proc/net/unix").unwrap();
    assert!(
        inodes.iter().any(|own| unix
            .lines()
            .any(|l| l.split_whitespace().nth(6) == Some(own))),
        "hangard's bus connection is not a Unix socket"
    );
}

#[test]
fn a_running_vm_cannot_be_undefined() {
    support::require_kvm();
    let host = Host::new();
    let file = host.definition_file(
        "busy",
        &json!({"name": "busy", "kernel": tiny_guest("ticker"), "memory": "32M"}),
    );
    host.ctl_ok(&["define", file.to_str().unwrap()]);
    host.ctl_ok(&["start", "busy"]);
    let (error, message, _) = host.ctl_err(&["undefine", "busy"]);
    assert_eq!(error, "dev.hangar.Error.InvalidState");
    assert!(message.contains("destroy"), "{message}");
    assert_eq!(Host::files_in(&host.definitions_dir()).len(), 1);
    host.ctl_ok(&["destroy", "busy"]);
    host.ctl_ok(&["undefine", "busy"]);
}

#[test]
fn without_hangard_clients_are_told_how_to_get_one() {
    let host = Host::new_without_hangard();
    let (error, message, _) = host.ctl_err(&["list", "--all"]);
    assert_eq!(error, "org.freedesktop.DBus.Error.ServiceUnknown");
    assert!(message.contains("hangard is not running"), "{message}");
    assert!(message.contains("install-user-service"), "{message}");
}

#[test]
fn an_unknown_vm_uuid_is_named_as_such() {
    let host = Host::new();
    let (error, message, _) = host.ctl_err(&["start", "00000000-0000-4000-8000-000000000000"]);
    assert_eq!(error, "org.freedesktop.DBus.Error.UnknownObject");
    assert!(message.contains("no such VM"), "{message}");
}
