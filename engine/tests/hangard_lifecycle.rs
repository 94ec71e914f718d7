//! hangard and hangarctl end to end: a real dbus-daemon, a real hangard, real workers running
//! tiny guests on /dev/kvm. Define, start, stats, suspend, resume, shutdown, destroy, undefine,
//! volumes, signals, autostart and D-Bus activation.

#[path = "support/hangard.rs"]
mod hangard_env;
mod support;

use std::time::{Duration, Instant};

use hangar_engine::host::api::{ManagerProxyBlocking, VmProxyBlocking};
use hangard_env::Host;
use serde_json::{json, Value};
use support::{require_kvm, tiny_guest};

const BOOT: Duration = Duration::from_secs(30);

fn tiny(name: &str, guest: &str) -> Value {
    json!({
        "name": name,
        "kernel": tiny_guest(guest),
        "memory": "32M",
        "display": "none",
    })
}

#[test]
fn a_vm_goes_through_its_whole_life_with_hangarctl() {
    require_kvm();
    let host = Host::new();
    let file = host.definition_file("pb", &tiny("pb", "powerbutton"));

    let defined = host.ctl_json(&["define", file.to_str().unwrap()]);
    assert_eq!(defined["vm"], "pb");
    let uuid = defined["uuid"].as_str().unwrap().to_string();
    assert_eq!(
        Host::files_in(&host.definitions_dir()),
        [format!("{uuid}.json")]
    );

    // Defined but not running: only `list --all` shows it.
    assert_eq!(host.ctl_json(&["list"]), json!([]));
    let all = host.ctl_json(&["list", "--all"]);
    assert_eq!(all[0]["name"], "pb");
    assert_eq!(all[0]["state"], "shutoff");
    assert_eq!(all[0]["vcpus"], 1);
    assert_eq!(all[0]["memory"], 32 << 20);
    let text = host.ctl_ok(&["list", "--all"]);
    assert!(text.contains("shut off"), "{text}");

    let dumped = host.ctl_json(&["dumpdef", "pb"]);
    assert_eq!(dumped["uuid"], uuid.as_str());
    assert_eq!(dumped["generation"], 1);
    assert_eq!(dumped["schema_version"], 1);

    host.ctl_ok(&["start", "pb"]);
    assert_eq!(host.state("pb").0, "running");
    let running = host.ctl_json(&["list"]);
    assert_eq!(running[0]["name"], "pb");
    assert_eq!(running[0]["state"], "running");
    let err = host.ctl_err(&["start", "pb"]);
    assert_eq!(err.0, "dev.hangar.Error.InvalidState", "{err:?}");

    // Stats arrive at the 200 ms interval the test host asks for.
    let deadline = Instant::now() + Duration::from_secs(10);
    let history = loop {
        let history = host.ctl_json(&["stats", "pb", "--history"]);
        if history.as_array().unwrap().len() >= 3 {
            break history;
        }
        assert!(Instant::now() < deadline, "no stats history: {history}");
        std::thread::sleep(Duration::from_millis(100));
    };
    let last = &history.as_array().unwrap()[2];
    assert!(last["cpu_percent"].as_f64().unwrap() > 0.0, "{history}");
    assert!(last["memory_used_bytes"].as_u64().unwrap() > 0, "{history}");
    assert_eq!(last["memory_bytes"], 32 << 20);
    assert_eq!(last["disk_read_bytes_per_s"], 0.0);
    let stats = host.ctl_json(&["stats", "pb"]);
    assert!(stats["time_ms"].as_u64().unwrap() > 0, "{stats}");
    let text = host.ctl_ok(&["stats", "pb"]);
    assert!(
        text.contains("cpu:") && text.contains("memory used:"),
        "{text}"
    );

    host.ctl_ok(&["suspend", "pb"]);
    assert_eq!(host.state("pb").0, "paused");
    host.ctl_ok(&["resume", "pb"]);
    assert_eq!(host.state("pb").0, "running");

    // The console shows what the guest printed before anyone attached.
    let mut console = host.console("pb");
    console.expect("waiting for power button", BOOT);

    // ACPI shutdown: the guest sees the power button and powers off.
    host.ctl_ok(&["shutdown", "pb"]);
    host.wait_state("pb", "shutoff", BOOT);
    console.expect("power button pressed", BOOT);
    assert!(console.wait_exit(BOOT).success());
    assert!(host.ctl_json(&["list"]).as_array().unwrap().is_empty());

    // Start again, then pull the plug.
    host.ctl_ok(&["start", "pb"]);
    host.ctl_ok(&["destroy", "pb"]);
    assert_eq!(host.state("pb"), ("shutoff".to_string(), String::new()));
    let err = host.ctl_err(&["shutdown", "pb"]);
    assert_eq!(err.0, "dev.hangar.Error.InvalidState", "{err:?}");

    // A screenshot needs a running VM.
    let err = host.ctl_err(&["screenshot", "pb", "/tmp/never.png"]);
    assert_eq!(err.0, "dev.hangar.Error.InvalidState", "{err:?}");

    host.ctl_ok(&["undefine", "pb"]);
    assert!(Host::files_in(&host.definitions_dir()).is_empty());
    assert_eq!(host.ctl_json(&["list", "--all"]), json!([]));
    let err = host.ctl_err(&["start", "pb"]);
    assert_eq!(err.0, "dev.hangar.Error.NotFound", "{err:?}");
}

