#!/usr/bin/env python3
"""Boot time and memory overhead of a Debian kernel: hangar-vmm against QEMU microvm.

Both VMMs get the same kernel, initrd, command line, 256 MiB and 2 vCPUs, and run alternately
in one run. Boot time is wall time from process start to the guest's /init printing
HANGAR-INIT-START. Memory is the worker's RSS outside guest RAM while the guest idles at /init.
Run it where KVM is hardware-backed: directly, or inside the nested lab (bench/run does that).
"""

import argparse
import json
import os
import sys
import time

sys.path.insert(0, os.path.dirname(__file__))
from vmmbench import fmt, rss_outside_guest_ram, spawn, stop, summary, wait_for  # noqa: E402

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
MARKER = "HANGAR-INIT-START"


def commands(args, kernel, initrd, cmdline):
    hangar = [args.vmm, "--kernel", kernel, "--initrd", initrd, "--cmdline", cmdline,
              "--memory", args.memory, "--cpus", str(args.cpus)]
    qemu = ["qemu-system-x86_64", "-M", "microvm,accel=kvm", "-cpu", "host",
            "-m", args.memory, "-smp", str(args.cpus), "-nodefaults", "-no-user-config",
            "-nographic", "-serial", "stdio", "-kernel", kernel, "-initrd", initrd,
            "-append", cmdline, "-no-reboot"]
    return {"hangar-vmm": hangar, "qemu-microvm": qemu}


def main():
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--runs", type=int, default=5)
    parser.add_argument("--flavor", default="cloud-amd64")
    parser.add_argument("--memory", default="256M")
    parser.add_argument("--cpus", type=int, default=2)
    parser.add_argument("--vmm", default=os.path.join(ROOT, "target/release/hangar-vmm"))
    parser.add_argument("--cache", default=os.environ.get(
        "HANGAR_GUEST_CACHE", os.path.expanduser("~/.cache/hangar/guests")))
    parser.add_argument("--json", help="also write the results here")
    args = parser.parse_args()

    kernel = os.path.join(args.cache, f"vmlinuz-{args.flavor}")
    initrd = os.path.join(args.cache, f"initrd-{args.flavor}.img")
    guest_bytes = int(args.memory.rstrip("M")) << 20
    boot_cmds = commands(args, kernel, initrd, "console=ttyS0 panic=-1 hangar.test=poweroff")
    idle_cmds = commands(args, kernel, initrd, "console=ttyS0 panic=-1 hangar.test=shell")

    boot = {name: [] for name in boot_cmds}
    memory = {name: [] for name in boot_cmds}
    for run in range(args.runs):
        for name, cmd in boot_cmds.items():
            proc, start = spawn(cmd)
            at, _ = wait_for(proc, MARKER, 600)
            boot[name].append((at - start) / 1e9)
            stop(proc)
            print(f"run {run + 1}/{args.runs} {name}: /init after {boot[name][-1]:.2f} s", flush=True)
    for name, cmd in idle_cmds.items():
        for _ in range(min(args.runs, 3)):
            proc, _ = spawn(cmd)
            wait_for(proc, MARKER, 600)
            time.sleep(3)
            outside, total = rss_outside_guest_ram(proc.pid, guest_bytes)
            memory[name].append(outside / 1024)
            stop(proc)
            print(f"{name}: RSS outside guest RAM {outside / 1024:.1f} MiB (total {total / 1024:.1f} MiB)", flush=True)

    result = {
        "flavor": args.flavor,
        "boot_s": {name: summary(v) for name, v in boot.items()},
        "rss_outside_guest_mib": {name: summary(v) for name, v in memory.items()},
    }
    print(json.dumps(result, indent=2))
    for name in boot:
        print(f"{name:13} boot to /init: {fmt(result['boot_s'][name], 's')}")
        print(f"{name:13} RSS outside guest RAM: {fmt(result['rss_outside_guest_mib'][name], 'MiB')}")
    ratio = result["boot_s"]["hangar-vmm"]["median"] / result["boot_s"]["qemu-microvm"]["median"]
    print(f"boot ratio hangar-vmm / QEMU microvm: {ratio:.3f}")
    if args.json:
        with open(args.json, "w") as out:
            json.dump(result, out, indent=2)


if __name__ == "__main__":
    main()
