#!/usr/bin/python3
"""What the GUI drivers share: a display, a session bus and a hangard of their own, the AT-SPI
walks that find widgets, real clicks and keys through xdotool, screenshots, and the one-line
checks each driver prints.

A driver imports this, writes `main()` and ends with `harness.run(main)`; tests/gui.rs runs
each driver inside `dbus-run-session` with HANGAR, HANGARD, HANGARCTL and TINY_GUESTS set.
"""

import glob
import json
import os
import shutil
import signal
import struct
import subprocess
import sys
import tempfile
import time

try:
    import pyatspi
except ImportError:
    sys.exit("gui test: python3-pyatspi is missing (scripts/install-deps installs it)")

for tool in ("Xvfb", "xwd", "xclip", "xdotool"):
    if shutil.which(tool) is None:
        sys.exit(f"gui test: {tool} is missing (scripts/install-deps installs it)")
if not os.environ.get("DBUS_SESSION_BUS_ADDRESS"):
    sys.exit("gui test: no session bus; run me under dbus-run-session")

HANGAR = os.environ["HANGAR"]
HANGARD = os.environ["HANGARD"]
HANGARCTL = os.environ["HANGARCTL"]
TINY = os.environ["TINY_GUESTS"]
WAIT = 30.0

passed = 0
failed = 0
work = tempfile.mkdtemp(prefix="hangar-gui-")
children = []


def check(name, ok, detail=""):
    global passed, failed
    if ok:
        passed += 1
        print(f"ok   {name}", flush=True)
    else:
        failed += 1
        print(f"FAIL {name} {detail}", flush=True)


def spawn(args, log, env=None):
    out = open(os.path.join(work, log), "ab")
    proc = subprocess.Popen(args, stdout=out, stderr=subprocess.STDOUT, env=env or os.environ)
    children.append(proc)
    return proc


def ctl(*args):
    result = subprocess.run([HANGARCTL, *args], capture_output=True, text=True, timeout=60)
    if result.returncode != 0:
        raise RuntimeError(f"hangarctl {' '.join(args)}: {result.stderr.strip()}")
    return result.stdout


def vm_state(name):
    for vm in json.loads(ctl("list", "--all", "--json")):
        if vm.get("name") == name:
            return vm.get("state")
    return None


def wait_until(what, predicate, timeout=WAIT):
    deadline = time.time() + timeout
    while time.time() < deadline:
        try:
            value = predicate()
        except Exception:  # the tree changes under our feet while we walk it
            value = None
        if value:
            return value
        time.sleep(0.2)
    return None


def walk(node, depth=0):
    if node is None or depth > 40:
        return
    yield node
    try:
        count = node.childCount
    except Exception:
        return
    for i in range(count):
        try:
            child = node.getChildAtIndex(i)
        except Exception:
            continue
        yield from walk(child, depth + 1)


def find_all(root, role=None, name=None, prefix=None):
    found = []
    for node in walk(root):
        try:
            if role and node.getRoleName() != role:
                continue
            if name is not None and node.name != name:
                continue
            if prefix is not None and not (node.name or "").startswith(prefix):
                continue
        except Exception:
            continue
        found.append(node)
    return found


def find(root, role=None, name=None, prefix=None, timeout=WAIT):
    return wait_until(
        f"{role} {name or prefix}",
        lambda: (find_all(root, role, name, prefix) or [None])[0],
        timeout,
    )


def has_state(node, state):
    try:
        return node.getState().contains(state)
    except Exception:
        return False


def showing(node):
    # GTK 4.8 reports "visible" (the widget's own visibility), not "showing".
    try:
        return node.getState().contains(pyatspi.STATE_VISIBLE)
    except Exception:
        return False


def click(node):
    node.queryAction().doAction(0)