#[test]
fn reboot_restarts_the_guest() {
    require_kvm();
    let host = Host::new();
    let file = host.definition_file("t", &tiny("t", "ticker"));
    host.ctl_ok(&["define", file.to_str().unwrap()]);
    host.ctl_ok(&["start", "t"]);
    let mut console = host.console("t");
    console.expect("tick 2", BOOT);
    console.seen.clear();
    host.ctl_ok(&["reboot", "t"]);
    // The console stays connected across the reset and shows the guest booting again.
    console.expect("HANGAR-TINY ticker start", BOOT);
    console.expect("tick 1\n", BOOT);
    assert_eq!(host.state("t").0, "running");
    host.ctl_ok(&["destroy", "t"]);
}

#[test]
fn volumes_are_created_listed_resized_and_deleted() {
    let host = Host::new();
    let created = host.ctl_json(&["vol-create", "data.qcow2", "64M"]);
    assert_eq!(created["format"], "qcow2");
    assert_eq!(created["virtual_size"], 64 << 20);
    host.ctl_ok(&["vol-create", "scratch.img", "8M", "--format", "raw"]);
    let list = host.ctl_json(&["vol-list"]);
    let names: Vec<&str> = list
        .as_array()
        .unwrap()
        .iter()
        .map(|v| v["name"].as_str().unwrap())
        .collect();
    assert_eq!(names, ["data.qcow2", "scratch.img"]);
    assert!(list[0]["actual_size"].as_u64().unwrap() > 0);
    let resized = host.ctl_json(&["vol-resize", "data.qcow2", "128M"]);
    assert_eq!(resized["virtual_size"], 128 << 20);
    let imported = host.ctl_json(&[
        "vol-import",
        "copy.qcow2",
        host.images_dir().join("scratch.img").to_str().unwrap(),
    ]);
    assert_eq!(imported["virtual_size"], 8 << 20);
    assert_eq!(imported["format"], "qcow2");
    host.ctl_ok(&["vol-delete", "scratch.img"]);
    assert_eq!(
        Host::files_in(&host.images_dir()),
        ["copy.qcow2", "data.qcow2"]
    );
    let err = host.ctl_err(&["vol-create", "data.qcow2", "1M"]);
    assert_eq!(err.0, "dev.hangar.Error.NameTaken", "{err:?}");
    let err = host.ctl_err(&["vol-delete", "nope"]);
    assert_eq!(err.0, "dev.hangar.Error.NotFound", "{err:?}");

    // A VM's storage goes with it when asked.
    let mut def = tiny("owner", "hello");
    def["disks"] = json!([{"volume": "data.qcow2"}]);
    let file = host.definition_file("owner", &def);
    host.ctl_ok(&["define", file.to_str().unwrap()]);
    host.ctl_ok(&["undefine", "owner", "--remove-storage"]);
    assert_eq!(Host::files_in(&host.images_dir()), ["copy.qcow2"]);
}

