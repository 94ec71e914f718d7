#!/usr/bin/env python3
"""GUI figures of issue 6: cold start against virt-manager, idle CPU with a console open, and
memory with 100 VMs listed.

Everything runs under one Xvfb and one private session bus (run it through
`dbus-run-session`), with a real hangard and real workers with tiny guests:

    dbus-run-session -- python3 bench/gui.py --runs 10

- Cold start: from launch to the first top-level window mapped on the X server, for
  `hangar` (the manager window, connected to hangard and listing its VMs), for virt-manager 4.1
  (`virt-manager --no-fork -c test:///default`, Debian's GTK3/Python package) and for an empty
  GTK4 window (`target/release/examples/empty_window`, the floor), alternating, `--runs` each.
- Idle: CPU of `hangar --show-vm` with a static guest console open, over 10 s.
- Memory: RSS of `hangar` with 100 defined VMs listed.

Window mapping is seen by an X client of our own (ctypes on libX11) that watches the root
window for MapNotify, so no polling interval blurs the figure.
"""

import argparse
import ctypes
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
RELEASE = os.path.join(ROOT, "target/release")
TICK = os.sysconf("SC_CLK_TCK")


class XEvent(ctypes.Union):
    _fields_ = [("type", ctypes.c_int), ("pad", ctypes.c_long * 24)]


class MapWatcher:
    """Sees top-level windows being mapped on the X server."""

    SUBSTRUCTURE_NOTIFY = 1 << 19
    MAP_NOTIFY = 19

    def __init__(self, display):
        self.x = ctypes.CDLL("libX11.so.6")
        self.x.XOpenDisplay.restype = ctypes.c_void_p
        self.x.XOpenDisplay.argtypes = [ctypes.c_char_p]
        self.x.XDefaultRootWindow.argtypes = [ctypes.c_void_p]
        self.x.XDefaultRootWindow.restype = ctypes.c_ulong
        self.x.XSelectInput.argtypes = [ctypes.c_void_p, ctypes.c_ulong, ctypes.c_long]
        self.x.XPending.argtypes = [ctypes.c_void_p]
        self.x.XNextEvent.argtypes = [ctypes.c_void_p, ctypes.POINTER(XEvent)]
        self.x.XConnectionNumber.argtypes = [ctypes.c_void_p]
        self.x.XFlush.argtypes = [ctypes.c_void_p]
        for _ in range(50):
            self.dpy = self.x.XOpenDisplay(display.encode())
            if self.dpy:
                break
            time.sleep(0.1)
        if not self.dpy:
            sys.exit(f"gui bench: cannot open X display {display}")
        root = self.x.XDefaultRootWindow(self.dpy)
        self.x.XSelectInput(self.dpy, root, self.SUBSTRUCTURE_NOTIFY)
        self.x.XFlush(self.dpy)
        self.fd = self.x.XConnectionNumber(self.dpy)

    def drain(self):
        event = XEvent()
        while self.x.XPending(self.dpy):
            self.x.XNextEvent(self.dpy, ctypes.byref(event))

    def wait_map(self, timeout):
        """Seconds (monotonic) at which the next top-level window was mapped, or None."""
        import select

        event = XEvent()
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            while self.x.XPending(self.dpy):
                self.x.XNextEvent(self.dpy, ctypes.byref(event))
                if event.type == self.MAP_NOTIFY:
                    return time.monotonic()
            select.select([self.fd], [], [], max(0.0, deadline - time.monotonic()))
        return None


def start_xvfb():
    read_fd, write_fd = os.pipe()
    xvfb = subprocess.Popen(
        ["Xvfb", "-displayfd", str(write_fd), "-screen", "0", "1920x1080x24", "-nolisten", "tcp"],
        pass_fds=[write_fd], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    os.close(write_fd)
    number = os.read(read_fd, 16).decode().strip()
    os.close(read_fd)
    if not number:
        sys.exit("gui bench: Xvfb did not start")
    return xvfb, f":{number}"


def ctl(*args):
    return subprocess.run([os.path.join(RELEASE, "hangarctl"), *args], check=True,
                          capture_output=True, text=True).stdout


def cold_start(watcher, command, env):
    """Launch-to-mapped time of `command`'s first window, in ms; the process is stopped."""
    watcher.drain()
    started = time.monotonic()
    proc = subprocess.Popen(command, env=env, stdout=subprocess.DEVNULL,
                            stderr=subprocess.DEVNULL)
    mapped = watcher.wait_map(30)
    proc.terminate()
    try:
        proc.wait(5)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.wait()
    if mapped is None:
        sys.exit(f"gui bench: {command[0]} mapped no window within 30 s")
    return (mapped - started) * 1000


def cpu_seconds(pid):
    with open(f"/proc/{pid}/stat") as stat:
        fields = stat.read().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / TICK


def rss_mib(pid):
    with open(f"/proc/{pid}/status") as status:
        for line in status:
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) / 1024
    return 0.0


