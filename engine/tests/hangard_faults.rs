//! Faults around the management layer: hangard killed with -9 in the middle of writing a
//! definition, and a VM's passt dying under it. A real dbus-daemon, a real hangard, real workers
//! and a real passt.

#[path = "support/hangard.rs"]
mod hangard_env;
mod support;

use std::time::{Duration, Instant};

use hangard_env::{process_alive, Host};
use serde_json::{json, Value};
use support::{require_kvm, tiny_guest};

const ROUNDS: u64 = 12;

/// A command line whose every word carries `mark`, so a definition mixed from two writes shows.
fn cmdline(mark: u64) -> String {
    (0..150)
        .map(|i| format!("m{i}={mark}"))
        .collect::<Vec<_>>()
        .join(" ")
}

/// The single mark of a stored definition's command line; panics on a mix.
fn mark_of(definition: &Value) -> u64 {
    let marks: std::collections::BTreeSet<&str> = definition["cmdline"]
        .as_str()
        .unwrap()
        .split(' ')
        .map(|word| word.split('=').nth(1).unwrap())
        .collect();
    assert_eq!(
        marks.len(),
        1,
        "a definition mixed from two writes: {marks:?}"
    );
    marks.into_iter().next().unwrap().parse().unwrap()
}

#[test]
fn hangard_killed_while_writing_leaves_the_old_or_the_new_definition() {
    let mut host = Host::new();
    let file = host.definition_file(
        "precious",
        &json!({"name": "precious", "kernel": tiny_guest("hello"), "memory": "32M",
                "cmdline": cmdline(0)}),
    );
    let uuid = host.ctl_json(&["define", file.to_str().unwrap()])["uuid"]
        .as_str()
        .unwrap()
        .to_string();
    let stored = host.definitions_dir().join(format!("{uuid}.json"));
    let mut last_seen = 0;
    for round in 0..ROUNDS {
        // A client updates as fast as it can; hangard dies somewhere in the middle.
        let bus = host.bus().unwrap();
        let writer = std::thread::spawn(move || {
            let Ok(vm) = Host::vm_proxy(&bus, "precious") else {
                return 0;
            };
            let mut acknowledged = 0;
            loop {
                let Ok(text) = vm.get_definition() else {
                    return acknowledged;
                };
                let mut definition: Value = serde_json::from_str(&text).unwrap();
                let generation = definition["generation"].as_u64().unwrap();
                let next = mark_of(&definition) + 1;
                definition["cmdline"] = json!(cmdline(next));
                match vm.update_definition(&definition.to_string(), generation) {
                    Ok(_) => acknowledged = next,
                    Err(_) => return acknowledged,
                }
            }
        });
        std::thread::sleep(Duration::from_millis(30 + round * 23));
        host.kill_hangard();
        let acknowledged = writer.join().unwrap();

        // On disk: one whole definition, never a mix, never older than what hangard confirmed.
        let definition: Value = serde_json::from_slice(&std::fs::read(&stored).unwrap())
            .unwrap_or_else(|err| panic!("round {round}: the definition is not JSON: {err}"));
        let mark = mark_of(&definition);
        assert!(
            mark >= acknowledged && mark <= acknowledged + 1,
            "round {round}: on disk {mark}, confirmed to the client {acknowledged}"
        );
        assert_eq!(definition["generation"], mark + 1, "round {round}");
        assert!(
            mark >= last_seen,
            "round {round}: went back from {last_seen} to {mark}"
        );
        last_seen = mark;

        // The restarted hangard has it, and no temp file of the killed one is left behind.
        host.start_hangard();
        let listed = host.ctl_json(&["dumpdef", "precious"]);
        assert_eq!(mark_of(&listed), mark, "round {round}");
        let files = Host::files_in(&host.definitions_dir());
        assert_eq!(files, [format!("{uuid}.json")], "round {round}");
    }
    assert!(last_seen > 0, "no update ever landed");
    println!(
        "{ROUNDS} kills of hangard mid-update: {last_seen} updates, no definition lost or mixed"
    );
}

#[test]
fn a_vm_keeps_running_when_its_passt_dies_and_gets_a_new_one_on_restart() {
    require_kvm();
    assert!(
        hangar_engine::host::storage::find_in_path("passt").is_some(),
        "passt is missing; run scripts/install-deps"
    );
    let host = Host::new();
    let file = host.definition_file(
        "net",
        &json!({"name": "net", "kernel": tiny_guest("echo"), "memory": "32M",
                "display": "none", "nics": [{"mode": "user"}]}),
    );
    let uuid = host.ctl_json(&["define", file.to_str().unwrap()])["uuid"]
        .as_str()
        .unwrap()
        .to_string();
    host.ctl_ok(&["start", "net"]);
    let runtime = host.runtime_dir().join("hangar").join(&uuid);
    let passt_pid = || -> u32 {
        std::fs::read_to_string(runtime.join("passt0.pid"))
            .unwrap()
            .trim()
            .parse()
            .unwrap()
    };
    let first = passt_pid();
    let worker = host.worker_pid(&uuid).unwrap();
    let mut console = host.console("net");
    console.expect("ready", Duration::from_secs(30));

    // passt dies: the worker loses its network backend and nothing else.
    let status = std::process::Command::new("kill")
        .args(["-9", &first.to_string()])
        .status()
        .unwrap();
    assert!(status.success());
    let deadline = Instant::now() + Duration::from_secs(5);
    while process_alive(first) {
        assert!(Instant::now() < deadline, "passt survived kill -9");
        std::thread::sleep(Duration::from_millis(10));
    }
    std::thread::sleep(Duration::from_millis(500));
    assert!(process_alive(worker), "the worker died with passt");
    assert_eq!(host.state("net").0, "running");
    console.type_text("still-here\n");
    console.expect("still-here", Duration::from_secs(30));
    drop(console);

    // A restart of the VM brings a new passt, and the worker is connected to it.
    host.ctl_ok(&["destroy", "net"]);
    host.ctl_ok(&["start", "net"]);
    let second = passt_pid();
    assert_ne!(second, first);
    assert!(process_alive(second));
    let worker = host.worker_pid(&uuid).unwrap();
    let socket = runtime.join("net0.sock");
    assert!(socket.exists(), "no passt socket after the restart");
    assert!(
        connected_pair(second, worker),
        "the restarted worker is not connected to the new passt"
    );
    host.ctl_ok(&["destroy", "net"]);
}

/// Whether `a` and `b` hold the two ends of one established Unix stream (from `ss -xpn`).
fn connected_pair(a: u32, b: u32) -> bool {
    let output = std::process::Command::new("ss")
        .args(["-xpn", "state", "established"])
        .output()
        .expect("run ss (iproute2)");
    let text = String::from_utf8_lossy(&output.stdout);
    // Columns: Netid Recv-Q Send-Q Local-Address Port Peer-Address Port Process.
    let ends: Vec<(u32, &str, &str)> = text
        .lines()
        .filter_map(|line| {
            let fields: Vec<&str> = line.split_whitespace().collect();
            let pid = line
                .split("pid=")
                .nth(1)?
                .split(|c: char| !c.is_ascii_digit())
                .next()?
                .parse()
                .ok()?;
            Some((pid, *fields.get(4)?, *fields.get(6)?))
        })
        .collect();
    ends.iter().any(|(pid, local, peer)| {
        *pid == a
            && ends.iter().any(|(other, their_local, their_peer)| {
                *other == b && their_local == peer && their_peer == local
            })
    })
}
