//! `hangarctl`: Hangar's command line, the virsh of Hangar. A client of hangard's D-Bus API,
//! nothing more: whatever it does, the GUI can do the same way.
//!
//! ```text
//! hangarctl define web.json && hangarctl start web && hangarctl console web
//! ```

use std::io::{self, Read, Write};
use std::os::fd::AsRawFd;
use std::os::unix::net::UnixStream;
use std::path::PathBuf;
use std::process::ExitCode;

use clap::{Parser, Subcommand};
use hangar_engine::config::ByteSize;
use hangar_engine::host::api::{ManagerProxyBlocking, VmListEntry, VmProxyBlocking, VolumeEntry};
use hangar_engine::host::definition::Uuid;
use hangar_engine::host::stats::Sample;
use serde_json::{json, Value};
use vmm_sys_util::terminal::Terminal;
use zbus::zvariant::OwnedObjectPath;

/// Manage Hangar virtual machines through hangard.
#[derive(Parser, Debug)]
#[command(name = "hangarctl", version)]
struct Args {
    /// Print results (and failures) as JSON, for scripts.
    #[arg(long, global = true)]
    json: bool,
    #[command(subcommand)]
    verb: Verb,
}

#[derive(Subcommand, Debug)]
enum Verb {
    /// List running VMs, or every defined VM with --all.
    List {
        #[arg(long)]
        all: bool,
    },
    /// Define a VM from a JSON definition file.
    Define { file: PathBuf },
    /// Print a VM's definition as JSON.
    Dumpdef { vm: String },
    /// Replace a VM's definition with FILE (e.g. an edited `dumpdef`). Refused if someone else
    /// changed it since generation --generation (default: the file's "generation").
    Update {
        vm: String,
        file: PathBuf,
        #[arg(long)]
        generation: Option<u64>,
    },
    /// Start the VM when hangard starts (--disable: don't).
    Autostart {
        vm: String,
        #[arg(long)]
        disable: bool,
    },
    /// Forget a VM; with --remove-storage delete its volumes too.
    Undefine {
        vm: String,
        #[arg(long)]
        remove_storage: bool,
    },
    /// Start a VM.
    Start { vm: String },
    /// Ask a VM to shut down (ACPI power button).
    Shutdown { vm: String },
    /// Stop a VM at once.
    Destroy { vm: String },
    /// Reset a VM: it boots again.
    Reboot { vm: String },
    /// Pause a VM's vCPUs.
    Suspend { vm: String },
    /// Let a paused VM run again.
    Resume { vm: String },
    /// A VM's state, and why (for a crash: what happened and the worker's last log lines).
    Domstate { vm: String },
    /// Attach to a VM's serial console; Ctrl+] leaves.
    Console { vm: String },
    /// Save a VM's screen as PNG.
    Screenshot { vm: String, file: PathBuf },
    /// A VM's CPU, memory, disk and network use; --history for every kept sample.
    Stats {
        vm: String,
        #[arg(long)]
        history: bool,
    },
    /// Create a volume in the default pool, e.g. `vol-create data.qcow2 10G`.
    VolCreate {
        name: String,
        size: String,
        #[arg(long, default_value = "qcow2")]
        format: String,
    },
    /// Copy an image file into the pool.
    VolImport {
        name: String,
        file: PathBuf,
        #[arg(long, default_value = "qcow2")]
        format: String,
    },
    /// Change a volume's size.
    VolResize { name: String, size: String },
    /// List the volumes of the default pool.
    VolList,
    /// Delete a volume no VM uses.
    VolDelete { name: String },
    /// Define the sample VM "debian-tiny" from the guest kit (tests/guests/build all).
    Sample,
    /// What this host can do: KVM, CPUs, memory, helpers.
    Nodeinfo,
}

/// A failure: one line for people, a D-Bus error name for scripts.
struct Failure {
    name: String,
    message: String,
}

