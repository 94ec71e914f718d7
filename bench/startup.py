#!/usr/bin/env python3
"""Start-up: process start to the first KVM_RUN, and to the guest's first serial line.

Runs on the machine's own /dev/kvm with the tiny `hello` guest (a few hundred instructions, so
even an emulated KVM such as kvm_pvm measures the VMM, not the guest). hangar-vmm and QEMU
microvm run alternately in one run.
"""

import argparse
import json
import os
import subprocess
import sys

sys.path.insert(0, os.path.dirname(__file__))
from vmmbench import fmt, spawn, stop, summary, wait_for  # noqa: E402

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def main():
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--runs", type=int, default=10)
    parser.add_argument("--memory", default="256M")
    parser.add_argument("--vmm", default=os.path.join(ROOT, "target/release/hangar-vmm"))
    args = parser.parse_args()

    tiny = subprocess.run([os.path.join(ROOT, "tests/guests/tiny/build")], check=True,
                          capture_output=True, text=True).stdout.strip().splitlines()[-1]
    guest = os.path.join(tiny, "hello.elf")
    marker = "hello from hangar tiny guest"
    hangar_cmd = [args.vmm, "--kernel", guest, "--memory", args.memory, "--cmdline", "bench"]
    qemu_cmd = ["qemu-system-x86_64", "-M", "microvm,accel=kvm", "-cpu", "host", "-m", args.memory,
                "-nodefaults", "-no-user-config", "-nographic", "-serial", "stdio",
                "-kernel", guest, "-append", "bench"]

    first_run, hangar_serial, qemu_serial = [], [], []
    for _ in range(args.runs):
        proc, start = spawn(hangar_cmd, {"HANGAR_TRACE_STARTUP": "1"})
        at, _ = wait_for(proc, marker, 30)
        proc.wait(timeout=30)
        trace = proc.stderr.read().decode()
        first = int(trace.split("monotonic ")[1].split()[0])
        first_run.append((first - start) / 1e6)
        hangar_serial.append((at - start) / 1e6)

        proc, start = spawn(qemu_cmd)
        at, _ = wait_for(proc, marker, 30)
        stop(proc)
        qemu_serial.append((at - start) / 1e6)

    result = {
        "hangar_first_kvm_run_ms": summary(first_run),
        "hangar_first_serial_ms": summary(hangar_serial),
        "qemu_microvm_first_serial_ms": summary(qemu_serial),
    }
    print(json.dumps(result, indent=2))
    print(f"hangar-vmm  process start -> first KVM_RUN:     {fmt(result['hangar_first_kvm_run_ms'], 'ms')}")
    print(f"hangar-vmm  process start -> first serial line: {fmt(result['hangar_first_serial_ms'], 'ms')}")
    print(f"QEMU microvm process start -> first serial line: {fmt(result['qemu_microvm_first_serial_ms'], 'ms')}")
    ratio = result["hangar_first_serial_ms"]["median"] / result["qemu_microvm_first_serial_ms"]["median"]
    print(f"ratio hangar/QEMU (first serial line): {ratio:.3f}")


if __name__ == "__main__":
    main()
