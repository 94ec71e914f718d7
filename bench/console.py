#!/usr/bin/env python3
"""The GUI console's figures of issue 6: frames per second for full-screen 1920x1080 guest
updates, and the latency from a guest framebuffer write to the widget's next rendered frame
holding it.

    dbus-run-session -- python3 bench/console.py --runs 5 --seconds 10

Everything is real: one Xvfb, a private session bus, a real hangard running real workers with
the tiny guests on /dev/kvm, and the real `hangar --show-vm NAME` (release builds,
GSK_RENDERER=cairo: under Xvfb the rendering is software). The display widget writes a frame
trace (HANGAR_DISPLAY_TRACE, src/widgets/display/trace.rs): a CLOCK_MONOTONIC timestamp per
damage message taken in and per frame painted (the frame clock's after-paint), with the newest
damage each frame holds.

- fps: `fbfill pixels=2073600 page=1` on a 1920x1080 screen dirties every framebuffer page as
  fast as the guest can, so every damage message the worker sends (at most 60 a second) is a
  full-screen update, and every tile is rebuilt. Counted: frames painted per second that hold
  new damage, over --seconds after a warm-up. Twice: the window at the guest's size (scale
  1.000, no scaling), and the window at its default 900x680 (scaled to fit).
- latency: `fbtick` (1024x768) draws row n mod 768 and prints "tick n" on its serial port; the
  driver reads the VM's serial socket itself. For each tick: the first damage covering that
  row after the previous tick, then the first frame painted holding that damage; latency is
  that frame's time minus the serial line's arrival (0 when the frame came first, as in
  bench/display.py, so the guest's few port writes are not counted).

hangard runs the workers through a small wrapper that adds `--display WxH` (definitions have no
screen size yet; the worker's default is 1280x800).
"""

import argparse
import json
import os
import select
import socket
import statistics
import subprocess
import sys
import tempfile
import threading
import time

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
RELEASE = os.path.join(ROOT, "target/release")
TICK = os.sysconf("SC_CLK_TCK")


