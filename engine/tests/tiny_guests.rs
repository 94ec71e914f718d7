//! The worker on real /dev/kvm with tiny hand-made guests (tests/guests/tiny): serial both ways,
//! SMP, the control socket (pause, resume, powerdown, reset, kill, status, stats), crashes, and
//! bad input.

mod support;

use std::time::{Duration, Instant};

use serde_json::json;
use support::*;

const BOOT: Duration = Duration::from_secs(30);

fn guest_args(name: &str) -> Vec<String> {
    vec![
        "--kernel".into(),
        tiny_guest(name).display().to_string(),
        "--memory".into(),
        "32M".into(),
    ]
}

fn start(name: &str, extra: &[&str], control: bool) -> Vmm {
    require_kvm();
    let mut args = guest_args(name);
    args.extend(extra.iter().map(|s| s.to_string()));
    let args: Vec<&str> = args.iter().map(String::as_str).collect();
    Vmm::start(&args, control)
}

#[test]
fn hello_prints_on_serial_and_powers_off_with_status_zero() {
    let mut vmm = start("hello", &["--cmdline", "marker=42"], false);
    vmm.expect("HANGAR-TINY hello start", BOOT);
    vmm.expect("hello from hangar tiny guest", BOOT);
    let line = vmm.expect("cmdline=", BOOT);
    assert!(line.contains("marker=42"), "{line}");
    assert!(vmm.wait(BOOT).success());
}

#[test]
fn two_vcpus_each_report_in() {
    let mut vmm = start("smp", &["--cpus", "2", "--cmdline", "cpus=2"], false);
    vmm.expect("HANGAR-TINY smp start", BOOT);
    vmm.expect("all 2 cpus online", BOOT);
    let seen = vmm.seen.join("\n");
    assert!(seen.contains("cpu 0 online"), "{seen}");
    assert!(seen.contains("cpu 1 online"), "{seen}");
    assert!(vmm.wait(BOOT).success());
}

#[test]
fn serial_input_reaches_the_guest() {
    let mut vmm = start("echo", &[], false);
    vmm.expect("ready", BOOT);
    vmm.type_serial(b"ping-123\n");
    vmm.expect("ping-123", BOOT);
    vmm.type_serial(b"q");
    vmm.expect("bye", BOOT);
    assert!(vmm.wait(BOOT).success());
}

#[test]
fn the_guest_clock_matches_the_host() {
    let mut vmm = start("rtc", &[], false);
    let line = vmm.expect("rtc=", BOOT);
    let text = line.split("rtc=").nth(1).unwrap().trim();
    // rtc=YYYY-MM-DD hh:mm:ss
    let field = |range: std::ops::Range<usize>| text[range].parse::<i64>().unwrap();
    let (y, mo, d, h, mi, s) = (
        field(0..4),
        field(5..7),
        field(8..10),
        field(11..13),
        field(14..16),
        field(17..19),
    );
    // Days from civil date (inverse of the RTC's conversion, written independently here).
    let (y2, m2) = if mo <= 2 {
        (y - 1, mo + 9)
    } else {
        (y, mo - 3)
    };
    let era = y2.div_euclid(400);
    let yoe = y2 - era * 400;
    let doy = (153 * m2 + 2) / 5 + d - 1;
    let doe = yoe * 365 + yoe / 4 - yoe / 100 + doy;
    let days = era * 146_097 + doe - 719_468;
    let guest = days * 86_400 + h * 3600 + mi * 60 + s;
    assert_clock_matches_host(guest, text);
    assert!(vmm.wait(BOOT).success());
}

