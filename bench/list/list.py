#!/usr/bin/env python3
"""List and start benchmarks for hangard/hangarctl (issue 5).

List: 1000 defined VMs listed with their properties,
  hangarctl list --all --json          (D-Bus, hangard, release build)
  virsh -c test:///<node.xml> list --all  (libvirt's test driver with the same 1000 domains)
Both are real clients of a real API and run as fresh processes, as a user or script would.
libvirt's test:///default holds a single domain and forgets definitions per connection, so the
1000 domains come from a custom test-driver node file, which virsh loads on every connection.

Start: from launching `hangarctl start` to the worker's first KVM_RUN, read from the worker's
startup trace (HANGAR_TRACE_STARTUP=1 in hangard's environment, inherited by the worker, which
then logs "first KVM_RUN at monotonic N ns" to its worker.log on the clock Python's
time.monotonic_ns() reads). Also timed: `hangarctl start` until it returns, which is once the
worker's control socket has answered a status request with state "running".

Usage: bench/list/list.py [--vms 1000] [--runs 10] [--only list|start] [--json FILE]
Needs: dbus-daemon, virsh (libvirt-clients), qemu-img, /dev/kvm for the start benchmark.
"""

import argparse
import json
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
import uuid

REPO = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))


def build():
    subprocess.run(
        ["cargo", "build", "--release", "-p", "hangar-engine",
         "--bin", "hangard", "--bin", "hangarctl", "--bin", "hangar-vmm"],
        cwd=REPO, check=True, stdout=subprocess.DEVNULL)
    out = subprocess.run([os.path.join(REPO, "tests/guests/tiny/build")],
                         check=True, capture_output=True, text=True).stdout
    return os.path.join(REPO, "target/release"), out.strip().splitlines()[-1]


def timed(cmd, env=None, expect_ok=True):
    start = time.perf_counter()
    proc = subprocess.run(cmd, env=env, capture_output=True, text=True)
    elapsed = time.perf_counter() - start
    if expect_ok and proc.returncode != 0:
        sys.exit(f"{' '.join(cmd)} failed: {proc.stderr.strip()}")
    return elapsed * 1000.0, proc.stdout


def summary(samples):
    s = sorted(samples)
    return {
        "runs": len(s),
        "median_ms": round(statistics.median(s), 2),
        "min_ms": round(s[0], 2),
        "max_ms": round(s[-1], 2),
        "stdev_ms": round(statistics.stdev(s), 2) if len(s) > 1 else 0.0,
    }


class Host:
    """A private session bus, XDG directories and hangard."""

    def __init__(self, bindir):
        self.bindir = bindir
        self.dir = tempfile.mkdtemp(prefix="hangar-bench-")
        for sub in ("config", "data", "run"):
            os.makedirs(os.path.join(self.dir, sub))
        self.env = dict(os.environ,
                        XDG_CONFIG_HOME=os.path.join(self.dir, "config"),
                        XDG_DATA_HOME=os.path.join(self.dir, "data"),
                        XDG_RUNTIME_DIR=os.path.join(self.dir, "run"))
        self.bus = subprocess.Popen(
            ["dbus-daemon", "--session", "--print-address=1", "--nofork", "--nopidfile"],
            stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True, env=self.env)
        self.env["DBUS_SESSION_BUS_ADDRESS"] = self.bus.stdout.readline().strip()
        self.hangard = None

    def ctl(self, *args):
        return [os.path.join(self.bindir, "hangarctl"), *args]

    def start_hangard(self):
        """Starts hangard; returns the milliseconds until it answered a list."""
        began = time.perf_counter()
        log = open(os.path.join(self.dir, "hangard.log"), "a")
        self.hangard = subprocess.Popen([os.path.join(self.bindir, "hangard")],
                                        env=self.env, stdout=log, stderr=log)
        deadline = time.time() + 60
        while time.time() < deadline:
            if subprocess.run(self.ctl("list"), env=self.env, capture_output=True).returncode == 0:
                return (time.perf_counter() - began) * 1000.0
            time.sleep(0.02)
        sys.exit("hangard did not come up")

    def close(self):
        runtime = os.path.join(self.dir, "run", "hangar")
        for vm in os.listdir(runtime) if os.path.isdir(runtime) else []:
            try:
                with open(os.path.join(runtime, vm, "pid")) as f:
                    os.kill(int(f.read()), 9)
            except (OSError, ValueError):
                pass
        for proc in (self.hangard, self.bus):
            if proc:
                proc.kill()
                proc.wait()
        shutil.rmtree(self.dir, ignore_errors=True)


def write_definitions(host, count, kernel):
    """Defines `count` VMs the way hangard stores them (the files a Define writes)."""
    vms = os.path.join(host.dir, "config", "hangar", "vms")
    os.makedirs(vms, exist_ok=True)
    for i in range(count):
        vm_uuid = str(uuid.uuid4())
        definition = {
            "schema_version": 1, "name": f"vm{i:04d}", "uuid": vm_uuid,
            "vcpus": 1 + i % 4, "memory": "256M", "kernel": kernel,
            "cmdline": "console=ttyS0", "display": "framebuffer",
            "autostart": False, "generation": 1,
        }
        with open(os.path.join(vms, f"{vm_uuid}.json"), "w") as f:
            json.dump(definition, f)


