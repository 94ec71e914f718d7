"""Shared pieces of the VMM benchmarks: start a VMM, time its serial output, measure memory.

Every figure is a wall-clock time from just before the VMM process is spawned, on
CLOCK_MONOTONIC, so the worker's own trace lines (which use the same clock) line up.
"""

import os
import select
import statistics
import subprocess
import time


def spawn(cmd, env=None):
    """Starts a VMM with its serial console on a pipe. Returns (process, start time in ns)."""
    start = time.monotonic_ns()
    proc = subprocess.Popen(
        cmd,
        stdin=subprocess.DEVNULL,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        env=dict(os.environ, **(env or {})),
    )
    return proc, start


def wait_for(proc, marker, timeout):
    """Reads the process's stdout until `marker` appears. Returns (time in ns, output)."""
    deadline = time.monotonic() + timeout
    output = b""
    fd = proc.stdout.fileno()
    while marker.encode() not in output:
        left = deadline - time.monotonic()
        if left <= 0:
            raise TimeoutError(f"no {marker!r} within {timeout} s; got:\n{output[-2000:].decode(errors='replace')}")
        ready, _, _ = select.select([fd], [], [], left)
        if ready:
            chunk = os.read(fd, 65536)
            if not chunk:
                status = proc.wait()
                errors = proc.stderr.read().decode(errors="replace")[-2000:]
                raise RuntimeError(f"{proc.args[0]} exited with {status} before {marker!r}; "
                                   f"stderr:\n{errors}\nconsole:\n{output[-1000:].decode(errors='replace')}")
            output += chunk
    return time.monotonic_ns(), output


def stop(proc):
    proc.kill()
    proc.wait()


def rss_outside_guest_ram(pid, guest_bytes):
    """RSS in KiB of every mapping except guest RAM, as Firecracker's and cloud-hypervisor's
    memory-overhead tests count it: a mapping whose size is the guest's RAM (give or take the
    few pages a VMM adds around it) is guest RAM."""
    total = 0
    outside = 0
    size = None
    with open(f"/proc/{pid}/smaps") as smaps:
        for line in smaps:
            fields = line.split()
            if "-" in fields[0] and len(fields) >= 5:
                lo, hi = (int(x, 16) for x in fields[0].split("-"))
                size = hi - lo
            elif fields[0] == "Rss:":
                kib = int(fields[1])
                total += kib
                if not (guest_bytes <= size <= guest_bytes + (4 << 20)):
                    outside += kib
    return outside, total


def summary(values):
    """Median and spread of a list of numbers."""
    return {
        "median": statistics.median(values),
        "min": min(values),
        "max": max(values),
        "runs": len(values),
    }


def fmt(s, unit):
    return f"{s['median']:.1f} {unit} (min {s['min']:.1f}, max {s['max']:.1f}, n={s['runs']})"
