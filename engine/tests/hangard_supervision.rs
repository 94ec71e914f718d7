//! Supervision: workers outlive hangard, a restarted hangard re-attaches them, a worker killed
//! with -9 shows up as crashed, and two clients updating at once never lose a change.

#[path = "support/hangard.rs"]
mod hangard_env;
mod support;

use std::process::Command;
use std::time::Duration;

use hangard_env::{process_alive, Host};
use serde_json::{json, Value};
use support::{require_kvm, tiny_guest};

const BOOT: Duration = Duration::from_secs(30);

fn define(host: &Host, name: &str, guest: &str) -> String {
    let file = host.definition_file(
        name,
        &json!({"name": name, "kernel": tiny_guest(guest), "memory": "32M"}),
    );
    let defined = host.ctl_json(&["define", file.to_str().unwrap()]);
    defined["uuid"].as_str().unwrap().to_string()
}

#[test]
fn vms_outlive_a_killed_hangard_and_are_reattached() {
    require_kvm();
    let mut host = Host::new();
    let uuid = define(&host, "echo", "echo");
    host.ctl_ok(&["start", "echo"]);
    let worker = host.worker_pid(&uuid).expect("worker pid file");
    {
        let mut console = host.console("echo");
        console.expect("ready", BOOT);
    }

    host.kill_hangard();
    std::thread::sleep(Duration::from_millis(300));
    assert!(process_alive(worker), "the worker died with hangard");

    host.start_hangard();
    assert!(
        host.hangard_log().contains("re-attached VM \"echo\""),
        "{}",
        host.hangard_log()
    );
    let running = host.ctl_json(&["list"]);
    assert_eq!(running[0]["name"], "echo", "{running}");
    assert_eq!(running[0]["state"], "running", "{running}");

    // The serial console works through the new hangard, and the backlog is still there.
    let mut console = host.console("echo");
    console.expect("ready", BOOT);
    console.type_text("ping-after-restart\n");
    console.expect("ping-after-restart", BOOT);

    // Events flow again: the guest powers off and the new hangard notices.
    console.type_text("q");
    console.expect("bye", BOOT);
    host.wait_state("echo", "shutoff", BOOT);
    assert!(console.wait_exit(BOOT).success());
    assert!(!process_alive(worker));
}

#[test]
fn a_worker_killed_with_9_leaves_a_crashed_vm_with_the_signal() {
    require_kvm();
    let host = Host::new();
    let uuid = define(&host, "victim", "ticker");
    host.ctl_ok(&["start", "victim"]);
    let worker = host.worker_pid(&uuid).expect("worker pid file");
    let status = Command::new("kill")
        .args(["-9", &worker.to_string()])
        .status()
        .unwrap();
    assert!(status.success());

    let reason = host.wait_state("victim", "crashed", BOOT);
    assert!(reason.contains("signal 9"), "{reason}");
    assert!(reason.contains("SIGKILL"), "{reason}");
    let text = host.ctl_ok(&["domstate", "victim"]);
    assert!(
        text.starts_with("crashed (") && text.contains("signal 9"),
        "{text}"
    );
    let all = host.ctl_json(&["list", "--all"]);
    assert_eq!(all[0]["state"], "crashed");

    // Acknowledge the crash, then the VM starts again.
    host.ctl_ok(&["destroy", "victim"]);
    assert_eq!(host.state("victim").0, "shutoff");
    host.ctl_ok(&["start", "victim"]);
    assert_eq!(host.state("victim").0, "running");
    host.ctl_ok(&["destroy", "victim"]);
}

#[test]
fn a_guest_crash_is_reported_and_the_worker_can_be_destroyed() {
    require_kvm();
    let mut host = Host::new();
    define(&host, "tf", "triplefault");
    host.ctl_ok(&["start", "tf"]);
    let reason = host.wait_state("tf", "crashed", BOOT);
    // The guest may crash before hangard connects; the worker's status says why then.
    assert!(
        reason.contains("the guest crashed (triple-fault on vCPU 0)"),
        "{reason}"
    );

    // A restarted hangard re-attaches the crashed VM and still knows why it crashed.
    host.kill_hangard();
    host.start_hangard();
    assert_eq!(host.state("tf"), ("crashed".to_string(), reason.clone()));
    host.ctl_ok(&["destroy", "tf"]);
    assert_eq!(host.state("tf").0, "shutoff");
}