def write_test_node(path, count):
    """A libvirt test-driver node file with `count` domains."""
    with open(path, "w") as f:
        f.write("<node>\n")
        for i in range(count):
            f.write(f"""  <domain type='test'>
    <name>vm{i:04d}</name>
    <uuid>{uuid.uuid4()}</uuid>
    <memory unit='KiB'>262144</memory>
    <vcpu>{1 + i % 4}</vcpu>
    <os><type>hvm</type></os>
  </domain>
""")
        f.write("</node>\n")


def bench_list(bindir, guests, count, runs):
    host = Host(bindir)
    try:
        # Written as Define writes them (hangard loads them at start), which is much faster
        # than 1000 Define calls.
        kernel = os.path.join(guests, "hello.elf")
        write_definitions(host, count, kernel)
        startup_ms = host.start_hangard()
        cmd = host.ctl("list", "--all", "--json")
        timed(cmd, host.env)  # warm-up
        hangar = []
        for _ in range(runs):
            ms, out = timed(cmd, host.env)
            listed = json.loads(out)
            assert len(listed) == count, f"hangarctl listed {len(listed)} VMs"
            assert all("state" in vm and "vcpus" in vm and "memory" in vm for vm in listed)
            hangar.append(ms)

        node = os.path.join(host.dir, "node.xml")
        write_test_node(node, count)
        vcmd = ["virsh", "-c", f"test://{node}", "list", "--all"]
        timed(vcmd)  # warm-up
        virsh = []
        for _ in range(runs):
            ms, out = timed(vcmd)
            rows = [l for l in out.splitlines() if l.strip().startswith(tuple("0123456789-"))
                    and "vm" in l]
            assert len(rows) == count, f"virsh listed {len(rows)} domains"
            virsh.append(ms)
        baseline = [timed(["virsh", "-c", "test:///default", "list", "--all"])[0]
                    for _ in range(runs)]
        empty = Host(bindir)
        try:
            empty.start_hangard()
            ecmd = empty.ctl("list", "--all", "--json")
            timed(ecmd, empty.env)
            hangar_empty = [timed(ecmd, empty.env)[0] for _ in range(runs)]
        finally:
            empty.close()
        return {
            "vms": count,
            "hangard startup with these VMs until it answered (ms, one run)": round(startup_ms, 1),
            "hangarctl list --all --json": summary(hangar),
            "virsh -c test:///node.xml list --all": summary(virsh),
            "hangarctl list --all --json (0 VMs)": summary(hangar_empty),
            "virsh -c test:///default list --all (1 domain)": summary(baseline),
        }
    finally:
        host.close()


def first_kvm_run_ns(host, vm_uuid, after_ns):
    """The worker's "first KVM_RUN at monotonic N ns" line (HANGAR_TRACE_STARTUP) after `after_ns`."""
    log = os.path.join(host.dir, "run", "hangar", vm_uuid, "worker.log")
    deadline = time.time() + 10
    while time.time() < deadline:
        with open(log) as f:
            for line in f:
                if "first KVM_RUN at monotonic" in line:
                    at = int(line.split("monotonic ")[1].split()[0])
                    if at > after_ns:
                        return at
        time.sleep(0.005)
    sys.exit("the worker logged no first KVM_RUN")


def bench_start(bindir, guests, runs):
    host = Host(bindir)
    # The worker inherits hangard's environment; with this it logs its first KVM_RUN on the
    # CLOCK_MONOTONIC that time.monotonic_ns() reads here.
    host.env["HANGAR_TRACE_STARTUP"] = "1"
    try:
        host.start_hangard()
        definition = os.path.join(host.dir, "tick.json")
        with open(definition, "w") as f:
            json.dump({"name": "tick", "kernel": os.path.join(guests, "ticker.elf"),
                       "memory": "32M", "display": "none"}, f)
        out = timed(host.ctl("--json", "define", definition), host.env)[1]
        vm_uuid = json.loads(out)["uuid"]
        starts, first_runs = [], []
        for _ in range(runs + 1):
            began = time.monotonic_ns()
            ms, _ = timed(host.ctl("start", "tick"), host.env)
            first_runs.append((first_kvm_run_ns(host, vm_uuid, began) - began) / 1e6)
            state = json.loads(timed(host.ctl("--json", "domstate", "tick"), host.env)[1])
            assert state["state"] == "running", state
            timed(host.ctl("destroy", "tick"), host.env)
            starts.append(ms)
        return {
            "hangarctl start -> worker's first KVM_RUN": summary(first_runs[1:]),
            "hangarctl start (until it returns, VM running)": summary(starts[1:]),
        }
    finally:
        host.close()


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--vms", type=int, default=1000)
    parser.add_argument("--runs", type=int, default=10)
    parser.add_argument("--json", help="also write the results to this file")
    parser.add_argument("--only", choices=["list", "start"], help="run one benchmark only")
    args = parser.parse_args()
    bindir, guests = build()
    results = {}
    if args.only != "start":
        results["list"] = bench_list(bindir, guests, args.vms, args.runs)
    if args.only != "list" and os.access("/dev/kvm", os.R_OK | os.W_OK):
        results["start"] = bench_start(bindir, guests, args.runs)
    results["host"] = {"cpus": os.cpu_count(), "kernel": os.uname().release}
    text = json.dumps(results, indent=2)
    print(text)
    if args.json:
        with open(args.json, "w") as f:
            f.write(text + "\n")


if __name__ == "__main__":
    main()
