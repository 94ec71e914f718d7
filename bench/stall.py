#!/usr/bin/env python3
"""Boots a Linux guest again and again and counts the boots that never reach /init.

    tests/lab/run --timeout 2400 -- python3 bench/stall.py --vmm hangar,qemu 20

Each round boots every VMM named in --vmm once, in turn, so the variants share the same lab
and load. A boot that prints no HANGAR-INIT-START within --timeout seconds is a stall; the
script then records what the VMM is doing: whether it still runs, its threads' CPU time, its
control-socket `stats` (hangar), and a second of kvm_exit/kvm_entry trace (guest RIPs) when
tracefs can be mounted (as in the lab). Full console logs and diagnostics go to --logs.
"""

import argparse
import json
import os
import select
import socket
import subprocess
import sys
import time

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from vmmbench import spawn, stop  # noqa: E402

GUESTS = os.environ.get("HANGAR_GUEST_CACHE", os.path.expanduser("~/.cache/hangar/guests"))
MARKER = "HANGAR-INIT-START"
CONTROL = "/tmp/hangar-stall-control.sock"


def command(vmm, kernel, cmdline, cpus, memory):
    k = f"{GUESTS}/vmlinuz-{kernel}"
    i = f"{GUESTS}/initrd-{kernel}.img"
    if vmm == "qemu":
        return ["qemu-system-x86_64", "-M", "microvm,accel=kvm", "-cpu", "host", "-nodefaults",
                "-no-user-config", "-nographic", "-serial", "stdio", "-no-reboot",
                "-kernel", k, "-initrd", i, "-smp", str(cpus), "-m", f"{memory}M",
                "-append", cmdline]
    binary = os.environ.get("HANGAR_VMM", "target/release/hangar-vmm")
    return [binary, "--kernel", k, "--initrd", i, "--cpus", str(cpus), "--memory", f"{memory}M",
            "--cmdline", cmdline, "--control", CONTROL]


def control(request):
    """One request on the control socket; returns the reply object or an error string."""
    try:
        with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as sock:
            sock.settimeout(3)
            sock.connect(CONTROL)
            sock.sendall(json.dumps(request).encode() + b"\n")
            data = b""
            while True:
                chunk = sock.recv(65536)
                if not chunk:
                    return f"closed after {data!r}"
                data += chunk
                for line in data.split(b"\n"):
                    if line.strip() and b'"ok"' in line:
                        return json.loads(line)
    except OSError as err:
        return f"control error: {err}"


def threads(pid):
    """Per thread: name, state, user+system CPU ticks, kernel wait channel."""
    rows = []
    try:
        for tid in sorted(os.listdir(f"/proc/{pid}/task"), key=int):
            base = f"/proc/{pid}/task/{tid}"
            try:
                stat = open(f"{base}/stat").read()
                fields = stat[stat.rindex(")") + 2:].split()
                name = open(f"{base}/comm").read().strip()
                wchan = open(f"{base}/wchan").read().strip()
                rows.append(f"{tid} {name} state={fields[0]} ticks={int(fields[11]) + int(fields[12])} "
                            f"wchan={wchan}")
            except OSError:
                pass
    except OSError as err:
        rows.append(f"no threads: {err}")
    return rows


TRACEFS = "/sys/kernel/tracing"


def trace(seconds):
    """kvm_exit/kvm_entry/interrupt events of every VM for `seconds`, summarised."""
    if not os.path.exists(f"{TRACEFS}/events"):
        subprocess.run(["mount", "-t", "tracefs", "nodev", TRACEFS], capture_output=True)
    if not os.path.exists(f"{TRACEFS}/events/kvm"):
        return ["no kvm trace events"]

    def put(path, text):
        with open(f"{TRACEFS}/{path}", "w") as f:
            f.write(text)

    def get(path):
        with open(f"{TRACEFS}/{path}") as f:
            return f.read().strip()

    events = ["kvm_exit", "kvm_entry", "kvm_inj_virq", "kvm_apic_accept_irq", "kvm_pio",
              "kvm_msr", "kvm_set_irq", "kvm_ioapic_set_irq", "kvm_pic_set_irq", "kvm_apic_ipi",
              "kvm_hypercall", "kvm_apic", "kvm_userspace_exit", "kvm_hv_timer_state",
              "kvm_wait_lapic_expire", "kvm_vcpu_wakeup"]
    events = [e for e in events if os.path.exists(f"{TRACEFS}/events/kvm/{e}/enable")]
    try:
        # buffer_size_kb reads "7 (expanded: 1408)" before first use: keep the number only.
        saved = {path: get(path).split()[0] for path in ["tracing_on", "buffer_size_kb"]}
    except OSError as err:
        return [f"trace failed: {err}"]
    try:
        put("tracing_on", "0")
        put("trace", "")
        put("buffer_size_kb", "4096")
        for event in events:
            put(f"events/kvm/{event}/enable", "1")
        put("tracing_on", "1")
        time.sleep(seconds)
        put("tracing_on", "0")
        text = open(f"{TRACEFS}/trace").read().splitlines()
    except OSError as err:
        text = [f"trace failed: {err}"]
    finally:
        # Leave tracefs as it was (this may run on a shared host, not only in the lab).
        try:
            for event in events:
                put(f"events/kvm/{event}/enable", "0")
            put("trace", "")
            for path, value in saved.items():
                put(path, value)
        except OSError as err:
            text.append(f"could not restore tracefs: {err}")
    lines = [line for line in text if not line.startswith("#")]
    return lines


