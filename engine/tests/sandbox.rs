//! The worker's sandbox on a real worker with a tiny guest: seccomp on every thread, landlock
//! keeping it out of files that are not the VM's, a clear message when it is violated, and
//! `--no-sandbox` for debugging.

mod support;

use std::process::{Command, Stdio};

use support::*;

/// Whether this kernel has landlock (landlock_create_ruleset with the version flag).
fn kernel_has_landlock() -> bool {
    // SAFETY: the version query takes no pointer and only returns a number.
    unsafe { libc::syscall(libc::SYS_landlock_create_ruleset, 0usize, 0usize, 1u32) > 0 }
}

/// `field` of every thread's /proc/PID/task/TID/status.
fn per_thread(pid: u32, field: &str) -> Vec<String> {
    std::fs::read_dir(format!("/proc/{pid}/task"))
        .unwrap()
        .filter_map(|task| {
            let status = std::fs::read_to_string(task.ok()?.path().join("status")).ok()?;
            status
                .lines()
                .find_map(|line| line.strip_prefix(field).map(|v| v.trim().to_string()))
        })
        .collect()
}

fn ticker(extra: &[&str], env: &[(&str, &str)]) -> std::process::Child {
    Command::new(vmm_binary())
        .args(["--kernel", &tiny_guest("ticker").display().to_string()])
        .args(["--memory", "32M", "--serial", "none"])
        .args(extra)
        .envs(env.iter().copied())
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap()
}

#[test]
fn every_worker_thread_runs_under_the_filter_and_status_says_so() {
    require_kvm();
    let dir = TempDir::new("sandbox");
    let control = dir.path("control.sock");
    let mut vmm = ticker(&["--control", control.to_str().unwrap()], &[]);
    let mut client = ControlClient::connect(&control);
    let status = client.ok("status");
    let expected_landlock = if kernel_has_landlock() {
        "enforced"
    } else {
        "unsupported"
    };
    assert_eq!(status["sandbox"]["landlock"], expected_landlock, "{status}");
    assert_eq!(status["sandbox"]["seccomp"], "enforced", "{status}");
    // The vCPU thread exists by now; every thread has both filters and no new privileges.
    let pid = vmm.id();
    let threads = per_thread(pid, "Seccomp:");
    assert!(threads.len() >= 2, "{threads:?}");
    assert!(threads.iter().all(|mode| mode == "2"), "{threads:?}");
    assert!(per_thread(pid, "Seccomp_filters:").iter().all(|n| n == "2"));
    assert!(per_thread(pid, "NoNewPrivs:").iter().all(|n| n == "1"));
    client.ok("stats");
    client.ok("kill");
    assert!(vmm.wait().unwrap().success());
}

#[test]
fn a_forbidden_system_call_stops_the_worker_and_names_the_call() {
    require_kvm();
    let vmm = ticker(&[], &[("HANGAR_SANDBOX_PROBE", "socket")]);
    let output = vmm.wait_with_output().unwrap();
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert_eq!(output.status.code(), Some(159), "{stderr}");
    assert!(
        stderr.contains("sandbox: blocked system call 41") && stderr.contains("RELIABILITY.md"),
        "{stderr}"
    );
}

#[test]
fn landlock_keeps_the_worker_out_of_files_that_are_not_the_vms() {
    require_kvm();
    assert!(
        kernel_has_landlock(),
        "this kernel has no landlock, so the worker's files cannot be confined here"
    );
    let dir = TempDir::new("landlock");
    let secret = dir.path("secret.txt");
    std::fs::write(&secret, "the user's own file").unwrap();
    let kernel = tiny_guest("ticker").display().to_string();
    for (path, expected) in [
        (secret.display().to_string(), "Permission denied"),
        ("/etc/hostname".to_string(), "Permission denied"),
        (kernel.clone(), "ok"),
    ] {
        let probe = format!("open:{path}");
        let mut vmm = ticker(&[], &[("HANGAR_SANDBOX_PROBE", &probe)]);
        let stderr = vmm.stderr.take().unwrap();
        let line = std::io::BufRead::lines(std::io::BufReader::new(stderr))
            .map_while(Result::ok)
            .find(|line| line.contains("sandbox probe"))
            .expect("the worker reports its probe");
        vmm.kill().unwrap();
        vmm.wait().unwrap();
        assert!(line.contains(&format!("open {path}: {expected}")), "{line}");
    }
}

#[test]
fn no_sandbox_runs_the_worker_unconfined_for_debugging() {
    require_kvm();
    let dir = TempDir::new("nosandbox");
    let control = dir.path("control.sock");
    let mut vmm = ticker(
        &["--control", control.to_str().unwrap(), "--no-sandbox"],
        &[("HANGAR_SANDBOX_PROBE", "socket")],
    );
    let mut client = ControlClient::connect(&control);
    let status = client.ok("status");
    assert_eq!(status["sandbox"]["seccomp"], "off", "{status}");
    assert!(per_thread(vmm.id(), "Seccomp:").iter().all(|m| m == "0"));
    client.ok("kill");
    assert!(vmm.wait().unwrap().success());
}