#[test]
fn pause_stops_the_guest_and_resume_continues_it() {
    let mut vmm = start("ticker", &[], true);
    vmm.expect("tick 2", BOOT);
    let mut control = vmm.control();
    let reply = control.ok("pause");
    assert_eq!(reply["state"], "paused");
    assert_eq!(control.wait_event("state")["state"], "paused");
    // A tick already on its way may still land; after that, silence.
    vmm.lines_within(Duration::from_millis(300));
    let quiet = vmm.lines_within(Duration::from_secs(2));
    assert!(quiet.is_empty(), "guest ran while paused: {quiet:?}");
    assert_eq!(control.ok("status")["state"], "paused");
    // Pausing twice is fine; power button while paused is refused with a reason.
    control.ok("pause");
    let reply = control.request(json!({"cmd": "powerdown"}));
    assert_eq!(reply["ok"], false);
    assert!(
        reply["error"].as_str().unwrap().contains("resume"),
        "{reply}"
    );

    control.ok("resume");
    assert_eq!(control.wait_event("state")["state"], "running");
    let resumed = vmm.lines_within(Duration::from_secs(5));
    assert!(
        resumed.iter().any(|l| l.contains("tick")),
        "no ticks after resume"
    );
    control.ok("kill");
    assert_eq!(control.wait_event("shutdown")["reason"], "killed");
    assert!(vmm.wait(BOOT).success());
}

#[test]
fn powerdown_presses_the_acpi_button_and_the_guest_powers_off() {
    let mut vmm = start("powerbutton", &[], true);
    vmm.expect("waiting for power button", BOOT);
    let mut control = vmm.control();
    control.ok("powerdown");
    vmm.expect("power button pressed", BOOT);
    assert_eq!(control.wait_event("shutdown")["reason"], "guest-poweroff");
    assert!(vmm.wait(BOOT).success());
}

#[test]
fn reset_restarts_the_guest_from_the_host_and_from_the_guest() {
    let mut vmm = start("reset", &[], true);
    vmm.expect("HANGAR-TINY reset start", BOOT);
    vmm.expect("boot", BOOT);
    let mut control = vmm.control();
    control.ok("reset");
    assert_eq!(control.wait_event("reset")["reason"], "host-reset");
    vmm.expect("HANGAR-TINY reset start", BOOT);
    vmm.expect("boot", BOOT);
    // The guest resets itself through the i8042.
    vmm.type_serial(b"r");
    assert_eq!(control.wait_event("reset")["reason"], "guest-reset");
    vmm.expect("HANGAR-TINY reset start", BOOT);
    vmm.expect("boot", BOOT);
    vmm.type_serial(b"q");
    assert_eq!(control.wait_event("shutdown")["reason"], "guest-poweroff");
    assert!(vmm.wait(BOOT).success());
}

#[test]
fn no_reboot_exits_when_the_guest_resets() {
    let mut vmm = start("reset", &["--no-reboot"], false);
    vmm.expect("boot", BOOT);
    vmm.type_serial(b"r");
    assert!(vmm.wait(BOOT).success());
}

#[test]
fn a_triple_fault_is_reported_and_the_worker_stays_up() {
    let mut vmm = start("triplefault", &[], true);
    let mut control = vmm.control();
    vmm.expect("faulting", BOOT);
    let event = control.wait_event("guest-panic");
    assert_eq!(event["reason"], "triple-fault");
    let status = control.ok("status");
    assert_eq!(status["state"], "crashed");
    assert_eq!(status["crash"]["reason"], "triple-fault", "{status}");
    // A client that connects after the crash is told about it right after hello.
    let mut late = vmm.control();
    assert_eq!(late.wait_event("guest-panic")["reason"], "triple-fault");
    let reply = control.request(json!({"cmd": "resume"}));
    assert_eq!(reply["ok"], false, "{reply}");
    // The worker still serves stats and can restart the guest.
    control.ok("stats");
    control.ok("reset");
    vmm.expect("HANGAR-TINY triplefault start", BOOT);
    control.ok("kill");
    assert!(vmm.wait(BOOT).success());
}