#[test]
fn a_vms_volumes_reach_its_worker_and_stay_its_own() {
    require_kvm();
    let host = Host::new();
    host.ctl_ok(&["vol-create", "root.qcow2", "16M"]);
    host.ctl_ok(&["vol-create", "media.img", "4M", "--format", "raw"]);
    let mut def = tiny("owner", "ticker");
    def["disks"] = json!([{"volume": "root.qcow2"}, {"volume": "media.img", "readonly": true}]);
    let file = host.definition_file("owner", &def);
    let uuid = host.ctl_json(&["define", file.to_str().unwrap()])["uuid"]
        .as_str()
        .unwrap()
        .to_string();
    host.ctl_ok(&["start", "owner"]);
    let worker = host.worker_pid(&uuid).expect("worker pid file");

    // The worker holds both pool files open, the read-only one without write access.
    let open_modes: Vec<(String, u32)> = std::fs::read_dir(format!("/proc/{worker}/fd"))
        .unwrap()
        .filter_map(|entry| {
            let entry = entry.ok()?;
            let target = std::fs::read_link(entry.path()).ok()?;
            let info = std::fs::read_to_string(format!(
                "/proc/{worker}/fdinfo/{}",
                entry.file_name().to_str()?
            ))
            .ok()?;
            let flags = info.lines().find_map(|l| l.strip_prefix("flags:"))?.trim();
            let mode = u32::from_str_radix(flags, 8).ok()? & 0o3;
            Some((target.display().to_string(), mode))
        })
        .filter(|(target, _)| target.starts_with(host.images_dir().to_str().unwrap()))
        .collect();
    let images = host.images_dir();
    let root = images.join("root.qcow2").display().to_string();
    let media = images.join("media.img").display().to_string();
    assert!(
        open_modes.contains(&(root.clone(), 2)),
        "root.qcow2 open read-write: {open_modes:?}"
    );
    assert!(
        open_modes.contains(&(media.clone(), 0)),
        "media.img open read-only: {open_modes:?}"
    );

    // A second VM on the same writable volume cannot start while the first runs: the image is
    // locked, and the error says by what.
    let mut thief = tiny("thief", "ticker");
    thief["disks"] = json!([{"volume": "root.qcow2"}]);
    let file = host.definition_file("thief", &thief);
    host.ctl_ok(&["define", file.to_str().unwrap()]);
    let (name, message, _) = host.ctl_err(&["start", "thief"]);
    assert!(
        message.contains("root.qcow2") && message.contains("in use"),
        "{name}: {message}"
    );
    assert_eq!(host.state("thief").0, "shutoff");
    assert_eq!(host.state("owner").0, "running");
    host.ctl_ok(&["destroy", "owner"]);
    host.ctl_ok(&["start", "thief"]);
    host.ctl_ok(&["destroy", "thief"]);
}

