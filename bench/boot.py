#!/usr/bin/env python3
"""Boot time and memory overhead of a Debian kernel: hangar-vmm against QEMU microvm.

Both VMMs get the same kernel, initrd, command line, 256 MiB and 2 vCPUs, and run alternately
in one run. Boot time is wall time from process start to the guest's /init printing
HANGAR-INIT-START. Memory is the worker's RSS outside guest RAM while the guest idles at /init.
Run it where KVM is hardware-backed: directly, or inside the nested lab. `bench/boot` runs
it round by round in the lab and aggregates the rounds (`--aggregate`).
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
    parser.add_argument("--memory-runs", type=int, default=3)
    parser.add_argument("--cold", action="store_true",
                        help="first time one hangar-vmm boot with an empty kernel cache")
    parser.add_argument("--json", help="also write the raw results here")
    parser.add_argument("--aggregate", nargs="+", metavar="JSON",
                        help="summarise the raw results of several rounds, and run nothing")
    args = parser.parse_args()
    if args.aggregate:
        return aggregate(args.aggregate)

    kernel = os.path.join(args.cache, f"vmlinuz-{args.flavor}")
    initrd = os.path.join(args.cache, f"initrd-{args.flavor}.img")
    guest_bytes = int(args.memory.rstrip("M")) << 20
    boot_cmds = commands(args, kernel, initrd, "console=ttyS0 panic=-1 hangar.test=poweroff")
    idle_cmds = commands(args, kernel, initrd, "console=ttyS0 panic=-1 hangar.test=shell")

    boot = {name: [] for name in boot_cmds}
    memory = {name: [] for name in boot_cmds}
    if args.cold:
        proc, start = spawn(boot_cmds["hangar-vmm"])
        at, _ = wait_for(proc, MARKER, 600)
        stop(proc)
        boot["hangar-vmm, cold kernel cache"] = [(at - start) / 1e9]
        print(f"hangar-vmm with a cold kernel cache: /init after {(at - start) / 1e9:.2f} s", flush=True)
    else:
        warm_kernel_cache(args.vmm, kernel)
    for run in range(args.runs):
        for name, cmd in boot_cmds.items():
            proc, start = spawn(cmd)
            at, _ = wait_for(proc, MARKER, 600)
            boot[name].append((at - start) / 1e9)
            stop(proc)
            print(f"run {run + 1}/{args.runs} {name}: /init after {boot[name][-1]:.2f} s", flush=True)
    for name, cmd in idle_cmds.items():
        for _ in range(args.memory_runs):  # 0: boot times only
            proc, _ = spawn(cmd)
            wait_for(proc, MARKER, 600)
            time.sleep(3)
            outside, total = rss_outside_guest_ram(proc.pid, guest_bytes)
            memory[name].append(outside / 1024)
            stop(proc)
            print(f"{name}: RSS outside guest RAM {outside / 1024:.1f} MiB (total {total / 1024:.1f} MiB)", flush=True)

    raw = {"flavor": args.flavor, "boot_s": boot, "rss_outside_guest_mib": memory}
    if args.json:
        with open(args.json, "w") as out:
            json.dump(raw, out, indent=2)
    report([raw])


def warm_kernel_cache(vmm, kernel):
    """Boots hangar-vmm just far enough to unpack the kernel into its cache, as any earlier boot
    of the same kernel would have; the first, cold boot is measured separately."""
    proc, _ = spawn([vmm, "--kernel", kernel, "--memory", "64M", "--serial", "none"],
                    {"HANGAR_TRACE_STARTUP": "1"})
    deadline = time.monotonic() + 300
    while b"first KVM_RUN" not in proc.stderr.peek() and time.monotonic() < deadline:
        time.sleep(0.05)
    stop(proc)


def report(rounds):
    """Prints median and spread over every run of every round."""
    merged = {"boot_s": {}, "rss_outside_guest_mib": {}}
    for raw in rounds:
        for figure in merged:
            for name, values in raw[figure].items():
                merged[figure].setdefault(name, []).extend(values)
    result = {figure: {name: summary(v) for name, v in by_name.items() if v}
              for figure, by_name in merged.items()}
    print(json.dumps(result, indent=2))
    for name, s in result["boot_s"].items():
        print(f"{name:13} boot to /init: {fmt(s, 's')}")
    for name, s in result["rss_outside_guest_mib"].items():
        print(f"{name:13} RSS outside guest RAM: {fmt(s, 'MiB')}")
    if {"hangar-vmm", "qemu-microvm"} <= result["boot_s"].keys():
        ratio = result["boot_s"]["hangar-vmm"]["median"] / result["boot_s"]["qemu-microvm"]["median"]
        print(f"boot ratio hangar-vmm / QEMU microvm (medians): {ratio:.3f}")


def aggregate(paths):
    rounds = []
    for path in paths:
        with open(path) as raw:
            rounds.append(json.load(raw))
    report(rounds)


if __name__ == "__main__":
    main()