#[test]
fn a_triple_fault_without_a_control_client_exits_with_status_3() {
    let mut vmm = start("triplefault", &[], false);
    vmm.expect("faulting", BOOT);
    assert_eq!(vmm.wait(BOOT).code(), Some(3));
}

#[test]
fn malformed_control_input_gets_an_error_and_the_guest_keeps_running() {
    let mut vmm = start("ticker", &[], true);
    vmm.expect("tick 1", BOOT);
    let mut control = vmm.control();
    let cases: Vec<Vec<u8>> = vec![
        b"this is not json".to_vec(),
        b"[1,2,3]".to_vec(),
        br#"{"nocmd":true}"#.to_vec(),
        br#"{"cmd":"self-destruct"}"#.to_vec(),
        br#"{"cmd":"pause","version":99}"#.to_vec(),
        br#"{"cmd":"pause","force":true}"#.to_vec(),
        vec![0xff, 0xfe, b'{'],
        vec![b'x'; 200 * 1024],
    ];
    for case in cases {
        let reply = control.send_raw(&case);
        assert_eq!(reply["ok"], false, "{reply}");
        assert!(
            reply["error"].as_str().is_some_and(|e| !e.is_empty()),
            "{reply}"
        );
    }
    let reply = control.request(json!({"cmd": "status", "id": "s1"}));
    assert_eq!(reply["ok"], true);
    assert_eq!(reply["id"], "s1");
    assert_eq!(reply["state"], "running");
    let ticks = vmm.lines_within(Duration::from_secs(3));
    assert!(ticks.iter().any(|l| l.contains("tick")), "guest stopped");
    control.ok("kill");
    assert!(vmm.wait(BOOT).success());
}

#[test]
fn stats_report_vcpu_time_exits_and_memory() {
    let mut vmm = start("ticker", &["--cpus", "2", "--memory", "64M"], true);
    vmm.expect("tick 2", BOOT);
    let mut control = vmm.control();
    let stats = control.ok("stats");
    assert_eq!(stats["memory_bytes"], 64 << 20);
    let vcpus = stats["vcpus"].as_array().unwrap();
    assert_eq!(vcpus.len(), 2);
    assert!(vcpus[0]["cpu_time_ns"].as_u64().unwrap() > 0, "{stats}");
    assert!(vcpus[0]["exits"]["io"].as_u64().unwrap() > 0, "{stats}");
    let status = control.ok("status");
    assert_eq!(status["vcpus"], 2);
    assert_eq!(status["version"], 1);
    assert_eq!(status["pid"], vmm.child.id());
    // A second client sees the same machine, and both get state events.
    let mut second = vmm.control();
    second.ok("pause");
    assert_eq!(control.wait_event("state")["state"], "paused");
    assert_eq!(second.wait_event("state")["state"], "paused");
    second.ok("kill");
    assert!(vmm.wait(BOOT).success());
}

#[test]
fn serial_on_a_unix_socket_replays_the_backlog_and_takes_input() {
    require_kvm();
    let dir = TempDir::new("serial");
    let serial = dir.path("serial.sock");
    let serial_arg = format!("unix:{}", serial.display());
    let mut vmm = start("echo", &["--serial", &serial_arg], true);
    let mut control = vmm.control();
    let started = Instant::now();
    // Connect only after the guest has printed: the backlog must still show it.
    let mut stream = loop {
        if let Ok(stream) = std::os::unix::net::UnixStream::connect(&serial) {
            break stream;
        }
        assert!(started.elapsed() < BOOT, "serial socket never appeared");
        std::thread::sleep(Duration::from_millis(10));
    };
    std::thread::sleep(Duration::from_millis(500));
    read_until(&mut stream, "ready", BOOT);
    use std::io::Write;
    stream.write_all(b"over-the-socket").unwrap();
    read_until(&mut stream, "over-the-socket", BOOT);
    stream.write_all(b"q").unwrap();
    read_until(&mut stream, "bye", BOOT);
    assert_eq!(control.wait_event("shutdown")["reason"], "guest-poweroff");
    assert!(vmm.wait(BOOT).success());
    assert!(!serial.exists(), "the worker leaves no socket file behind");
}