#[test]
fn clients_hear_signals_and_see_properties() {
    require_kvm();
    let host = Host::new();
    let bus = host.bus().unwrap();
    let manager = ManagerProxyBlocking::new(&bus).unwrap();
    assert_eq!(manager.api_version().unwrap(), 1);
    assert!(!manager.version().unwrap().is_empty());
    let caps: Value = serde_json::from_str(&manager.capabilities().unwrap()).unwrap();
    assert_eq!(caps["kvm_usable"], true);
    assert!(["hardware", "emulated"].contains(&caps["acceleration"].as_str().unwrap()));
    assert!(caps["host_cpus"].as_u64().unwrap() >= 1);
    assert!(caps["host_memory_bytes"].as_u64().unwrap() > 0);
    assert!(caps.get("passt").is_some() && caps.get("qemu_img").is_some());
    assert_eq!(manager.stats_interval().unwrap(), 200);

    let mut added = manager.receive_vm_added().unwrap();
    let path = manager.define(&tiny("sig", "ticker").to_string()).unwrap();
    let signal = added.next().expect("VmAdded");
    assert_eq!(signal.args().unwrap().path.as_str(), path.as_str());

    let vm = VmProxyBlocking::builder(&bus)
        .path(path.clone())
        .unwrap()
        .build()
        .unwrap();
    assert_eq!(vm.name().unwrap(), "sig");

    // The ObjectManager lists the VM with its properties, as a GUI would fetch them.
    let objects = zbus::blocking::fdo::ObjectManagerProxy::builder(&bus)
        .destination("dev.hangar.Hangar")
        .unwrap()
        .path("/dev/hangar")
        .unwrap()
        .build()
        .unwrap()
        .get_managed_objects()
        .unwrap();
    let vm_object = &objects[&path];
    let properties =
        &vm_object[&zbus::names::OwnedInterfaceName::try_from("dev.hangar.Vm1").unwrap()];
    assert_eq!(
        String::try_from(properties["Name"].try_clone().unwrap()).unwrap(),
        "sig"
    );
    assert_eq!(vm.memory().unwrap(), 32 << 20);
    assert_eq!(vm.display().unwrap(), "none");
    assert_eq!(vm.generation().unwrap(), 1);
    assert!(vm.disks().unwrap().is_empty());

    let mut states = vm.receive_vm_state_changed().unwrap();
    let mut state_prop = vm.receive_state_changed();
    vm.start().unwrap();
    let signal = states.next().expect("StateChanged");
    assert_eq!(signal.args().unwrap().state, "running");
    // The property stream yields the cached value first, then the changes.
    let states_seen: Vec<String> = state_prop
        .by_ref()
        .take(2)
        .map(|change| change.get().unwrap())
        .take_while(|state| state != "running")
        .collect();
    assert!(
        states_seen.iter().all(|s| s == "shutoff"),
        "unexpected states before running: {states_seen:?}"
    );
    assert_eq!(vm.state().unwrap(), "running");

    let mut definition_changes = vm.receive_definition_changed().unwrap();
    let mut def: Value = serde_json::from_str(&vm.get_definition().unwrap()).unwrap();
    def["vcpus"] = json!(2);
    assert_eq!(vm.update_definition(&def.to_string(), 1).unwrap(), 2);
    let signal = definition_changes.next().expect("DefinitionChanged");
    assert_eq!(signal.args().unwrap().generation, 2);

    // OpenSerial hands over a socket straight to the worker.
    let fd = vm.open_serial().unwrap();
    let mut serial = std::os::unix::net::UnixStream::from(std::os::fd::OwnedFd::from(fd));
    support::read_until(&mut serial, "tick 1", BOOT);

    let err = vm.open_display().unwrap_err();
    assert!(
        matches!(&err, zbus::Error::MethodError(name, _, _) if name.as_str() == "dev.hangar.Error.Unsupported"),
        "{err:?}"
    );

    vm.destroy().unwrap();
    let signal = states.next().expect("StateChanged");
    assert_eq!(signal.args().unwrap().state, "shutoff");

    let mut removed = manager.receive_vm_removed().unwrap();
    vm.undefine(false).unwrap();
    let signal = removed.next().expect("VmRemoved");
    assert_eq!(signal.args().unwrap().path.as_str(), path.as_str());
}

#[test]
fn autostart_vms_start_with_hangard() {
    require_kvm();
    let mut host = Host::new();
    let file = host.definition_file("auto", &tiny("auto", "ticker"));
    host.ctl_ok(&["define", file.to_str().unwrap()]);
    host.ctl_ok(&["autostart", "auto"]);
    assert_eq!(host.ctl_json(&["dumpdef", "auto"])["autostart"], true);
    host.kill_hangard();
    host.start_hangard();
    host.wait_state("auto", "running", BOOT);
    host.ctl_ok(&["destroy", "auto"]);
}

#[test]
fn hangard_starts_by_dbus_activation() {
    let host = Host::new_without_hangard();
    // The service file as scripts/install-user-service installs it, pointing at this build.
    let template =
        std::fs::read_to_string(support::repo_root().join("data/dev.hangar.Hangar.service.in"))
            .unwrap();
    let bindir = std::path::Path::new(hangard_env::hangard_binary())
        .parent()
        .unwrap();
    let services = host.data_dir().join("dbus-1/services");
    std::fs::create_dir_all(&services).unwrap();
    std::fs::write(
        services.join("dev.hangar.Hangar.service"),
        template.replace("@bindir@", bindir.to_str().unwrap()),
    )
    .unwrap();
    assert!(!host.name_has_owner());
    assert_eq!(host.ctl_json(&["list", "--all"]), json!([]));
    assert!(host.name_has_owner(), "hangard was not activated");
    // Activation started a hangard of its own; stop it with the bus (Host's drop).
}