impl Failure {
    fn new(name: &str, message: impl Into<String>) -> Failure {
        Failure {
            name: name.to_string(),
            message: message.into(),
        }
    }
}

/// What to tell a person about a bus-level error hangard itself did not send.
fn explain(name: &str, message: String) -> String {
    match name {
        "org.freedesktop.DBus.Error.ServiceUnknown"
        | "org.freedesktop.DBus.Error.NameHasNoOwner" => {
            "hangard is not running and could not be activated; install its D-Bus service \
             (scripts/install-user-service) or start hangard"
                .to_string()
        }
        "org.freedesktop.DBus.Error.UnknownObject" | "org.freedesktop.DBus.Error.UnknownMethod" => {
            format!("no such VM (it may have been undefined): {message}")
        }
        _ => message,
    }
}

impl From<zbus::Error> for Failure {
    fn from(err: zbus::Error) -> Failure {
        let (name, message) = match err {
            zbus::Error::MethodError(name, message, _) => {
                let name = name.to_string();
                let message = message.unwrap_or_else(|| name.clone());
                (name, message)
            }
            zbus::Error::FDO(fdo) => (
                zbus::DBusError::name(fdo.as_ref()).to_string(),
                fdo.to_string(),
            ),
            other => ("dev.hangar.Error.Failed".to_string(), other.to_string()),
        };
        Failure {
            message: explain(&name, message),
            name,
        }
    }
}

type Outcome = Result<Value, Failure>;

struct Client {
    connection: zbus::blocking::Connection,
}

impl Client {
    fn connect() -> Result<Client, Failure> {
        let connection = zbus::blocking::Connection::session().map_err(|err| {
            Failure::new(
                "dev.hangar.Error.Failed",
                format!("cannot reach the session bus ({err}); is DBUS_SESSION_BUS_ADDRESS set?"),
            )
        })?;
        Ok(Client { connection })
    }

    fn manager(&self) -> Result<ManagerProxyBlocking<'_>, Failure> {
        // One-shot calls: no property cache, so no extra round trips to set one up.
        Ok(ManagerProxyBlocking::builder(&self.connection)
            .cache_properties(zbus::proxy::CacheProperties::No)
            .build()?)
    }

    /// A VM by name or UUID.
    fn vm(&self, name_or_uuid: &str) -> Result<VmProxyBlocking<'_>, Failure> {
        let path: OwnedObjectPath = match name_or_uuid.parse::<Uuid>() {
            Ok(uuid) => hangar_engine::host::api::vm_path(&uuid),
            Err(_) => self.manager()?.lookup_by_name(name_or_uuid)?,
        };
        Ok(VmProxyBlocking::builder(&self.connection)
            .path(path)?
            .cache_properties(zbus::proxy::CacheProperties::No)
            .build()?)
    }
}

fn read_file(file: &std::path::Path) -> Result<String, Failure> {
    std::fs::read_to_string(file).map_err(|err| {
        Failure::new(
            "dev.hangar.Error.InvalidArgument",
            format!("cannot read {}: {err}", file.display()),
        )
    })
}

fn size_arg(text: &str) -> Result<u64, Failure> {
    text.parse::<ByteSize>()
        .map(|size| size.0)
        .map_err(|err| Failure::new("dev.hangar.Error.InvalidArgument", format!("size {err}")))
}

fn human_size(bytes: u64) -> String {
    const UNITS: [&str; 5] = ["B", "KiB", "MiB", "GiB", "TiB"];
    let mut value = bytes as f64;
    let mut unit = 0;
    while value >= 1024.0 && unit < UNITS.len() - 1 {
        value /= 1024.0;
        unit += 1;
    }
    if unit == 0 {
        format!("{bytes} B")
    } else {
        format!("{value:.1} {}", UNITS[unit])
    }
}