def diagnose(proc, vmm, log):
    out = [f"--- stall diagnostics ({vmm}), pid {proc.pid}, exited={proc.poll()}"]
    if vmm == "hangar":
        out.append(f"status: {control({'cmd': 'status'})}")
        out.append(f"stats: {control({'cmd': 'stats'})}")
    out += threads(proc.pid)
    time.sleep(2)
    if vmm == "hangar":
        out.append(f"stats after 2 s: {control({'cmd': 'stats'})}")
    out += threads(proc.pid)
    events = trace(1.0)
    out.append(summarise(events))
    log.write("\n".join(out) + "\n--- last 150 trace events:\n" + "\n".join(events[-150:]) + "\n")
    return out


def summarise(events):
    """What the guests did in the traced second: exits by reason, and bytes written to COM1
    (a guest still printing is alive, however slow)."""
    reasons = {}
    com1 = 0
    for line in events:
        if "kvm_exit:" in line and " reason " in line:
            reason = line.split(" reason ", 1)[1].split()[0]
            reasons[reason] = reasons.get(reason, 0) + 1
        elif "pio_write at 0x3f8 " in line:
            com1 += 1
    busiest = sorted(reasons.items(), key=lambda kv: -kv[1])[:8]
    return (f"trace: {len(events)} events in 1 s; exits by reason {dict(busiest)}; "
            f"{com1} bytes written to COM1")


THP_SHMEM = "/sys/kernel/mm/transparent_hugepage/shmem_enabled"


def shmem_thp(on):
    """Variant `hangar+thp`: transparent huge pages for shmem (Hangar's memfd guest RAM), in the
    lab only (never on a shared host). QEMU's anonymous guest RAM gets them by default."""
    if os.environ.get("HANGAR_LAB") != "nested":
        if on:
            sys.exit("the +thp variant changes a system setting; it runs only inside the lab")
        return
    with open(THP_SHMEM, "w") as f:
        f.write("always" if on else "never")


def kvm_counters(pid):
    """Nested page faults and exits of the VM of `pid`, from KVM's debugfs (lab only)."""
    base = "/sys/kernel/debug/kvm"
    if not os.path.isdir(base) and os.environ.get("HANGAR_LAB") == "nested":
        subprocess.run(["mount", "-t", "debugfs", "none", "/sys/kernel/debug"],
                       capture_output=True)
    try:
        dirs = [d for d in os.listdir(base) if d.startswith(f"{pid}-")]
    except OSError:
        return {}
    counters = {}
    for d in dirs:
        for name in ["exits", "pf_taken", "pf_fixed", "io_exits", "halt_exits"]:
            try:
                with open(f"{base}/{d}/{name}") as f:
                    counters[name] = counters.get(name, 0) + int(f.read())
            except (OSError, ValueError):
                pass
    return counters


def l1_speed():
    """Seconds a fixed piece of CPU work takes here: in the lab it grows when the host starves
    L1 of CPU, which slows every L2 guest alike."""
    begin = time.monotonic()
    total = 0
    for i in range(300_000):
        total += i
    return time.monotonic() - begin