#[test]
fn sample_defines_debian_tiny_from_the_guest_kit() {
    let host = Host::new();
    let cache = host.dir.path("guest-cache");
    std::fs::create_dir_all(&cache).unwrap();

    // Without the kit, the sample says how to build it.
    let output = host
        .ctl_command(&["sample"])
        .env("HANGAR_GUEST_CACHE", &cache)
        .output()
        .unwrap();
    assert!(!output.status.success());
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(stderr.contains("tests/guests/build all"), "{stderr}");
    assert!(Host::files_in(&host.definitions_dir()).is_empty());

    // The kit's file names; the contents do not matter for defining.
    std::fs::write(cache.join("vmlinuz-cloud-amd64"), b"kernel").unwrap();
    std::fs::write(cache.join("initrd-cloud-amd64.img"), b"initrd").unwrap();
    let output = host
        .ctl_command(&["--json", "sample"])
        .env("HANGAR_GUEST_CACHE", &cache)
        .output()
        .unwrap();
    assert!(
        output.status.success(),
        "{}",
        String::from_utf8_lossy(&output.stderr)
    );
    let def = host.ctl_json(&["dumpdef", "debian-tiny"]);
    assert_eq!(def["cmdline"], "console=ttyS0 hangar.test=shell");
    assert_eq!(
        def["kernel"],
        cache.join("vmlinuz-cloud-amd64").to_str().unwrap()
    );
    assert_eq!(
        def["initrd"],
        cache.join("initrd-cloud-amd64.img").to_str().unwrap()
    );
    assert_eq!(def["disks"][0]["volume"], "debian-tiny.qcow2");
    let volumes = host.ctl_json(&["vol-list"]);
    assert_eq!(volumes[0]["name"], "debian-tiny.qcow2");
    assert_eq!(volumes[0]["format"], "qcow2");

    // A second sample would clash by name.
    let output = host
        .ctl_command(&["sample"])
        .env("HANGAR_GUEST_CACHE", &cache)
        .output()
        .unwrap();
    assert!(String::from_utf8_lossy(&output.stderr).contains("dev.hangar.Error.NameTaken"));
}

#[test]
fn user_mode_nics_get_a_passt_with_their_port_forwards() {
    require_kvm();
    assert!(
        hangar_engine::host::storage::find_in_path("passt").is_some(),
        "passt is missing; run scripts/install-deps"
    );
    let host = Host::new();
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    let mut def = tiny("net", "ticker");
    def["nics"] =
        json!([{"mode": "user", "forwards": [{"host": port, "guest": 22}]}, {"mode": "none"}]);
    let file = host.definition_file("net", &def);
    let uuid = host.ctl_json(&["define", file.to_str().unwrap()])["uuid"]
        .as_str()
        .unwrap()
        .to_string();
    let nics = host.ctl_json(&["dumpdef", "net"])["nics"].clone();
    assert_eq!(nics[0]["forwards"][0]["guest"], 22);

    host.ctl_ok(&["start", "net"]);
    let runtime = host.runtime_dir().join("hangar").join(&uuid);
    assert!(
        runtime.join("net0.sock").exists(),
        "no passt socket for NIC 0"
    );
    assert!(
        !runtime.join("net1.sock").exists(),
        "a NIC without cable got a passt"
    );
    let pid: u32 = std::fs::read_to_string(runtime.join("passt0.pid"))
        .unwrap()
        .trim()
        .parse()
        .unwrap();
    assert!(hangard_env::process_alive(pid));
    // passt listens on the forwarded host port.
    std::net::TcpStream::connect(("127.0.0.1", port)).expect("forwarded port is not listening");

    host.ctl_ok(&["destroy", "net"]);
    let deadline = Instant::now() + Duration::from_secs(5);
    while hangard_env::process_alive(pid) {
        assert!(Instant::now() < deadline, "passt outlived its VM");
        std::thread::sleep(Duration::from_millis(10));
    }
    assert!(!runtime.join("net0.sock").exists());
}

/// A pseudo-terminal pair: hangarctl gets the slave end as its terminal.
struct Pty {
    master: std::fs::File,
    slave: std::fs::File,
}