def spread(values):
    values = sorted(values)
    return f"median {statistics.median(values):.0f} ms, {values[0]:.0f}–{values[-1]:.0f} ms"


def main():
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--runs", type=int, default=10)
    parser.add_argument("--json", action="store_true", help="print the figures as JSON")
    args = parser.parse_args()
    if not os.environ.get("DBUS_SESSION_BUS_ADDRESS"):
        sys.exit("gui bench: run me through dbus-run-session")
    for tool in ("Xvfb", "virt-manager"):
        if subprocess.run(["sh", "-c", f"command -v {tool}"], capture_output=True).returncode:
            sys.exit(f"gui bench: {tool} is missing (apt-get install xvfb virt-manager)")
    subprocess.run(["cargo", "build", "--release", "--locked", "--workspace", "--bins",
                    "--example", "empty_window"], cwd=ROOT, check=True)
    tiny = subprocess.run([os.path.join(ROOT, "tests/guests/tiny/build")], check=True,
                          capture_output=True, text=True).stdout.strip().splitlines()[-1]

    home = tempfile.mkdtemp(prefix="hangar-guibench-")
    env = dict(os.environ)
    for var, sub in (("XDG_CONFIG_HOME", "config"), ("XDG_DATA_HOME", "data"),
                     ("XDG_CACHE_HOME", "cache")):
        env[var] = os.path.join(home, sub)
        os.makedirs(env[var])
    env["XDG_RUNTIME_DIR"] = os.path.join(home, "run")
    os.makedirs(env["XDG_RUNTIME_DIR"], mode=0o700)
    env["GSK_RENDERER"] = "cairo"
    env["NO_AT_BRIDGE"] = "1"
    xvfb, display = start_xvfb()
    env["DISPLAY"] = display
    os.environ.update(env)
    hangard = subprocess.Popen([os.path.join(RELEASE, "hangard")], env=env,
                               stderr=subprocess.DEVNULL)
    results = {}
    try:
        for _ in range(100):
            if subprocess.run([os.path.join(RELEASE, "hangarctl"), "list"],
                              capture_output=True).returncode == 0:
                break
            time.sleep(0.1)
        else:
            sys.exit("gui bench: hangard did not come up")
        definition = os.path.join(home, "vm.json")

        def define(name, guest, display_kind="none"):
            with open(definition, "w") as out:
                json.dump({"name": name, "kernel": os.path.join(tiny, f"{guest}.elf"),
                           "memory": "32M", "display": display_kind}, out)
            ctl("define", definition)

        define("console", "fbdraw", "framebuffer")
        for i in range(3):
            define(f"vm{i}", "ticker")

        # Cold start, alternating the three programs.
        watcher = MapWatcher(display)
        commands = {
            "hangar": [os.path.join(RELEASE, "hangar")],
            "virt-manager": ["virt-manager", "--no-fork", "-c", "test:///default"],
            "empty GTK4 window": [os.path.join(RELEASE, "examples/empty_window")],
        }
        times = {name: [] for name in commands}
        for name, command in commands.items():  # a warm-up each, not counted
            cold_start(watcher, command, env)
        for _ in range(args.runs):
            for name, command in commands.items():
                times[name].append(cold_start(watcher, command, env))
        for name, values in times.items():
            print(f"cold start, {name}: {spread(values)} over {len(values)} runs")
        ratio = statistics.median(times["hangar"]) / statistics.median(times["virt-manager"])
        print(f"cold start ratio hangar / virt-manager: {ratio:.2f}")
        results["cold_start_ms"] = times
        results["cold_start_ratio"] = ratio

        # Idle: a static console open. fbdraw draws its pattern once and then halts.
        ctl("start", "console")
        gui = subprocess.Popen([os.path.join(RELEASE, "hangar"), "--show-vm", "console"],
                               env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        time.sleep(5)
        before, start = cpu_seconds(gui.pid), time.monotonic()
        time.sleep(10)
        idle = (cpu_seconds(gui.pid) - before) / (time.monotonic() - start) * 100
        gui.terminate()
        gui.wait()
        ctl("destroy", "console")
        print(f"idle: hangar --show-vm with a static console: {idle:.2f}% of a core over 10 s")
        results["idle_cpu_percent"] = idle

        # Memory with 100 VMs listed.
        for i in range(3, 99):  # 99 of them and "console": 100 VMs
            define(f"vm{i}", "ticker")
        gui = subprocess.Popen([os.path.join(RELEASE, "hangar")], env=env,
                               stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        time.sleep(6)
        listed = len(json.loads(ctl("--json", "list", "--all")))
        rss = rss_mib(gui.pid)
        gui.terminate()
        gui.wait()
        print(f"memory: hangar with {listed} VMs listed: {rss:.1f} MiB RSS")
        results["rss_mib_100_vms"] = rss
    finally:
        hangard.terminate()
        hangard.wait()
        xvfb.terminate()
        xvfb.wait()
    if args.json:
        print(json.dumps(results))


if __name__ == "__main__":
    main()