def start_xvfb(size):
    read_fd, write_fd = os.pipe()
    xvfb = subprocess.Popen(
        ["Xvfb", "-displayfd", str(write_fd), "-screen", "0", f"{size}x24", "-nolisten", "tcp"],
        pass_fds=[write_fd], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    os.close(write_fd)
    number = os.read(read_fd, 16).decode().strip()
    # The read end stays open: Xvfb may write the rest of its line later, and a closed pipe
    # would kill it with SIGPIPE.
    if not number:
        sys.exit("console bench: Xvfb did not start")
    # Xvfb names its display before it takes clients: wait until one gets in.
    for _ in range(100):
        if subprocess.run(["xdotool", "getdisplaygeometry"], env=dict(os.environ, DISPLAY=f":{number}"),
                          capture_output=True).returncode == 0:
            break
        time.sleep(0.1)
    else:
        sys.exit(f"console bench: Xvfb on :{number} takes no clients")
    return xvfb, f":{number}"


def ctl(*args):
    return subprocess.run([os.path.join(RELEASE, "hangarctl"), *args], check=True,
                          capture_output=True, text=True).stdout


def cpu_seconds(pid):
    with open(f"/proc/{pid}/stat") as stat:
        fields = stat.read().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / TICK


def waited_ns(pid):
    """Time the process's main thread (GTK's) spent runnable but waiting for a core."""
    with open(f"/proc/{pid}/schedstat") as f:
        return int(f.read().split()[1])


def read_trace(path):
    damage, frames = [], []  # (seq, ns, [(y, h)]), (ns, seq, tiles, scale)
    with open(path) as f:
        for line in f:
            parts = line.split()
            if not parts or not line.endswith("\n"):
                continue
            if parts[0] == "damage":
                bands = [tuple(int(v) for v in p.split(":")) for p in parts[3:]]
                damage.append((int(parts[1]), int(parts[2]), bands))
            elif parts[0] == "resync":
                damage.append((int(parts[1]), int(parts[2]), [(0, 1 << 30)]))
            elif parts[0] == "frame":
                frames.append((int(parts[1]), int(parts[2]), int(parts[3]), float(parts[4])))
    return damage, frames


def quantile(values, q):
    values = sorted(values)
    return values[min(len(values) - 1, int(q * len(values)))] if values else None


class Session:
    """One GUI run: a VM started, `hangar --show-vm` on it with a trace, stopped at the end."""

    def __init__(self, bench, vm, display, window_size=None):
        self.bench, self.vm = bench, vm
        with open(bench.size_file, "w") as f:
            f.write(display)
        ctl("start", vm)
        self.trace = os.path.join(bench.home, f"trace-{vm}-{time.monotonic_ns()}")
        env = dict(bench.env, HANGAR_DISPLAY_TRACE=self.trace)
        self.gui = subprocess.Popen([os.path.join(RELEASE, "hangar"), "--show-vm", vm], env=env,
                                    stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        deadline = time.monotonic() + 30
        while not (os.path.exists(self.trace) and "frame" in open(self.trace).read()):
            if time.monotonic() > deadline:
                self.close()
                sys.exit(f"console bench: {vm}'s console painted no frame within 30 s")
            time.sleep(0.1)
        if window_size:
            subprocess.run(["xdotool", "search", "--sync", "--name", f"^{vm} .+ Hangar$", "windowsize",
                            str(window_size[0]), str(window_size[1])], env=env, check=True,
                           capture_output=True, timeout=30)

    def uuid(self):
        return next(v["uuid"] for v in json.loads(ctl("list", "--all", "--json")) if v["name"] == self.vm)

    def close(self):
        self.gui.terminate()
        self.gui.wait()
        ctl("destroy", self.vm)


class Bench:
    def __init__(self, args):
        self.args = args
        self.home = tempfile.mkdtemp(prefix="hangar-consolebench-")
        self.env = dict(os.environ)
        for var, sub in (("XDG_CONFIG_HOME", "config"), ("XDG_DATA_HOME", "data"),
                         ("XDG_CACHE_HOME", "cache")):
            self.env[var] = os.path.join(self.home, sub)
            os.makedirs(self.env[var])
        self.env["XDG_RUNTIME_DIR"] = os.path.join(self.home, "run")
        os.makedirs(self.env["XDG_RUNTIME_DIR"], mode=0o700)
        self.env["GSK_RENDERER"] = "cairo"
        self.env["NO_AT_BRIDGE"] = "1"
        # UTF-8 for xdotool's window-title match ("full – Hangar").
        self.env["LC_ALL"] = "C.UTF-8"
        self.env["LANGUAGE"] = "en"
        # The worker, with the screen size this run wants.
        self.size_file = os.path.join(self.home, "display-size")
        wrapper_dir = os.path.join(self.home, "bin")
        os.makedirs(wrapper_dir)
        self.wrapper = os.path.join(wrapper_dir, "hangar-vmm")
        with open(self.wrapper, "w") as f:
            f.write(f'#!/bin/sh\nexec nice -n {args.worker_nice} {RELEASE}/hangar-vmm '
                    f'--display "$(cat {self.size_file})" "$@"\n')
        os.chmod(self.wrapper, 0o755)

    def define(self, name, guest, cmdline):
        path = os.path.join(self.home, f"{name}.json")
        with open(path, "w") as out:
            json.dump({"name": name, "kernel": os.path.join(self.tiny, f"{guest}.elf"), "memory": "32M",
                       "cmdline": cmdline, "display": "framebuffer"}, out)
        ctl("define", path)

    def fps_run(self, window_size):
        session = Session(self, "full", "1920x1080", window_size)
        try:
            time.sleep(self.args.warmup)
            start = time.monotonic_ns()
            cpu0, xcpu0 = cpu_seconds(session.gui.pid), cpu_seconds(self.xvfb.pid)
            wait0 = waited_ns(session.gui.pid)
            time.sleep(self.args.seconds)
            end = time.monotonic_ns()
            waited = (waited_ns(session.gui.pid) - wait0) / (end - start) * 100
            cpu = (cpu_seconds(session.gui.pid) - cpu0) / ((end - start) / 1e9) * 100
            xcpu = (cpu_seconds(self.xvfb.pid) - xcpu0) / ((end - start) / 1e9) * 100
        finally:
            session.close()
        damage, frames = read_trace(session.trace)
        seconds = (end - start) / 1e9
        window = [f for f in frames if start <= f[0] < end]
        before = [f for f in frames if f[0] < start]
        last_seq = before[-1][1] if before else 0
        new = 0
        for frame in window:
            if frame[1] > last_seq:
                new += 1
                last_seq = frame[1]
        full = [d for d in damage if start <= d[1] < end
                and min(y for y, _ in d[2]) == 0 and max(y + h for y, h in d[2]) >= 1080]
        return {"fps": new / seconds,
                "painted_per_s": len(window) / seconds,
                "full_screen_damage_per_s": len(full) / seconds,
                "tiles_per_frame": statistics.mean(f[2] for f in window) if window else 0,
                "scale": window[-1][3] if window else None,
                "gui_cpu_percent": cpu, "xvfb_cpu_percent": xcpu, "gui_waiting_for_cpu_percent": waited,
                "load_average": os.getloadavg()[0]}

    def latency_run(self):
        session = Session(self, "tick", "1024x768")
        ticks = {}
        stop = threading.Event()
        try:
            serial = socket.socket(socket.AF_UNIX)
            serial.connect(os.path.join(self.env["XDG_RUNTIME_DIR"], "hangar", session.uuid(), "serial.sock"))

            def read_serial():
                buf = b""
                while not stop.is_set():
                    ready, _, _ = select.select([serial], [], [], 0.1)
                    if not ready:
                        continue
                    chunk = serial.recv(65536)
                    now = time.monotonic_ns()
                    if not chunk:
                        return
                    buf += chunk
                    while b"\n" in buf:
                        line, buf = buf.split(b"\n", 1)
                        if line.startswith(b"tick "):
                            try:
                                ticks[int(line[5:])] = now
                            except ValueError:
                                pass

            reader = threading.Thread(target=read_serial)
            reader.start()
            time.sleep(self.args.warmup)  # the serial backlog arrives in the first read
            start = time.monotonic_ns()
            cpu0 = cpu_seconds(session.gui.pid)
            time.sleep(self.args.seconds)
            end = time.monotonic_ns()
            cpu = (cpu_seconds(session.gui.pid) - cpu0) / ((end - start) / 1e9) * 100
            stop.set()
            reader.join()
            serial.close()
        finally:
            session.close()
        damage, frames = read_trace(session.trace)
        total, widget = [], []
        for tick in sorted(t for t, at in ticks.items() if start <= at < end):
            at, row = ticks[tick], tick % 768
            prev = ticks.get(tick - 1, at - 50_000_000)
            hit = next((d for d in damage if d[1] >= prev and any(y <= row < y + h for y, h in d[2])), None)
            if hit is None:
                continue
            frame = next((f for f in frames if f[1] >= hit[0] and f[0] >= hit[1]), None)
            if frame is None:
                continue
            total.append(max(0, frame[0] - at) / 1e6)
            widget.append((frame[0] - hit[1]) / 1e6)
        seconds = (end - start) / 1e9
        window = [f for f in frames if start <= f[0] < end]
        return {"samples": len(total), "ticks_per_s": len([a for a in ticks.values() if start <= a < end]) / seconds,
                "p50": quantile(total, 0.5), "p90": quantile(total, 0.9), "p99": quantile(total, 0.99),
                "max": max(total) if total else None,
                "damage_to_frame_p50": quantile(widget, 0.5), "damage_to_frame_p99": quantile(widget, 0.99),
                "painted_per_s": len(window) / seconds, "gui_cpu_percent": cpu}

    def run(self):
        if not self.args.no_build:
            subprocess.run(["cargo", "build", "--release", "--locked", "--workspace", "--bins"], cwd=ROOT,
                           check=True)
        self.tiny = subprocess.run([os.path.join(ROOT, "tests/guests/tiny/build")], check=True,
                                   capture_output=True, text=True).stdout.strip().splitlines()[-1]
        self.xvfb = xvfb = None
        xvfb, display = start_xvfb("2560x1440")
        self.xvfb = xvfb
        self.env["DISPLAY"] = display
        os.environ.update(self.env)
        hangard = subprocess.Popen([os.path.join(RELEASE, "hangard"), "--vmm", self.wrapper,
                                    "--stats-interval", "1000"], env=self.env, stderr=subprocess.DEVNULL)
        results = {"load_average_before": os.getloadavg()[0]}
        try:
            for _ in range(100):
                if subprocess.run([os.path.join(RELEASE, "hangarctl"), "list"],
                                  capture_output=True).returncode == 0:
                    break
                time.sleep(0.1)
            else:
                sys.exit("console bench: hangard did not come up")
            self.define("full", "fbfill", "pixels=2073600 page=1")
            self.define("tick", "fbtick", f"delay={self.args.delay}")
            parts = self.args.only.split(",") if self.args.only else ["fps", "latency"]
            if "fps" in parts:
                # The window at the guest's size: the display 1920 wide inside the window's
                # 5-pixel border, the header bar above its 1080 rows (the trace's scale says
                # 1.000 when it fits exactly).
                for label, size in (("1:1", (1930, 1150)), ("fit 900x680", None)):
                    runs = [self.fps_run(size) for _ in range(self.args.runs)]
                    for r in runs:
                        print(json.dumps({"fps_run": label, **{k: round(v, 3) if isinstance(v, float) else v
                                                               for k, v in r.items()}}), flush=True)
                    fps = [r["fps"] for r in runs]
                    summary = {"median": statistics.median(fps), "min": min(fps), "max": max(fps),
                               "cpu_median": statistics.median(r["gui_cpu_percent"] for r in runs),
                               "xvfb_cpu_median": statistics.median(r["xvfb_cpu_percent"] for r in runs),
                               "wait_median": statistics.median(r["gui_waiting_for_cpu_percent"] for r in runs),
                               "damage_per_s_median": statistics.median(r["full_screen_damage_per_s"] for r in runs),
                               "scale": runs[-1]["scale"]}
                    print(f"fps, full-screen 1920x1080, window {label}: median {summary['median']:.1f}, "
                          f"{summary['min']:.1f}–{summary['max']:.1f} over {len(runs)} runs "
                          f"(worker sent {summary['damage_per_s_median']:.1f} full-screen damage/s; "
                          f"scale {summary['scale']}; CPU: GUI {summary['cpu_median']:.0f} %, "
                          f"Xvfb {summary['xvfb_cpu_median']:.0f} %; GUI runnable but waiting for a core "
                          f"{summary['wait_median']:.0f} % of the time)", flush=True)
                    results[f"fps {label}"] = summary
            if "latency" in parts:
                runs = [self.latency_run() for _ in range(self.args.runs)]
                for r in runs:
                    print(json.dumps({"latency_run": {k: round(v, 2) if isinstance(v, float) else v
                                                      for k, v in r.items()}}), flush=True)
                keys = ("p50", "p90", "p99", "max", "damage_to_frame_p50", "damage_to_frame_p99")
                summary = {k: {"median": statistics.median(r[k] for r in runs),
                               "min": min(r[k] for r in runs), "max": max(r[k] for r in runs)} for k in keys}
                summary["samples"] = sum(r["samples"] for r in runs)
                print("latency, guest write → painted frame (ms): " + ", ".join(
                    f"{k} median {summary[k]['median']:.1f} ({summary[k]['min']:.1f}–{summary[k]['max']:.1f})"
                    for k in keys) + f"; {summary['samples']} rows over {len(runs)} runs", flush=True)
                results["latency"] = summary
        finally:
            hangard.terminate()
            hangard.wait()
            xvfb.terminate()
            xvfb.wait()
            import glob
            import signal
            for pid_file in glob.glob(os.path.join(self.env["XDG_RUNTIME_DIR"], "hangar", "*", "*pid")):
                try:
                    os.kill(int(open(pid_file).read().strip()), signal.SIGKILL)
                except (ValueError, OSError):
                    pass
        results["load_average_after"] = os.getloadavg()[0]
        if self.args.json:
            print(json.dumps(results))


def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--runs", type=int, default=5)
    parser.add_argument("--seconds", type=float, default=10)
    parser.add_argument("--warmup", type=float, default=2)
    parser.add_argument("--delay", type=int, default=2000, help="fbtick's pause loops between ticks")
    parser.add_argument("--only", help="comma-separated: fps, latency")
    parser.add_argument("--worker-nice", type=int, default=0,
                        help="run the workers at this nice level (fbfill's vCPU spins a whole core)")
    parser.add_argument("--no-build", action="store_true", help="use target/release as it is")
    parser.add_argument("--json", action="store_true", help="print the figures as JSON at the end")
    args = parser.parse_args()
    if not os.environ.get("DBUS_SESSION_BUS_ADDRESS"):
        sys.exit("console bench: run me through dbus-run-session")
    for tool in ("Xvfb", "xdotool"):
        if subprocess.run(["sh", "-c", f"command -v {tool}"], capture_output=True).returncode:
            sys.exit(f"console bench: {tool} is missing (scripts/install-deps)")
    Bench(args).run()


if __name__ == "__main__":
    main()
