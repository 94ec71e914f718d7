#!/usr/bin/env python3
"""Display stream benchmark on this host's /dev/kvm with the tiny fb guests.

    python3 bench/display.py [--vmm target/debug/hangar-vmm] [--seconds 20]

Figures:
  idle     CPU time of the worker's event-loop thread (where the dirty log is read and damage
           is sent) over --seconds, with no display client and with one client connected, while
           the guest draws nothing (fbdraw waiting for input). Also counts the messages the
           client got: a static screen must cost none.
  latency  fbtick draws row n and then prints "tick n" on COM1. For every tick, the time from
           the serial line reaching us to the damage covering that row reaching the client.
           Damage may arrive before the line (the guest is still printing when the 60 Hz poll
           runs): those count as 0. The guest's own print time is not included, so the true
           draw-to-damage latency is this figure plus the time of ~8 port writes.
  stream   messages and bytes per second the client received while fbtick ran.
  full     fbfill at 1920x1080 with page=1 dirties every framebuffer page per frame (a
           full-screen update as far as the dirty log can tell) as fast as the guest can: the
           guest's frames per second, the full-screen damage messages per second the client got,
           and the event loop's CPU.
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
GUESTS = os.environ.get("HANGAR_GUEST_CACHE", os.path.expanduser("~/.cache/hangar/guests"))


def thread_cpu_ns(pid, tid):
    with open(f"/proc/{pid}/task/{tid}/schedstat") as f:
        return int(f.read().split()[0])


def start(vmm, guest, sock, cmdline=None, display="1024x768"):
    cmd = [vmm, "--kernel", f"{GUESTS}/tiny/{guest}.elf", "--memory", "32M",
           "--display", display, "--display-socket", sock]
    if cmdline:
        cmd += ["--cmdline", cmdline]
    return subprocess.Popen(cmd, stdin=subprocess.PIPE, stdout=subprocess.PIPE,
                            stderr=subprocess.DEVNULL)


def connect(sock):
    deadline = time.monotonic() + 10
    while True:
        try:
            s = socket.socket(socket.AF_UNIX)
            s.connect(sock)
            break
        except OSError:
            if time.monotonic() > deadline:
                raise
            time.sleep(0.01)
    msg, _, _, _ = s.recvmsg(4096, socket.CMSG_LEN(4))
    first, rest = msg.split(b"\n", 1)
    assert json.loads(first)["event"] == "framebuffer"
    return s, rest


def wait_line(proc, needle, timeout=30):
    deadline = time.monotonic() + timeout
    buf = b""
    while needle.encode() not in buf:
        ready, _, _ = select.select([proc.stdout], [], [], max(0, deadline - time.monotonic()))
        if not ready:
            raise TimeoutError(needle)
        buf += os.read(proc.stdout.fileno(), 65536)


def idle(vmm, seconds):
    with tempfile.TemporaryDirectory() as tmp:
        sock = f"{tmp}/d.sock"
        proc = start(vmm, "fbdraw", sock)
        try:
            wait_line(proc, "fb ready")
            t0, c0 = time.monotonic_ns(), thread_cpu_ns(proc.pid, proc.pid)
            time.sleep(seconds)
            no_client = (thread_cpu_ns(proc.pid, proc.pid) - c0) / (time.monotonic_ns() - t0)
            s, rest = connect(sock)
            s.setblocking(False)
            received = len(rest)
            t0, c0 = time.monotonic_ns(), thread_cpu_ns(proc.pid, proc.pid)
            deadline = time.monotonic() + seconds
            while time.monotonic() < deadline:
                ready, _, _ = select.select([s], [], [], deadline - time.monotonic())
                if ready:
                    received += len(s.recv(65536))
            with_client = (thread_cpu_ns(proc.pid, proc.pid) - c0) / (time.monotonic_ns() - t0)
            return {"event_loop_cpu_percent_no_client": round(100 * no_client, 4),
                    "event_loop_cpu_percent_one_client": round(100 * with_client, 4),
                    "bytes_received_while_static": received,
                    "seconds": seconds}
        finally:
            proc.kill()
            proc.wait()


def latency(vmm, seconds, delay):
    with tempfile.TemporaryDirectory() as tmp:
        sock = f"{tmp}/d.sock"
        proc = start(vmm, "fbtick", sock, f"delay={delay}")
        try:
            s, pending = connect(sock)
            damage = []  # (time, first row, last row)
            ticks = {}  # tick -> time the line arrived
            msgs = 0
            nbytes = 0
            stop = time.monotonic() + seconds

            def serial():
                buf = b""
                while time.monotonic() < stop:
                    ready, _, _ = select.select([proc.stdout], [], [], 0.1)
                    if not ready:
                        continue
                    chunk = os.read(proc.stdout.fileno(), 65536)
                    now = time.monotonic_ns()
                    if not chunk:
                        return
                    buf += chunk
                    while b"\n" in buf:
                        line, buf = buf.split(b"\n", 1)
                        if line.startswith(b"tick "):
                            ticks[int(line[5:])] = now

            reader = threading.Thread(target=serial)
            reader.start()
            s.settimeout(0.2)
            while time.monotonic() < stop:
                try:
                    chunk = s.recv(65536)
                except socket.timeout:
                    continue
                now = time.monotonic_ns()
                nbytes += len(chunk)
                pending += chunk
                while b"\n" in pending:
                    line, pending = pending.split(b"\n", 1)
                    msgs += 1
                    event = json.loads(line)
                    for r in event.get("rects", []):
                        damage.append((now, r["y"], r["y"] + r["height"]))
            reader.join()
            lat = []
            for tick, at in ticks.items():
                row = tick % 768
                # The first damage covering the row after the previous tick drew over it.
                prev = ticks.get(tick - 1, 0)
                hits = [t for (t, a, b) in damage if a <= row < b and t >= prev]
                if hits:
                    lat.append(max(0, min(hits) - at) / 1e6)
            lat.sort()
            q = lambda p: lat[min(len(lat) - 1, int(p * len(lat)))] if lat else None
            return {"ticks": len(ticks), "ticks_per_s": round(len(ticks) / seconds, 1),
                    "latency_ms_p50": q(0.5), "latency_ms_p99": q(0.99),
                    "latency_ms_p90": q(0.9),
                    "latency_ms_max": lat[-1] if lat else None, "samples": len(lat),
                    "messages_per_s": round(msgs / seconds, 1),
                    "bytes_per_s": round(nbytes / seconds)}
        finally:
            proc.kill()
            proc.wait()


def full_screen(vmm, seconds):
    with tempfile.TemporaryDirectory() as tmp:
        sock = f"{tmp}/d.sock"
        proc = start(vmm, "fbfill", sock, "pixels=2073600 page=1", "1920x1080")
        try:
            s, pending = connect(sock)
            wait_line(proc, "frame 2")
            frames = []
            stop = time.monotonic() + seconds

            def serial():
                buf = b""
                while time.monotonic() < stop:
                    ready, _, _ = select.select([proc.stdout], [], [], 0.1)
                    if ready:
                        buf += os.read(proc.stdout.fileno(), 65536)
                        frames.extend(l for l in buf.split(b"\n")[:-1] if l.startswith(b"frame"))
                        buf = buf.split(b"\n")[-1]

            reader = threading.Thread(target=serial)
            reader.start()
            t0, c0 = time.monotonic_ns(), thread_cpu_ns(proc.pid, proc.pid)
            full = 0
            messages = 0
            s.settimeout(0.2)
            while time.monotonic() < stop:
                try:
                    pending += s.recv(65536)
                except socket.timeout:
                    continue
                while b"\n" in pending:
                    line, pending = pending.split(b"\n", 1)
                    messages += 1
                    rects = json.loads(line).get("rects", [])
                    if rects and rects[0]["y"] == 0 and rects[-1]["y"] + rects[-1]["height"] == 1080:
                        full += 1
            cpu = (thread_cpu_ns(proc.pid, proc.pid) - c0) / (time.monotonic_ns() - t0)
            reader.join()
            return {"guest_frames_per_s": round(len(frames) / seconds, 1),
                    "damage_messages_per_s": round(messages / seconds, 1),
                    "full_screen_damage_per_s": round(full / seconds, 1),
                    "event_loop_cpu_percent": round(100 * cpu, 3)}
        finally:
            proc.kill()
            proc.wait()


def main():
    parser = argparse.ArgumentParser()
    parser.add_argument("--vmm", default=f"{ROOT}/target/debug/hangar-vmm")
    parser.add_argument("--seconds", type=float, default=20)
    parser.add_argument("--delay", type=int, default=2000)
    parser.add_argument("--only", help="comma-separated: idle, stream, full")
    args = parser.parse_args()
    subprocess.run([f"{ROOT}/tests/guests/tiny/build"], check=True, stdout=subprocess.DEVNULL)
    parts = args.only.split(",") if args.only else ["idle", "stream", "full"]
    print(json.dumps({"load_average": os.getloadavg()[0]}))
    if "idle" in parts:
        print(json.dumps({"idle": idle(args.vmm, args.seconds)}))
    if "stream" in parts:
        print(json.dumps({"stream": latency(args.vmm, args.seconds, args.delay)}))
    if "full" in parts:
        print(json.dumps({"full": full_screen(args.vmm, args.seconds)}))


if __name__ == "__main__":
    sys.exit(main())