#[test]
fn a_config_file_is_read_and_flags_override_it() {
    require_kvm();
    let dir = TempDir::new("config");
    let config = dir.path("vm.json");
    let settings = json!({
        "kernel": tiny_guest("hello").display().to_string(),
        "memory": "32M",
        "cpus": 1,
        "cmdline": "from=file",
    });
    std::fs::write(&config, settings.to_string()).unwrap();
    let config_arg = config.display().to_string();
    let mut vmm = Vmm::start(&["--config", &config_arg, "--cmdline", "from=flag"], false);
    let line = vmm.expect("cmdline=", BOOT);
    assert!(line.contains("from=flag"), "{line}");
    assert!(vmm.wait(BOOT).success());
}

#[test]
fn bad_input_is_refused_with_a_message_naming_it() {
    require_kvm();
    let dir = TempDir::new("bad");
    let stderr = run_expecting_error(&["--kernel", "/nonexistent/vmlinuz"]);
    assert!(stderr.contains("/nonexistent/vmlinuz"), "{stderr}");

    let junk = dir.path("junk.bin");
    std::fs::write(&junk, vec![0x42u8; 8192]).unwrap();
    let junk_arg = junk.display().to_string();
    let stderr = run_expecting_error(&["--kernel", &junk_arg]);
    assert!(stderr.contains("junk.bin"), "{stderr}");
    assert!(
        stderr.contains("neither an ELF vmlinux nor a bzImage"),
        "{stderr}"
    );

    let hello = tiny_guest("hello").display().to_string();
    let stderr = run_expecting_error(&["--kernel", &hello, "--memory", "0"]);
    assert!(stderr.contains("memory"), "{stderr}");
    let stderr = run_expecting_error(&["--kernel", &hello, "--cpus", "0"]);
    assert!(stderr.contains("cpus"), "{stderr}");
    let stderr = run_expecting_error(&["--kernel", &hello, "--initrd", "/nonexistent/initrd"]);
    assert!(stderr.contains("/nonexistent/initrd"), "{stderr}");

    let config = dir.path("bad.json");
    std::fs::write(&config, r#"{"kernel": "x", "memroy": "1G"}"#).unwrap();
    let config_arg = config.display().to_string();
    let stderr = run_expecting_error(&["--config", &config_arg]);
    assert!(
        stderr.contains("memroy") && stderr.contains("bad.json"),
        "{stderr}"
    );

    // A live control socket is never taken over.
    let mut first = start("ticker", &[], true);
    first.expect("tick", BOOT);
    let control = first.control_path.clone().unwrap();
    let control_arg = control.display().to_string();
    let stderr = run_expecting_error(&["--kernel", &hello, "--control", &control_arg]);
    assert!(stderr.contains("in use"), "{stderr}");
    first.control().ok("kill");
}

#[test]
fn guests_above_3g_get_ram_past_the_mmio_gap() {
    let mut vmm = start("memmap", &["--memory", "4G"], false);
    vmm.expect("rsdp=0x00000000_000e0000", BOOT);
    vmm.expect("memmap done", BOOT);
    let map: Vec<&String> = vmm.seen.iter().filter(|l| l.starts_with("mem ")).collect();
    let expected = [
        "mem 0x00000000_00000000 0x00000000_0009fc00 type=1",
        "mem 0x00000000_0009fc00 0x00000000_00060400 type=2",
        "mem 0x00000000_00100000 0x00000000_bff00000 type=1",
        "mem 0x00000000_e0000000 0x00000000_00100000 type=2",
        "mem 0x00000001_00000000 0x00000000_40000000 type=1",
    ];
    assert_eq!(map, expected, "memory map as the guest sees it");
    assert!(vmm.wait(BOOT).success());
}