impl Pty {
    fn open() -> Pty {
        use std::os::fd::FromRawFd;
        let (mut master, mut slave) = (0, 0);
        // SAFETY: openpty writes two fds into the locals; name, termios and winsize may be null.
        let rc = unsafe {
            libc::openpty(
                &mut master,
                &mut slave,
                std::ptr::null_mut(),
                std::ptr::null(),
                std::ptr::null(),
            )
        };
        assert_eq!(rc, 0, "openpty failed");
        // SAFETY: both fds were just opened by openpty and are owned by nothing else.
        unsafe {
            Pty {
                master: std::fs::File::from_raw_fd(master),
                slave: std::fs::File::from_raw_fd(slave),
            }
        }
    }

    fn local_flags(&self) -> libc::tcflag_t {
        use std::os::fd::AsRawFd;
        // SAFETY: a zeroed termios is a valid out-parameter for tcgetattr.
        let mut termios: libc::termios = unsafe { std::mem::zeroed() };
        // SAFETY: the slave fd is open; termios outlives the call.
        assert_eq!(
            unsafe { libc::tcgetattr(self.slave.as_raw_fd(), &mut termios) },
            0
        );
        termios.c_lflag
    }
}

#[test]
fn the_interactive_console_is_raw_and_ctrl_bracket_leaves() {
    use std::io::{Read, Write};
    use std::process::Stdio;
    require_kvm();
    let host = Host::new();
    let file = host.definition_file("tty", &tiny("tty", "echo"));
    host.ctl_ok(&["define", file.to_str().unwrap()]);
    host.ctl_ok(&["start", "tty"]);

    let pty = Pty::open();
    let cooked = pty.local_flags();
    assert_ne!(cooked & libc::ICANON, 0);
    let mut child = host
        .ctl_command(&["console", "tty"])
        .stdin(Stdio::from(pty.slave.try_clone().unwrap()))
        .stdout(Stdio::from(pty.slave.try_clone().unwrap()))
        .stderr(Stdio::from(pty.slave.try_clone().unwrap()))
        .spawn()
        .unwrap();
    let mut reader = pty.master.try_clone().unwrap();
    let (tx, rx) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        let mut buf = [0u8; 1024];
        while let Ok(n) = reader.read(&mut buf) {
            if n == 0 || tx.send(buf[..n].to_vec()).is_err() {
                break;
            }
        }
    });
    let mut seen = String::new();
    let mut expect = |needle: &str| {
        let deadline = Instant::now() + BOOT;
        while !seen.contains(needle) {
            let left = deadline.saturating_duration_since(Instant::now());
            let bytes = rx
                .recv_timeout(left)
                .unwrap_or_else(|_| panic!("no {needle:?} on the terminal; got:\n{seen}"));
            seen.push_str(&String::from_utf8_lossy(&bytes));
        }
    };
    expect("press Ctrl+] to leave");
    expect("ready");
    // Raw mode: keys go to the guest one by one, without local echo or line editing.
    assert_eq!(pty.local_flags() & (libc::ICANON | libc::ECHO), 0);
    let mut master = pty.master.try_clone().unwrap();
    master.write_all(b"xyz-typed").unwrap();
    expect("xyz-typed");
    master.write_all(&[0x1d]).unwrap();
    expect("Left the console");
    let deadline = Instant::now() + Duration::from_secs(10);
    let status = loop {
        if let Some(status) = child.try_wait().unwrap() {
            break status;
        }
        assert!(
            Instant::now() < deadline,
            "Ctrl+] did not leave the console"
        );
        std::thread::sleep(Duration::from_millis(10));
    };
    assert!(status.success());
    // The terminal is restored, and the VM keeps running.
    assert_eq!(pty.local_flags() & libc::ICANON, cooked & libc::ICANON);
    assert_eq!(host.state("tty").0, "running");
    host.ctl_ok(&["destroy", "tty"]);
}

#[test]
fn a_guest_that_powers_off_at_once_still_starts_and_ends_shut_off() {
    require_kvm();
    let host = Host::new();
    let file = host.definition_file("quick", &tiny("quick", "hello"));
    host.ctl_ok(&["define", file.to_str().unwrap()]);
    for _ in 0..3 {
        host.ctl_ok(&["start", "quick"]);
        let reason = host.wait_state("quick", "shutoff", BOOT);
        assert!(reason.is_empty(), "{reason}");
    }
}