fn vm_json(vm: &VmListEntry) -> Value {
    json!({
        "name": vm.name, "uuid": vm.uuid, "state": vm.state, "vcpus": vm.vcpus,
        "memory": vm.memory, "autostart": vm.autostart, "generation": vm.generation,
        "path": vm.path.as_str(),
    })
}

fn volume_json(volume: &VolumeEntry) -> Value {
    json!({
        "name": volume.name, "path": volume.path, "format": volume.format,
        "virtual_size": volume.virtual_size, "actual_size": volume.actual_size,
    })
}

fn sample_json(sample: &Sample) -> Value {
    serde_json::to_value(sample).unwrap_or(Value::Null)
}

/// "shut off" as virsh prints it; the API says "shutoff".
fn state_words(state: &str) -> &str {
    if state == "shutoff" {
        "shut off"
    } else {
        state
    }
}

fn run(args: &Args) -> Outcome {
    let client = Client::connect()?;
    let lifecycle = |vm: &str, past: &str, call: fn(&VmProxyBlocking<'_>) -> zbus::Result<()>| {
        let proxy = client.vm(vm)?;
        call(&proxy)?;
        Ok(json!({"vm": vm, "message": format!("VM {vm} {past}")}))
    };
    match &args.verb {
        Verb::List { all } => {
            let vms: Vec<VmListEntry> = client
                .manager()?
                .list_vms()?
                .into_iter()
                .filter(|vm| *all || vm.state != "shutoff")
                .collect();
            if args.json {
                return Ok(Value::Array(vms.iter().map(vm_json).collect()));
            }
            let width = vms.iter().map(|vm| vm.name.len()).max().unwrap_or(4).max(4);
            let mut text = format!(
                " {:width$}   {:9} {:>5} {:>10}  {}\n{}\n",
                "Name",
                "State",
                "vCPUs",
                "Memory",
                "Autostart",
                "-".repeat(width + 40)
            );
            for vm in &vms {
                text.push_str(&format!(
                    " {:width$}   {:9} {:>5} {:>10}  {}\n",
                    vm.name,
                    state_words(&vm.state),
                    vm.vcpus,
                    human_size(vm.memory),
                    if vm.autostart { "yes" } else { "no" }
                ));
            }
            Ok(Value::String(text))
        }
        Verb::Define { file } => {
            let text = read_file(file)?;
            let path = client.manager()?.define(&text)?;
            let vm = VmProxyBlocking::builder(&client.connection)
                .path(path.clone())?
                .cache_properties(zbus::proxy::CacheProperties::No)
                .build()?;
            let name = vm.name()?;
            Ok(
                json!({"vm": name, "uuid": vm.uuid()?, "path": path.as_str(),
                      "message": format!("VM {name} defined from {}", file.display())}),
            )
        }
        Verb::Update {
            vm,
            file,
            generation,
        } => {
            let text = read_file(file)?;
            let expected = match generation {
                Some(generation) => *generation,
                None => serde_json::from_str::<Value>(&text)
                    .ok()
                    .and_then(|def| def["generation"].as_u64())
                    .ok_or_else(|| {
                        Failure::new(
                            "dev.hangar.Error.InvalidArgument",
                            format!(
                                "{} has no \"generation\"; pass --generation N (see dumpdef)",
                                file.display()
                            ),
                        )
                    })?,
            };
            let generation = client.vm(vm)?.update_definition(&text, expected)?;
            Ok(json!({"vm": vm, "generation": generation,
                      "message": format!("VM {vm} updated to generation {generation}")}))
        }
        Verb::Autostart { vm, disable } => {
            let proxy = client.vm(vm)?;
            let text = proxy.get_definition()?;
            let mut def: Value = serde_json::from_str(&text)
                .map_err(|err| Failure::new("dev.hangar.Error.Failed", err.to_string()))?;
            let expected = def["generation"].as_u64().unwrap_or(0);
            def["autostart"] = json!(!disable);
            proxy.update_definition(&def.to_string(), expected)?;
            let word = if *disable { "unmarked" } else { "marked" };
            Ok(json!({"vm": vm, "autostart": !disable,
                      "message": format!("VM {vm} {word} as autostarted")}))
        }
        Verb::Dumpdef { vm } => {
            let text = client.vm(vm)?.get_definition()?;
            if args.json {
                return serde_json::from_str(&text)
                    .map_err(|err| Failure::new("dev.hangar.Error.Failed", err.to_string()));
            }
            Ok(Value::String(format!("{text}\n")))
        }
        Verb::Undefine { vm, remove_storage } => {
            client.vm(vm)?.undefine(*remove_storage)?;
            let extra = if *remove_storage {
                " and its storage removed"
            } else {
                ""
            };
            Ok(json!({"vm": vm, "message": format!("VM {vm} undefined{extra}")}))
        }
        Verb::Start { vm } => lifecycle(vm, "started", |p| p.start()),
        Verb::Shutdown { vm } => lifecycle(vm, "is being shut down", |p| p.shutdown()),
        Verb::Destroy { vm } => lifecycle(vm, "destroyed", |p| p.destroy()),
        Verb::Reboot { vm } => lifecycle(vm, "is being rebooted", |p| p.reboot()),
        Verb::Suspend { vm } => lifecycle(vm, "suspended", |p| p.suspend()),
        Verb::Resume { vm } => lifecycle(vm, "resumed", |p| p.resume()),
        Verb::Domstate { vm } => {
            let proxy = client.vm(vm)?;
            let (state, reason) = (proxy.state()?, proxy.state_reason()?);
            if args.json {
                return Ok(json!({"vm": vm, "state": state, "reason": reason}));
            }
            let text = if reason.is_empty() {
                format!("{}\n", state_words(&state))
            } else {
                format!("{} ({reason})\n", state_words(&state))
            };
            Ok(Value::String(text))
        }
        Verb::Console { vm } => console(&client, vm),
        Verb::Screenshot { vm, file } => screenshot(&client, vm, file),
        Verb::Stats { vm, history } => {
            let proxy = client.vm(vm)?;
            if *history {
                let samples = proxy.get_stats_history()?;
                if args.json {
                    return Ok(Value::Array(samples.iter().map(sample_json).collect()));
                }
                let mut text = String::from("time_ms        cpu%   memory used\n");
                for s in &samples {
                    text.push_str(&format!(
                        "{}  {:5.1}  {}\n",
                        s.time_ms,
                        s.cpu_percent,
                        human_size(s.memory_used_bytes)
                    ));
                }
                return Ok(Value::String(text));
            }
            let s = proxy.get_stats()?;
            if args.json {
                return Ok(sample_json(&s));
            }
            Ok(Value::String(format!(
                "cpu:          {:.1} %\nmemory used:  {} of {}\ndisk read:    {}/s\n\
                 disk write:   {}/s\nnet rx:       {}/s\nnet tx:       {}/s\n",
                s.cpu_percent,
                human_size(s.memory_used_bytes),
                human_size(s.memory_bytes),
                human_size(s.disk_read_bytes_per_s as u64),
                human_size(s.disk_write_bytes_per_s as u64),
                human_size(s.net_rx_bytes_per_s as u64),
                human_size(s.net_tx_bytes_per_s as u64),
            )))
        }
        Verb::VolCreate { name, size, format } => {
            let volume = client
                .manager()?
                .create_volume(name, size_arg(size)?, format)?;
            let mut value = volume_json(&volume);
            value["message"] = json!(format!(
                "volume {name} created ({format}, {})",
                human_size(volume.virtual_size)
            ));
            Ok(value)
        }
        Verb::VolImport { name, file, format } => {
            let source = std::path::absolute(file).unwrap_or_else(|_| file.clone());
            let volume =
                client
                    .manager()?
                    .import_volume(name, &source.display().to_string(), format)?;
            let mut value = volume_json(&volume);
            value["message"] = json!(format!("volume {name} imported from {}", file.display()));
            Ok(value)
        }
        Verb::VolResize { name, size } => {
            let volume = client.manager()?.resize_volume(name, size_arg(size)?)?;
            let mut value = volume_json(&volume);
            value["message"] = json!(format!(
                "volume {name} resized to {}",
                human_size(volume.virtual_size)
            ));
            Ok(value)
        }
        Verb::VolList => {
            let volumes = client.manager()?.list_volumes()?;
            if args.json {
                return Ok(Value::Array(volumes.iter().map(volume_json).collect()));
            }
            let width = volumes
                .iter()
                .map(|v| v.name.len())
                .max()
                .unwrap_or(4)
                .max(4);
            let mut text = format!(
                " {:width$}   {:6} {:>10} {:>10}\n{}\n",
                "Name",
                "Format",
                "Capacity",
                "Allocation",
                "-".repeat(width + 34)
            );
            for v in &volumes {
                text.push_str(&format!(
                    " {:width$}   {:6} {:>10} {:>10}\n",
                    v.name,
                    v.format,
                    human_size(v.virtual_size),
                    human_size(v.actual_size)
                ));
            }
            Ok(Value::String(text))
        }
        Verb::VolDelete { name } => {
            client.manager()?.delete_volume(name)?;
            Ok(json!({"volume": name, "message": format!("volume {name} deleted")}))
        }
        Verb::Sample => {
            let cache = hangar_engine::host::inventory::guest_cache_dir();
            let path = client.manager()?.sample(&cache.display().to_string())?;
            Ok(json!({"vm": "debian-tiny", "path": path.as_str(),
                      "message": "VM debian-tiny defined; start it with `hangarctl start debian-tiny`"}))
        }
        Verb::Nodeinfo => {
            let caps: Value = serde_json::from_str(&client.manager()?.capabilities()?)
                .map_err(|err| Failure::new("dev.hangar.Error.Failed", err.to_string()))?;
            if args.json {
                return Ok(caps);
            }
            let mut text = String::new();
            for (key, value) in caps.as_object().into_iter().flatten() {
                text.push_str(&format!("{key:18} {value}\n"));
            }
            Ok(Value::String(text))
        }
    }
}