def hangar_app():
    def lookup():
        desktop = pyatspi.Registry.getDesktop(0)
        for i in range(desktop.childCount):
            app = desktop.getChildAtIndex(i)
            if app is not None and app.name == "hangar":
                return app
        return None

    return wait_until("the hangar application on AT-SPI", lookup)


def select_row(listbox, prefix):
    for i in range(listbox.childCount):
        if (listbox.getChildAtIndex(i).name or "").startswith(prefix):
            listbox.querySelection().selectChild(i)
            return True
    return False


def click_into(widget, title):
    """A real click in the middle of `widget` of the window whose title matches the regular
    expression `title` (xdotool's --name); true once the widget has the focus. The extents are
    read afresh for every try, after a page switch has had time to settle."""
    for _ in range(4):
        time.sleep(0.2)
        click_at(widget, title)
        if wait_until("focus", lambda: has_state(widget, pyatspi.STATE_FOCUSED), 3):
            return True
    return False


def type_into(widget, text, title):
    """Replaces the text of an entry the way a user does: a real click into it (in the window
    whose title matches `title`), select all, type. True once the entry holds `text`. (GTK 4.8
    does not report the focus of an entry row's inner text, so the text itself is the proof.)"""
    if widget is None:
        return False
    click_at(widget, title)
    time.sleep(0.3)
    subprocess.run(["xdotool", "key", "ctrl+a", "BackSpace"], timeout=10)
    if text:
        subprocess.run(["xdotool", "type", "--delay", "20", text], timeout=60)
    return wait_until("typed text", lambda: text_of(widget) == text, 10) is not None


def click_at(widget, title, button=1, across=0.5):
    """One real click (`button` 1 left, 3 right) on `widget`, `across` of its width from the
    left and halfway down, in the window whose title matches `title`."""
    raise_window(title)
    time.sleep(0.3)
    ext = widget.queryComponent().getExtents(pyatspi.WINDOW_COORDS)
    geometry = subprocess.run(["xdotool", "search", "--name", title, "getwindowgeometry", "--shell"],
                              capture_output=True, text=True, timeout=10).stdout
    pos = dict(line.split("=", 1) for line in geometry.split() if "=" in line)
    x = int(pos.get("X", 0)) + ext.x + int(ext.width * across)
    y = int(pos.get("Y", 0)) + ext.y + ext.height // 2
    subprocess.run(["xdotool", "mousemove", str(x), str(y), "click", str(button)], timeout=10)


def set_value(widget, value):
    """Sets a spin button through AT-SPI's Value interface, as an assistive tool would. True
    once it holds `value`."""
    if widget is None:
        return False
    widget.queryValue().currentValue = float(value)
    return wait_until("value", lambda: widget.queryValue().currentValue == float(value), 10) is not None


def text_of(widget):
    try:
        t = widget.queryText()
        return t.getText(0, t.characterCount)
    except Exception:
        return None


def sensitive(node):
    return has_state(node, pyatspi.STATE_SENSITIVE)


def raise_window(title):
    # No window manager under Xvfb: windows stack as they were mapped until raised.
    subprocess.run(["xdotool", "search", "--name", title, "windowraise"], capture_output=True, timeout=10)


def click_page(window, name):
    for node in find_all(window, "page tab", name):
        try:
            click(node)
            return True
        except Exception:
            continue
    return False


def read_xwd_pixels(path):
    """Width, height and the (r, g, b) pixels of an XWD (ZPixmap, 24/32 bpp) dump."""
    data = open(path, "rb").read()
    header = struct.unpack(">25I", data[:100])
    header_size, width, height = header[0], header[4], header[5]
    step, bytes_per_line, ncolors = header[11] // 8, header[12], header[19]
    offset = header_size + ncolors * 12
    pixels = []
    for y in range(height):
        row = data[offset + y * bytes_per_line: offset + y * bytes_per_line + width * step]
        for x in range(0, len(row), step):
            b, g, r = row[x], row[x + 1], row[x + 2]  # little-endian B, G, R(, X)
            pixels.append((r, g, b))
    return width, height, pixels


