//! Load on the management layer: 20 tiny VMs started at once through hangarctl, and two D-Bus
//! clients making 10,000 mixed calls, with no error and no lost update. A real dbus-daemon, a
//! real hangard, real workers on /dev/kvm.

#[path = "support/hangard.rs"]
mod hangard_env;
mod support;

use std::time::{Duration, Instant};

use hangar_engine::host::api::ManagerProxyBlocking;
use hangard_env::{process_alive, Host};
use serde_json::{json, Value};
use support::{require_kvm, tiny_guest};

const VMS: usize = 20;
const CALLS_PER_CLIENT: usize = 5_000;

fn tiny(name: &str) -> Value {
    json!({"name": name, "kernel": tiny_guest("ticker"), "memory": "32M", "display": "none"})
}

/// Kilobytes from a /proc/PID/status line such as `RssAnon:     1234 kB`.
fn status_kb(pid: u32, field: &str) -> u64 {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap();
    status
        .lines()
        .find_map(|line| line.strip_prefix(field))
        .and_then(|rest| rest.trim().trim_end_matches(" kB").trim().parse().ok())
        .unwrap_or_else(|| panic!("no {field} in /proc/{pid}/status"))
}

#[test]
fn twenty_vms_start_at_once_and_all_stop() {
    require_kvm();
    let host = Host::new();
    let names: Vec<String> = (0..VMS).map(|i| format!("load{i:02}")).collect();
    for name in &names {
        let file = host.definition_file(name, &tiny(name));
        host.ctl_ok(&["define", file.to_str().unwrap()]);
    }

    // All 20 `hangarctl start` at once.
    let started = Instant::now();
    all_at_once(&host, "start", &names);
    let all_started = started.elapsed();
    let list = host.ctl_json(&["list"]);
    let running: Vec<&str> = list
        .as_array()
        .unwrap()
        .iter()
        .filter(|vm| vm["state"] == "running")
        .map(|vm| vm["name"].as_str().unwrap())
        .collect();
    assert_eq!(running.len(), VMS, "{list}");

    // Memory of an idle worker outside its guest's RAM (the guest's pages are shared memfd
    // pages, counted in RssShmem).
    std::thread::sleep(Duration::from_millis(500));
    let uuids: Vec<String> = names
        .iter()
        .map(|name| {
            host.ctl_json(&["dumpdef", name])["uuid"]
                .as_str()
                .unwrap()
                .to_string()
        })
        .collect();
    let pids: Vec<u32> = uuids
        .iter()
        .map(|uuid| host.worker_pid(uuid).expect("worker pid"))
        .collect();
    let mut own_kb: Vec<u64> = pids
        .iter()
        .map(|&pid| status_kb(pid, "RssAnon:") + status_kb(pid, "RssFile:"))
        .collect();
    own_kb.sort_unstable();
    println!(
        "{VMS} VMs running {:.0} ms after the first start; idle worker RSS outside guest RAM: \
         median {} KiB, {}–{} KiB",
        all_started.as_secs_f64() * 1000.0,
        own_kb[VMS / 2],
        own_kb[0],
        own_kb[VMS - 1]
    );

    // And all stopped at once.
    all_at_once(&host, "destroy", &names);
    for name in &names {
        assert_eq!(host.state(name).0, "shutoff", "{name}");
    }
    let deadline = Instant::now() + Duration::from_secs(10);
    while pids.iter().any(|&pid| process_alive(pid)) {
        assert!(Instant::now() < deadline, "workers outlived destroy");
        std::thread::sleep(Duration::from_millis(10));
    }
}

/// Runs `hangarctl VERB NAME` for every name at once; each must succeed.
fn all_at_once(host: &Host, verb: &str, names: &[String]) {
    let children: Vec<_> = names
        .iter()
        .map(|name| {
            host.ctl_command(&[verb, name])
                .stdout(std::process::Stdio::piped())
                .stderr(std::process::Stdio::piped())
                .spawn()
                .unwrap()
        })
        .collect();
    for (name, child) in names.iter().zip(children) {
        let output = child.wait_with_output().unwrap();
        assert!(
            output.status.success(),
            "hangarctl {verb} {name}: {}",
            String::from_utf8_lossy(&output.stderr)
        );
    }
}