/// Ctrl+], the key that leaves the console (as in virsh).
const CONSOLE_ESCAPE: u8 = 0x1d;

/// Restores the terminal when the console ends.
struct RawMode;

impl Drop for RawMode {
    fn drop(&mut self) {
        let _ = io::stdin().lock().set_canon_mode();
    }
}

/// Saves the screen as a PNG: takes the framebuffer memfd from the display stream, as the GUI
/// does, and encodes what it holds now.
fn screenshot(client: &Client, vm: &str, file: &std::path::Path) -> Outcome {
    use std::os::unix::fs::FileExt;
    use vmm_sys_util::sock_ctrl_msg::ScmSocket;

    let failed = |message: String| Failure::new("dev.hangar.Error.Failed", message);
    let path =
        std::path::absolute(file).map_err(|err| failed(format!("{}: {err}", file.display())))?;
    let fd = client.vm(vm)?.open_display()?;
    let stream = UnixStream::from(std::os::fd::OwnedFd::from(fd));
    let _ = stream.set_read_timeout(Some(std::time::Duration::from_secs(10)));
    let mut buf = vec![0u8; 4096];
    let (len, memfd) = stream
        .recv_with_fd(&mut buf)
        .map_err(|err| failed(format!("reading the display stream of {vm}: {err}")))?;
    let line = buf[..len].split(|&b| b == b'\n').next().unwrap_or_default();
    let info: Value = serde_json::from_slice(line).map_err(|err| {
        failed(format!(
            "the display stream of {vm} sent no framebuffer: {err}"
        ))
    })?;
    let memfd = memfd.ok_or_else(|| failed(format!("the display of {vm} sent no memfd")))?;
    let field = |name: &str| info[name].as_u64().unwrap_or(0) as u32;
    let (width, height, stride) = (field("width"), field("height"), field("stride"));
    if info["format"] != "x8r8g8b8" || width == 0 || height == 0 || stride < width * 4 {
        return Err(failed(format!("unexpected framebuffer from {vm}: {info}")));
    }
    let mut pixels = vec![0u8; stride as usize * height as usize];
    memfd
        .read_exact_at(&mut pixels, 0)
        .map_err(|err| failed(format!("reading the framebuffer of {vm}: {err}")))?;
    hangar_engine::display::screenshot::write_png(&path, &pixels, width, height, stride)
        .map_err(|err| failed(err.to_string()))?;
    Ok(json!({
        "message": format!("screenshot of {vm} saved to {} ({width}x{height})", path.display()),
        "path": path,
        "width": width,
        "height": height,
    }))
}