def read_xwd(path):
    """Width, height and the set of distinct pixel values of an XWD (ZPixmap, 32 bpp) dump."""
    data = open(path, "rb").read()
    header = struct.unpack(">25I", data[:100])
    header_size, width, height = header[0], header[4], header[5]
    bits_per_pixel, bytes_per_line, ncolors = header[11], header[12], header[19]
    offset = header_size + ncolors * 12
    step = bits_per_pixel // 8
    assert step in (3, 4), f"xwd: {bits_per_pixel} bits per pixel"
    colours = set()
    for y in range(0, height, 2):
        row = data[offset + y * bytes_per_line: offset + y * bytes_per_line + width * step]
        for x in range(0, len(row), 2 * step):
            colours.add(row[x:x + 3])
    return width, height, colours



def start_session(**overrides):
    """Private XDG directories, an Xvfb display and a hangard on this session bus. Returns the
    environment for the programs under test."""
    env = dict(os.environ)
    for sub in ("config", "data", "run"):
        os.makedirs(os.path.join(work, sub), mode=0o700)
    env.update(
        XDG_CONFIG_HOME=os.path.join(work, "config"),
        XDG_DATA_HOME=os.path.join(work, "data"),
        XDG_RUNTIME_DIR=os.path.join(work, "run"),
        GSK_RENDERER="cairo",
        GTK_A11Y="atspi",
        NO_AT_BRIDGE="0",
        LANGUAGE="en",
        LC_ALL="C.UTF-8",
        # Preferences go to a keyfile in the private XDG_CONFIG_HOME, so they last across a
        # restart of the GUI within a test and never touch the real ones.
        GSETTINGS_BACKEND="keyfile",
    )
    env.update(overrides)
    os.environ.update(env)

    # A display of our own.
    read_fd, write_fd = os.pipe()
    xvfb = subprocess.Popen(
        ["Xvfb", "-displayfd", str(write_fd), "-screen", "0", "1280x900x24", "-nolisten", "tcp"],
        pass_fds=[write_fd], stdout=subprocess.DEVNULL, stderr=open(os.path.join(work, "xvfb.log"), "wb"),
    )
    children.append(xvfb)
    os.close(write_fd)
    display = os.read(read_fd, 16).decode().strip()
    if not display:
        sys.exit("gui test: Xvfb did not start (see its log)")
    os.environ["DISPLAY"] = env["DISPLAY"] = f":{display}"

    spawn([HANGARD, "--stats-interval", "300"], "hangard.log", env)
    if not wait_until("hangard", lambda: subprocess.run([HANGARCTL, "list"], capture_output=True).returncode == 0):
        sys.exit("gui test: hangard did not come up")
    return env


def run(main):
    """Runs a driver's checks, then stops what it started and prints the tally."""
    global failed
    try:
        main()
    except Exception:  # a crash of the driver is a failure, with its reason
        import traceback
        traceback.print_exc()
        failed += 1
    finally:
        for proc in reversed(children):
            if proc.poll() is None:
                proc.terminate()
                try:
                    proc.wait(timeout=10)
                except subprocess.TimeoutExpired:
                    proc.kill()
        # Workers outlive hangard by design, so the VMs this test started are stopped here, by the
        # pid each one's runtime directory records; otherwise every run would leave guests running.
        for pid_file in glob.glob(os.path.join(work, "run", "hangar", "*", "*pid")):
            try:
                os.kill(int(open(pid_file).read().strip()), signal.SIGKILL)
            except (ValueError, OSError):
                pass
        if failed:
            for path in sorted(glob.glob(os.path.join(work, "*.log"))):
                print(f"--- {os.path.basename(path)}\n" + open(path, errors="replace").read()[-4000:])
        shutil.rmtree(work, ignore_errors=True)
        print(f"{passed} passed, {failed} failed")
        sys.exit(1 if failed or passed == 0 else 0)

