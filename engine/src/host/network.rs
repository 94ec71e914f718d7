//! Networks: user-mode networking through one `passt` per NIC, with port forwards, or none.
//!
//! passt needs no root: it copies the host's addresses into the guest and forwards the ports the
//! definition names. Each user-mode NIC gets its passt listening on `net<N>.sock` in the VM's
//! runtime directory; passt runs in the background on its own (like the worker, it outlives
//! hangard) and its pid is kept in `passt<N>.pid` so that it can be stopped with the VM.

use std::ffi::OsString;
use std::fs;
use std::io;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};

use crate::host::definition::{NicDefinition, NicMode, Protocol, VmDefinition};
use crate::host::supervisor::RuntimeDir;
use crate::net::{self, HostForward};

/// Errors of per-VM networking.
#[derive(Debug, thiserror::Error)]
pub enum NetworkError {
    #[error(
        "NIC {nic} is user-mode but passt is not installed; install passt \
         (scripts/install-deps) or set the NIC's \"mode\" to \"none\""
    )]
    NoPasst { nic: usize },
    #[error("cannot start passt for NIC {nic}: {source}")]
    Spawn { nic: usize, source: io::Error },
    #[error("passt for NIC {nic} failed: {message}")]
    Failed { nic: usize, message: String },
}

/// The socket the worker will connect NIC `index` to.
pub fn nic_socket(runtime: &RuntimeDir, index: usize) -> PathBuf {
    runtime.dir().join(format!("net{index}.sock"))
}

fn pid_file(runtime: &RuntimeDir, index: usize) -> PathBuf {
    runtime.dir().join(format!("passt{index}.pid"))
}

/// passt's command line for one NIC. `runas` is hangard's own uid and gid: run as root, passt
/// would otherwise switch to `nobody`, who cannot write into the private runtime directory.
pub fn passt_args(
    nic: &NicDefinition,
    socket: &Path,
    pid_file: &Path,
    runas: (u32, u32),
) -> Vec<OsString> {
    let forwards: Vec<HostForward> = nic
        .forwards
        .iter()
        .map(|f| HostForward {
            protocol: match f.protocol {
                Protocol::Tcp => net::Protocol::Tcp,
                Protocol::Udp => net::Protocol::Udp,
            },
            address: None,
            host: f.host,
            guest: f.guest,
        })
        .collect();
    net::passt_args(socket, pid_file, runas, &forwards)
}

/// Starts a passt for every user-mode NIC. On failure the ones already started are stopped.
pub fn start_networks(
    def: &VmDefinition,
    runtime: &RuntimeDir,
    passt: Option<&Path>,
) -> Result<(), NetworkError> {
    for (index, nic) in def.nics.iter().enumerate() {
        if nic.mode != NicMode::User {
            continue;
        }
        let result = start_passt(index, nic, runtime, passt);
        if result.is_err() {
            stop_networks(runtime);
            return result;
        }
    }
    Ok(())
}

fn start_passt(
    index: usize,
    nic: &NicDefinition,
    runtime: &RuntimeDir,
    passt: Option<&Path>,
) -> Result<(), NetworkError> {
    let passt = passt.ok_or(NetworkError::NoPasst { nic: index })?;
    let socket = nic_socket(runtime, index);
    let _ = fs::remove_file(&socket);
    // SAFETY: geteuid and getegid only read the process's credentials.
    let runas = unsafe { (libc::geteuid(), libc::getegid()) };
    // passt forks into the background once it listens; its parent's exit status says whether
    // it got that far.
    let output = Command::new(passt)
        .args(passt_args(nic, &socket, &pid_file(runtime, index), runas))
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .output()
        .map_err(|source| NetworkError::Spawn { nic: index, source })?;
    if !output.status.success() {
        let stderr = String::from_utf8_lossy(&output.stderr);
        let message = stderr
            .lines()
            .filter(|l| !l.contains("syslog"))
            .collect::<Vec<_>>()
            .join("; ");
        return Err(NetworkError::Failed {
            nic: index,
            message: if message.is_empty() {
                output.status.to_string()
            } else {
                message
            },
        });
    }
    Ok(())
}

/// Pids of the passt processes a VM's runtime directory records.
pub fn passt_pids(runtime: &RuntimeDir) -> Vec<u32> {
    let Ok(entries) = fs::read_dir(runtime.dir()) else {
        return Vec::new();
    };
    entries
        .filter_map(Result::ok)
        .filter(|e| {
            let name = e.file_name();
            let name = name.to_string_lossy();
            name.starts_with("passt") && name.ends_with(".pid")
        })
        .filter_map(|e| fs::read_to_string(e.path()).ok()?.trim().parse().ok())
        .collect()
}

fn is_passt(pid: u32) -> bool {
    fs::read(format!("/proc/{pid}/cmdline")).is_ok_and(|cmdline| {
        cmdline
            .split(|&b| b == 0)
            .next()
            .and_then(|argv0| argv0.rsplit(|&b| b == b'/').next())
            // passt re-executes itself as passt.avx2 where the CPU allows.
            .is_some_and(|name| name.starts_with(b"passt"))
    })
}

/// Stops a VM's passt processes and removes their files.
pub fn stop_networks(runtime: &RuntimeDir) {
    for pid in passt_pids(runtime) {
        if is_passt(pid) {
            // SAFETY: kill(2) on a pid checked just now to be a passt that this VM recorded.
            unsafe { libc::kill(pid as i32, libc::SIGTERM) };
        }
    }
    if let Ok(entries) = fs::read_dir(runtime.dir()) {
        for entry in entries.filter_map(Result::ok) {
            let name = entry.file_name();
            let name = name.to_string_lossy();
            if (name.starts_with("passt") && name.ends_with(".pid"))
                || (name.starts_with("net") && name.ends_with(".sock"))
            {
                let _ = fs::remove_file(entry.path());
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn forwards_become_passt_port_specs() {
        let def = VmDefinition::from_json(
            r#"{"name":"a","kernel":"/k","nics":[{"forwards":[
                {"host":2222,"guest":22},{"host":8080,"guest":80},
                {"protocol":"udp","host":5353,"guest":53}]}]}"#,
        )
        .unwrap();
        let args: Vec<String> = passt_args(
            &def.nics[0],
            Path::new("/r/net0.sock"),
            Path::new("/r/p"),
            (1000, 100),
        )
        .into_iter()
        .map(|a| a.into_string().unwrap())
        .collect();
        assert_eq!(
            args,
            [
                "--quiet",
                "--one-off",
                "--runas",
                "1000:100",
                "--socket",
                "/r/net0.sock",
                "--pid",
                "/r/p",
                "--tcp-ports",
                "2222:22,8080:80",
                "--udp-ports",
                "5353:53"
            ]
        );
        let plain = NicDefinition::default();
        let args = passt_args(&plain, Path::new("/s"), Path::new("/p"), (0, 0));
        assert!(args
            .windows(2)
            .any(|w| w[0] == "--tcp-ports" && w[1] == "none"));
    }

    #[test]
    fn a_missing_passt_is_named_with_the_fix() {
        let def = VmDefinition::from_json(r#"{"name":"a","kernel":"/k","nics":[{}]}"#).unwrap();
        let runtime = RuntimeDir::new(&std::env::temp_dir(), "hangar-net-test-none");
        let err = start_networks(&def, &runtime, None).unwrap_err();
        assert!(err.to_string().contains("install passt"), "{err}");
    }
}