fn console(client: &Client, vm: &str) -> Outcome {
    let fd = client.vm(vm)?.open_serial()?;
    let stream = UnixStream::from(std::os::fd::OwnedFd::from(fd));
    let mut input = stream
        .try_clone()
        .map_err(|err| Failure::new("dev.hangar.Error.Failed", err.to_string()))?;
    // SAFETY: isatty only inspects the fd.
    let interactive = unsafe { libc::isatty(io::stdin().as_raw_fd()) } == 1;
    let _raw = if interactive {
        eprintln!("Connected to the serial console of VM {vm}; press Ctrl+] to leave\r");
        io::stdin().lock().set_raw_mode().ok().map(|_| RawMode)
    } else {
        None
    };
    let (done_tx, done_rx) = std::sync::mpsc::channel::<()>();
    let keys_done = done_tx.clone();
    std::thread::spawn(move || {
        let mut buf = [0u8; 1024];
        let mut stdin = io::stdin();
        loop {
            match stdin.read(&mut buf) {
                Ok(0) | Err(_) => {
                    // Piped input ran out: keep showing output until the console closes.
                    if interactive {
                        let _ = keys_done.send(());
                    }
                    return;
                }
                Ok(n) => {
                    let chunk = &buf[..n];
                    if interactive {
                        if let Some(at) = chunk.iter().position(|&b| b == CONSOLE_ESCAPE) {
                            let _ = input.write_all(&chunk[..at]);
                            let _ = keys_done.send(());
                            return;
                        }
                    }
                    if input.write_all(chunk).is_err() {
                        return;
                    }
                }
            }
        }
    });
    let mut output = stream;
    std::thread::spawn(move || {
        let mut buf = [0u8; 4096];
        let mut stdout = io::stdout();
        while let Ok(n) = output.read(&mut buf) {
            if n == 0 || stdout.write_all(&buf[..n]).is_err() {
                break;
            }
            let _ = stdout.flush();
        }
        let _ = done_tx.send(());
    });
    let _ = done_rx.recv();
    if interactive {
        eprintln!("\r\nLeft the console of VM {vm}\r");
    }
    Ok(Value::Null)
}

fn main() -> ExitCode {
    let args = Args::parse();
    match run(&args) {
        Ok(value) => {
            match (&value, args.json) {
                (Value::Null, _) => {}
                (Value::String(text), false) => print!("{text}"),
                (Value::Object(map), false) if map.contains_key("message") => {
                    println!("{}", map["message"].as_str().unwrap_or_default());
                }
                (value, false) => println!("{value}"),
                (value, true) => println!("{value}"),
            }
            ExitCode::SUCCESS
        }
        Err(failure) => {
            if args.json {
                println!(
                    "{}",
                    json!({"error": failure.name, "message": failure.message})
                );
            }
            let line = failure.message.replace('\n', " ");
            eprintln!("hangarctl: {line} [{}]", failure.name);
            ExitCode::FAILURE
        }
    }
}