#[test]
fn concurrent_updates_conflict_and_lose_nothing() {
    let host = Host::new();
    let file = host.definition_file(
        "shared",
        &json!({"name": "shared", "kernel": tiny_guest("hello"), "memory": "32M"}),
    );
    host.ctl_ok(&["define", file.to_str().unwrap()]);

    // Both clients read generation 1 and change different fields.
    let base = host.ctl_json(&["dumpdef", "shared"]);
    assert_eq!(base["generation"], 1);
    let mut alice = base.clone();
    alice["vcpus"] = json!(2);
    let mut bob = base.clone();
    bob["memory"] = json!("64M");
    let alice_file = host.definition_file("alice", &alice);
    let bob_file = host.definition_file("bob", &bob);

    let run = |path: std::path::PathBuf| {
        host.ctl_command(&["--json", "update", "shared", path.to_str().unwrap()])
            .output()
            .unwrap()
    };
    let (a, b) = std::thread::scope(|scope| {
        let a = scope.spawn(|| run(alice_file.clone()));
        let b = scope.spawn(|| run(bob_file.clone()));
        (a.join().unwrap(), b.join().unwrap())
    });
    let outcomes = [&a, &b];
    let winners = outcomes.iter().filter(|o| o.status.success()).count();
    assert_eq!(winners, 1, "exactly one update wins: {a:?} {b:?}");
    let loser = outcomes.iter().find(|o| !o.status.success()).unwrap();
    let error: Value = serde_json::from_slice(&loser.stdout).unwrap();
    assert_eq!(error["error"], "dev.hangar.Error.Conflict", "{error}");
    let message = error["message"].as_str().unwrap();
    assert!(
        message.contains("generation 1") && message.contains("generation 2"),
        "{message}"
    );
    assert!(message.contains("dumpdef"), "{message}");

    // The loser re-reads, reapplies and succeeds; both changes are there.
    let alice_won = a.status.success();
    let mut current = host.ctl_json(&["dumpdef", "shared"]);
    assert_eq!(current["generation"], 2);
    if alice_won {
        assert_eq!(current["vcpus"], 2);
        current["memory"] = json!("64M");
    } else {
        assert_eq!(current["memory"], "64M");
        current["vcpus"] = json!(2);
    }
    let retry = host.definition_file("retry", &current);
    host.ctl_ok(&["update", "shared", retry.to_str().unwrap()]);
    let last = host.ctl_json(&["dumpdef", "shared"]);
    assert_eq!(last["generation"], 3);
    assert_eq!(last["vcpus"], 2);
    assert_eq!(last["memory"], "64M");

    // And on disk, as a restarted hangard would read it.
    let files = Host::files_in(&host.definitions_dir());
    assert_eq!(files.len(), 1, "{files:?}");
    let stored: Value =
        serde_json::from_slice(&std::fs::read(host.definitions_dir().join(&files[0])).unwrap())
            .unwrap();
    assert_eq!(stored["generation"], 3);
    assert_eq!(stored["vcpus"], 2);
}

#[test]
fn a_second_hangard_or_one_without_a_runtime_dir_refuses_clearly() {
    let host = Host::new();
    let run = |command: &mut Command| {
        let output = command
            .env("DBUS_SESSION_BUS_ADDRESS", &host.bus_address)
            .env("XDG_CONFIG_HOME", host.config_dir())
            .env("XDG_DATA_HOME", host.data_dir())
            .output()
            .unwrap();
        assert!(!output.status.success());
        String::from_utf8_lossy(&output.stderr).into_owned()
    };
    let stderr =
        run(Command::new(hangard_env::hangard_binary()).env("XDG_RUNTIME_DIR", host.runtime_dir()));
    assert!(
        stderr.contains("another hangard already owns dev.hangar.Hangar"),
        "{stderr}"
    );
    let stderr = run(Command::new(hangard_env::hangard_binary()).env_remove("XDG_RUNTIME_DIR"));
    assert!(stderr.contains("XDG_RUNTIME_DIR is not set"), "{stderr}");
    // The first hangard is unaffected.
    assert_eq!(host.ctl_json(&["list", "--all"]), json!([]));
}