/// The counter a client keeps in the shared VM's command line.
fn counter(definition: &Value) -> u64 {
    definition["cmdline"]
        .as_str()
        .and_then(|c| c.strip_prefix("count="))
        .and_then(|n| n.parse().ok())
        .unwrap_or_else(|| panic!("no counter in {definition}"))
}

/// One client's share of the calls: reads of every kind, and increments of the shared counter
/// by compare-and-set on the generation, retried on a conflict. Returns (increments, conflicts).
fn client(host: &Host, me: &str, shared: &str) -> (u64, u64) {
    let bus = host.bus().unwrap();
    let manager = ManagerProxyBlocking::new(&bus).unwrap();
    let vm = Host::vm_proxy(&bus, shared).unwrap();
    let (mut increments, mut conflicts) = (0, 0);
    let mut calls = 0;
    while calls < CALLS_PER_CLIENT {
        match calls % 5 {
            0 => loop {
                let text = vm.get_definition().unwrap();
                let mut definition: Value = serde_json::from_str(&text).unwrap();
                let generation = definition["generation"].as_u64().unwrap();
                definition["cmdline"] = json!(format!("count={}", counter(&definition) + 1));
                calls += 2;
                match vm.update_definition(&definition.to_string(), generation) {
                    Ok(new) => {
                        assert!(
                            new > generation,
                            "{me}: generation went from {generation} to {new}"
                        );
                        increments += 1;
                        break;
                    }
                    Err(zbus::Error::MethodError(name, _, _))
                        if name.as_str() == "dev.hangar.Error.Conflict" =>
                    {
                        conflicts += 1
                    }
                    Err(err) => panic!("{me}: update failed: {err}"),
                }
            },
            1 => {
                let list = manager.list_vms().unwrap();
                assert_eq!(list.len(), 3, "{me}");
                calls += 1;
            }
            2 => {
                assert_eq!(vm.name().unwrap(), shared);
                assert_eq!(vm.state().unwrap(), "shutoff");
                assert_eq!(vm.memory().unwrap(), 32 << 20);
                calls += 3;
            }
            3 => {
                let own = manager.lookup_by_name(me).unwrap();
                assert!(own.as_str().starts_with("/dev/hangar/vm/"), "{own}");
                calls += 1;
            }
            _ => {
                vm.generation().unwrap();
                calls += 1;
            }
        }
    }
    (increments, conflicts)
}

#[test]
fn two_clients_make_ten_thousand_calls_and_lose_no_update() {
    let mut host = Host::new();
    for name in ["shared", "alice", "bob"] {
        let mut def = tiny(name);
        def["cmdline"] = json!("count=0");
        let file = host.definition_file(name, &def);
        host.ctl_ok(&["define", file.to_str().unwrap()]);
    }
    let started = Instant::now();
    let ((a, a_conflicts), (b, b_conflicts)) = std::thread::scope(|scope| {
        let alice = scope.spawn(|| client(&host, "alice", "shared"));
        let bob = scope.spawn(|| client(&host, "bob", "shared"));
        (alice.join().unwrap(), bob.join().unwrap())
    });
    let elapsed = started.elapsed();
    let last = host.ctl_json(&["dumpdef", "shared"]);
    println!(
        "{} calls in {:.1} s; {} increments, {} conflicts retried",
        2 * CALLS_PER_CLIENT,
        elapsed.as_secs_f64(),
        a + b,
        a_conflicts + b_conflicts
    );
    assert_eq!(counter(&last), a + b, "an update was lost: {last}");
    assert_eq!(last["generation"], a + b + 1, "{last}");

    // A restarted hangard reads the same from disk.
    host.kill_hangard();
    host.start_hangard();
    assert_eq!(host.ctl_json(&["dumpdef", "shared"]), last);
    let files = Host::files_in(&host.definitions_dir());
    assert_eq!(files.len(), 3, "{files:?}");
}