def watch(proc, start, vmm, args, log):
    """Reads the console until /init reports (or the process exits, or --timeout passes).
    Output silent for --silence seconds gets diagnosed once; the boot carries on after that,
    so a slow guest (a starved lab) is told apart from a hung one."""
    fd = proc.stdout.fileno()
    output = b""
    last_output = time.monotonic()
    deadline = last_output + args.timeout
    silence = 0.0
    diagnostics = []
    result = {"init_s": None, "uptime": None, "why": "", "diagnostics": diagnostics}
    init_at = None
    logged = 0  # bytes of output already in the log
    while True:
        now = time.monotonic()
        silence = max(silence, now - last_output)
        if init_at is not None and (b"uptime_s=" in output[output.index(MARKER.encode()):]
                                    and output.endswith(b"\n") or now - init_at > 5):
            break
        if now >= deadline:
            result["why"] = f"no {MARKER} within {args.timeout:.0f} s"
            break
        if not diagnostics and now - last_output >= args.silence and proc.poll() is None:
            log.write(output[logged:].decode(errors="replace"))
            logged = len(output)
            diagnostics += [f"silent for {now - last_output:.0f} s, {now - start / 1e9:.0f} s "
                            "after start"]
            diagnostics += diagnose(proc, vmm, log)
        ready, _, _ = select.select([fd], [], [], 1.0)
        if ready:
            chunk = os.read(fd, 65536)
            if not chunk:
                result["why"] = f"exited with {proc.wait()} before {MARKER}"
                break
            output += chunk
            last_output = time.monotonic()
            if init_at is None and MARKER.encode() in output:
                init_at = last_output
                result["init_s"] = (time.monotonic_ns() - start) / 1e9
    result["silence"] = silence
    text = output.decode(errors="replace")
    log.write("\n--- console after that:\n" if logged else "")
    log.write(output[logged:].decode(errors="replace"))
    lines = [line for line in text.splitlines() if line.strip()]
    result["last"] = lines[-1] if lines else ""
    for line in lines:
        if line.startswith("uptime_s="):
            result["uptime"] = line.split("=", 1)[1]
    return result


def main():
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("rounds", type=int)
    parser.add_argument("--vmm", default="hangar", help="comma list: hangar, qemu, "
                        "or hangar:K=V for hangar with an environment variable")
    parser.add_argument("--kernel", default="amd64")
    parser.add_argument("--cmdline", default="console=ttyS0 panic=-1 hangar.test=poweroff")
    parser.add_argument("--cpus", type=int, default=2)
    parser.add_argument("--memory", type=int, default=256)
    parser.add_argument("--timeout", type=float, default=240)
    parser.add_argument("--silence", type=float, default=45)
    parser.add_argument("--logs", default=os.environ.get("HANGAR_LAB_WRITABLE", "/tmp"))
    args = parser.parse_args()

    variants = args.vmm.split(",")
    tally = {v: [0, 0, []] for v in variants}
    os.makedirs(args.logs, exist_ok=True)
    for round_no in range(args.rounds):
        for variant in variants:
            vmm, _, envpair = variant.partition(":")
            env = dict([envpair.split("=", 1)]) if envpair else {}
            vmm, _, option = vmm.partition("+")
            shmem_thp(option == "thp")
            if os.path.exists(CONTROL):
                os.unlink(CONTROL)
            cmd = command(vmm, args.kernel, args.cmdline, args.cpus, args.memory)
            logname = f"{args.logs}/stall-{variant.replace(':', '-').replace('=', '')}-{round_no}.log"
            speed = l1_speed()
            proc, start = spawn(cmd, env)
            with open(logname, "w") as log:
                result = watch(proc, start, vmm, args, log)
                counters = kvm_counters(proc.pid)
                log.write(f"\n--- KVM counters at the end: {counters}\n")
            stop(proc)
            if result["init_s"] is not None:
                tally[variant][0] += 1
                tally[variant][2].append(result["init_s"])
                print(f"{variant} boot {round_no}: /init after {result['init_s']:.1f} s "
                      f"(cpu probe {speed:.2f} s) "
                      f"(guest uptime {result['uptime']}, longest silence "
                      f"{result['silence']:.0f} s) {counters}", flush=True)
            else:
                tally[variant][1] += 1
                print(f"{variant} boot {round_no}: STALL (cpu probe {speed:.2f} s) {result['why']}; "
                      "longest silence "
                      f"{result['silence']:.0f} s; {counters}; last line: {result['last'][-160:]}",
                      flush=True)
            for line in result["diagnostics"][:14]:
                print(f"    {line}", flush=True)
    for variant, (ok, stalls, times) in tally.items():
        times.sort()
        median = times[len(times) // 2] if times else 0
        print(f"RESULT {variant}: ok={ok} stalls={stalls} median_boot={median:.1f} s", flush=True)


if __name__ == "__main__":
    main()
