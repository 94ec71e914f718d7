#!/usr/bin/python3
"""Drives the real `hangar` GUI under Xvfb through AT-SPI, against a real hangard on this
session bus running real workers with tiny guests on /dev/kvm: the manager window, the VM
window's pages, the console, reconnection and --show-vm.

Run by tests/gui.rs inside `dbus-run-session` (AT-SPI needs a session bus of its own); it can
also be run by hand:  dbus-run-session -- /usr/bin/python3 tests/gui/manager.py
with HANGAR, HANGARD, HANGARCTL and TINY_GUESTS set. Prints one line per check and ends with
"N passed, N failed"; exits non-zero on any failure or missing tool.
"""

import json
import os
import shutil
import signal
import subprocess
import sys
import time

import harness
from harness import (HANGAR, HANGARD, TINY, check, children, click, click_into,
                     click_page, ctl, find, find_all, has_state, hangar_app, pyatspi,
                     raise_window, read_xwd, read_xwd_pixels, select_row, sensitive, showing, spawn,
                     start_session, vm_state, wait_until, work)


VIDEOS = None  # the XDG videos folder the GUI is given, under the scratch directory


def main():
    env = start_session()
    for tool in ("gst-discoverer-1.0", "gst-launch-1.0"):
        if shutil.which(tool) is None:
            sys.exit(f"gui test: {tool} is missing (scripts/install-deps installs it)")
    # Recordings go to the XDG videos folder; GLib reads it from user-dirs.dirs.
    global VIDEOS
    VIDEOS = os.path.join(work, "videos")
    with open(os.path.join(work, "config", "user-dirs.dirs"), "w") as f:
        f.write(f'XDG_VIDEOS_DIR="{VIDEOS}"\n')
    spawn([HANGAR], "hangar.log", env)
    app = hangar_app()
    if app is None:
        sys.exit("gui test: hangar never appeared on the AT-SPI bus (see hangar.log)")
    window = find(app, "frame", "Hangar")
    check("the manager window is titled Hangar", window is not None)
    if window is None:
        return

    # No VMs yet: the empty state offers the sample VM, which hangard defines from the kit.
    empty = find(window, "label", "No Virtual Machines")
    check("with no VMs the window shows the empty state", empty is not None and showing(empty))
    kit = os.path.join(os.environ.get("HANGAR_GUEST_CACHE", os.path.expanduser("~/.cache/hangar/guests")),
                       "vmlinuz-cloud-amd64")
    if os.path.exists(kit):
        click(find(window, "push button", "Add Sample VM"))
        check("Add Sample VM defines debian-tiny, ready to boot",
              find(window, "list item", "debian-tiny (Shut off)") is not None and vm_state("debian-tiny") == "shutoff")
        ctl("undefine", "debian-tiny", "--remove-storage")
        check("a VM undefined with hangarctl leaves the list",
              wait_until("sample gone", lambda: not find_all(window, "list item", prefix="debian-tiny")) is not None)
    else:
        print(f"     (no guest kit at {kit}: tests/guests/build all makes it; Add Sample VM not tried)")

    for name, guest in (("ticker", "ticker"), ("echo", "echo"), ("hello", "hello")):
        definition = os.path.join(work, f"{name}.json")
        with open(definition, "w") as f:
            json.dump({"name": name, "kernel": os.path.join(TINY, f"{guest}.elf"),
                       "memory": "32M", "display": "none"}, f)
        ctl("define", definition)
    ctl("vol-create", "scratch.qcow2", "16M")
    definition = os.path.join(work, "scratch.json")
    with open(definition, "w") as f:
        json.dump({"name": "scratch", "kernel": os.path.join(TINY, "hello.elf"), "memory": "32M",
                   "display": "none", "disks": [{"volume": "scratch.qcow2"}]}, f)
    ctl("define", definition)

    listbox = find(window, "list", "Virtual machines")
    rows = wait_until("four rows", lambda: len(find_all(listbox, "list item")) == 4 and find_all(listbox, "list item"))
    check("VMs defined after start appear (InterfacesAdded), with their state, sorted by name",
          rows and [r.name for r in rows] == ["echo (Shut off)", "hello (Shut off)", "scratch (Shut off)",
                                              "ticker (Shut off)"],
          [r.name for r in rows or []])
    check("the connection row shows localhost (KVM), connected",
          find(window, "label", "localhost (KVM)") is not None and find(window, "label", "Connected") is not None)

    kvm_pvm = os.path.exists("/sys/module/kvm_pvm") and not os.path.exists("/sys/module/kvm_intel") \
        and not os.path.exists("/sys/module/kvm_amd")
    warning = find(window, "label", "Guests are emulated", timeout=5 if kvm_pvm else 2)
    if kvm_pvm:
        check("kvm_pvm: the 'guests are emulated' warning is shown", warning is not None and showing(warning))
    else:
        check("hardware KVM: no emulation warning", warning is None or not showing(warning))

    # Run through the toolbar: the row's state follows hangard's signals.
    run = find(window, "push button", "Run")
    check("Run is disabled with nothing selected", run is not None and not sensitive(run))
    select_row(listbox, "ticker")
    wait_until("Run enabled", lambda: sensitive(run), 10)
    click(run)
    row = find(listbox, "list item", "ticker (Running)")
    check("Run starts the VM and its row turns Running", row is not None and vm_state("ticker") == "running",
          vm_state("ticker"))

    # Pause from the toolbar.
    pause = find(window, "push button", "Pause")
    wait_until("Pause enabled", lambda: sensitive(pause), 10)
    click(pause)
    check("Pause suspends it and the row turns Paused",
          find(listbox, "list item", "ticker (Paused)") is not None and vm_state("ticker") == "paused")
    click(pause)
    check("Pause again resumes it", find(listbox, "list item", "ticker (Running)") is not None)

    # Behind the GUI's back: a VM started and one removed with hangarctl.
    ctl("start", "echo")
    check("a VM started with hangarctl turns Running in the list",
          find(listbox, "list item", "echo (Running)") is not None)
    ctl("undefine", "hello")
    check("a definition removed with hangarctl disappears from the list",
          wait_until("hello gone", lambda: not find_all(listbox, "list item", prefix="hello")) is not None)

    # Search (Ctrl+F opens the bar; typing filters by name).
    subprocess.run(["xdotool", "search", "--sync", "--name", "^Hangar$", "windowfocus", "--sync"],
                   capture_output=True, timeout=20)
    subprocess.run(["xdotool", "key", "ctrl+f"], timeout=10)
    entry = find(window, "entry", "Search by name")
    check("Ctrl+F opens the search entry with the focus in it",
          wait_until("entry focused", lambda: has_state(entry, pyatspi.STATE_FOCUSED), 10) is not None)
    subprocess.run(["xdotool", "type", "--delay", "50", "tick"], timeout=20)

    def filtered():
        items = find_all(listbox, "list item")
        visible = [i.name for i in items if showing(i)]
        return visible == ["ticker (Running)"] and visible

    check("searching 'tick' leaves only ticker", wait_until("filter", filtered, 10) is not None,
          [(i.name, showing(i)) for i in find_all(listbox, "list item")])
    subprocess.run(["xdotool", "key", "ctrl+a", "BackSpace", "Escape"], timeout=20)
    wait_until("unfiltered", lambda: len([i for i in find_all(listbox, "list item") if showing(i)]) == 3, 10)

    # Delete, with the VM's volume checked for removal.
    select_row(listbox, "scratch")
    time.sleep(0.5)
    subprocess.run(["xdotool", "key", "Delete"], timeout=10)
    dialog = wait_until("the delete dialog", lambda: next(
        (w for w in find_all(app, prefix="Delete scratch?") if w.getRoleName() in ("dialog", "frame", "alert")), None), 15)
    box = find(dialog or app, "check box", "Delete volume scratch.qcow2", timeout=5)
    check("Delete asks first, with the VM's volume in a checklist, checked",
          dialog is not None and box is not None and has_state(box, pyatspi.STATE_CHECKED))
    if dialog is not None:
        # libadwaita 1.2 names a response button by its label twice ("Delete Delete").
        confirm = find_all(dialog, "push button", prefix="Delete")
        click(confirm[0])
    volumes = lambda: ctl("vol-list")
    check("confirming deletes the VM and its volume",
          wait_until("scratch gone", lambda: not find_all(listbox, "list item", prefix="scratch")) is not None
          and wait_until("volume gone", lambda: "scratch.qcow2" not in volumes(), 10) is not None,
          volumes())

    # The VM window: serial output of the echo guest, typed keys echoed back, live graphs.
    select_row(listbox, "echo")
    open_button = find(window, "push button", "Open")
    wait_until("Open enabled", lambda: sensitive(open_button), 10)
    click(open_button)
    vm_window = find(app, "frame", "echo – Hangar")
    check("Open shows the VM window", vm_window is not None)
    if vm_window is None:
        return
    serial_tab = find(vm_window, None, "Serial")
    status = find(vm_window, "label", "Connected to the serial console.")
    check("the serial page attaches to the VM's serial console", status is not None)
    for node in find_all(vm_window, name="Serial"):
        try:
            click(node)
            break
        except Exception:
            continue
    del serial_tab
    terminal = find(vm_window, None, "Serial console")
    # Focus the terminal with a real click, then type: the echo guest sends it back.
    subprocess.run(["xdotool", "search", "--sync", "--name", "^echo – Hangar$", "windowfocus", "--sync"],
                   capture_output=True, timeout=20)
    focused = click_into(terminal, "^echo .+ Hangar$")
    check("a click puts the focus in the serial terminal", focused,
          [pyatspi.stateToString(s) for s in terminal.getState().getStates()])
    subprocess.run(["xdotool", "type", "--delay", "50", "hangar42"], timeout=20)
    copy_all = find(vm_window, "push button", "Copy All Output")

    def serial_text():
        click(copy_all)
        time.sleep(0.3)
        out = subprocess.run(["xclip", "-o", "-selection", "clipboard"], capture_output=True,
                             text=True, timeout=10).stdout
        return out

    text = wait_until("serial text", lambda: "hangar42" in serial_text() and serial_text(), 20)
    check("the serial page shows the guest's output ('ready')", text is not None and "ready" in text,
          repr(serial_text()[-200:]))
    check("keys typed in the serial page reach the guest and come back", text is not None and "hangar42" in text)

    cpu_value = find(vm_window, "label", None, prefix="", timeout=1)
    del cpu_value

    def cpu_reading():
        labels = [n.name for n in find_all(vm_window, "label") if (n.name or "").endswith(" %")]
        return labels

    check("the performance graphs receive samples", wait_until("cpu %", cpu_reading, 15) is not None)

    # Screenshot of the screen: real, non-blank pixels.
    shot = os.path.join(work, "screen.xwd")
    subprocess.run(["xwd", "-root", "-silent", "-out", shot], check=True, timeout=20)
    width, height, colours = read_xwd(shot)
    check("a screenshot of the windows has real content", width >= 640 and len(colours) >= 16,
          f"{width}x{height}, {len(colours)} colours")

    # The graphical console, on a guest that draws: fbdraw fills rows 100..163 with red 255,
    # green = row, blue = pass when it reads 'd' on its serial port.
    close_button = find(vm_window, "push button", "Close", timeout=5)
    if close_button is not None:
        click(close_button)
    check("the VM window closes", wait_until("echo window gone",
                                             lambda: not find_all(app, "frame", "echo – Hangar"), 10) is not None)
    console_check(app, window, listbox)

    # hangard restarts: the GUI says so and reconnects by itself.
    rows_before = len(find_all(listbox, "list item"))
    hangard = next(p for p in children if p.args[0] == HANGARD)
    hangard.send_signal(signal.SIGTERM)
    hangard.wait(timeout=20)
    check("hangard gone: the connection row says Not connected",
          find(window, "label", "Not connected") is not None)
    spawn([HANGARD, "--stats-interval", "300"], "hangard.log", env)
    check("hangard back: the GUI reconnects and lists the VMs again",
          find(window, "label", "Connected") is not None
          and wait_until("rows back", lambda: len(find_all(listbox, "list item")) == rows_before) is not None)

    # `hangar --show-vm NAME` opens that VM's window and no manager.
    spawn([HANGAR, "--show-vm", "ticker"], "hangar-show-vm.log", env)

    def second_app():
        desktop = pyatspi.Registry.getDesktop(0)
        apps = [desktop.getChildAtIndex(i) for i in range(desktop.childCount)]
        apps = [a for a in apps if a is not None and a.name == "hangar" and a != app]
        return apps[0] if apps else None

    other = wait_until("a second hangar", second_app)
    shown = other is not None and find(other, "frame", "ticker – Hangar") is not None
    check("hangar --show-vm ticker opens the VM window alone",
          shown and not find_all(other, "frame", "Hangar"))

    # The GUI killed with -9: the VMs it showed go on untouched.
    running = {vm["name"]: vm for vm in json.loads(ctl("list", "--json")) if vm.get("state") == "running"}
    for proc in children:
        if proc.args[0] == HANGAR and proc.poll() is None:
            proc.send_signal(signal.SIGKILL)
            proc.wait(timeout=10)
    time.sleep(1)
    after = {vm["name"]: vm for vm in json.loads(ctl("list", "--json")) if vm.get("state") == "running"}
    check("the GUI killed with -9 leaves every running VM running",
          bool(running) and set(after) == set(running),
          f"before {sorted(running)}, after {sorted(after)}")


def toggled(node):
    # GTK 4.8 shows a toggle button as a push button, pressed while on.
    return has_state(node, pyatspi.STATE_PRESSED) or has_state(node, pyatspi.STATE_CHECKED)


def videos():
    if not os.path.isdir(VIDEOS):
        return []
    return sorted(f for f in os.listdir(VIDEOS) if f.endswith(".webm"))


def type_on_serial(vm, data):
    """Writes to a VM's serial console socket directly, as any console client may."""
    import socket
    uuid = next(v["uuid"] for v in json.loads(ctl("list", "--all", "--json")) if v["name"] == vm)
    with socket.socket(socket.AF_UNIX) as sock:
        sock.connect(os.path.join(work, "run", "hangar", uuid, "serial.sock"))
        sock.sendall(data)
        time.sleep(0.2)


def video_ok(path, min_seconds, min_frames=1):
    """Whether gst-discoverer-1.0 reports `path` as a WebM with a VP8 stream lasting at least
    `min_seconds`, and gst-launch-1.0 decodes frames from it; with what was seen."""
    out = subprocess.run(["gst-discoverer-1.0", path], capture_output=True, text=True, timeout=60).stdout
    duration = next((line.split(":", 1)[1].strip() for line in out.splitlines()
                     if line.strip().startswith("Duration:")), None)
    seconds = 0.0
    if duration:
        for part in duration.split(":"):
            seconds = seconds * 60 + float(part)
    vp8 = any(line.strip().startswith("video #") and "VP8" in line for line in out.splitlines())
    webm = any("container" in line and "WebM" in line for line in out.splitlines())
    decoded = subprocess.run(
        ["gst-launch-1.0", "-v", "filesrc", f"location={path}", "!", "matroskademux", "!", "vp8dec", "!",
         "fakesink", "silent=false"], capture_output=True, text=True, timeout=60).stdout
    frames = sum(1 for line in decoded.splitlines() if "chain" in line and "fakesink" in line)
    detail = f"{os.path.basename(path)}: duration {seconds:.2f} s, webm {webm}, vp8 {vp8}, {frames} frames"
    print(f"     ({detail})")
    return seconds >= min_seconds and vp8 and webm and frames >= min_frames, detail


def recording_check(fb_window):
    """Record from the console toolbar: the elapsed time shows and advances, stopping saves a
    WebM in the videos folder and says where in a toast; a VM that stops ends a recording."""
    record = find(fb_window, "push button", "Record")
    check("the console toolbar has a Record toggle, enabled", record is not None
          and has_state(record, pyatspi.STATE_SENSITIVE))
    if record is None:
        return
    click(record)
    elapsed = find(fb_window, "label", prefix="● ", timeout=10)
    check("recording shows the elapsed time beside the button", elapsed is not None and showing(elapsed),
          [n.name for n in find_all(fb_window, "label")][:30])

    def shown_seconds():
        for node in find_all(fb_window, "label", prefix="● "):
            minutes, seconds = node.name[2:].split(":")
            if int(minutes) * 60 + int(seconds) >= 3:
                return node.name
        return None

    advanced = wait_until("the time advancing", shown_seconds, 10)
    check("the elapsed time advances (● 00:03)", advanced is not None,
          [n.name for n in find_all(fb_window, "label", prefix="● ")])
    check("the Record toggle is on while recording", toggled(record))
    # The guest draws again while the recording runs: one more picture in the video.
    type_on_serial("fb", b"d")
    time.sleep(1.0)
    parts = [f for f in os.listdir(VIDEOS) if f.endswith(".webm.part")] if os.path.isdir(VIDEOS) else []
    check("while recording the file is written under a .part name in the videos folder", len(parts) == 1, parts)
    click(record)
    toast = find(fb_window, "label", prefix="Recording saved to ", timeout=30)
    path = toast.name[len("Recording saved to "):] if toast is not None else ""
    check("stopping says in a toast where the recording went (the XDG videos folder)",
          toast is not None and os.path.dirname(path) == VIDEOS and os.path.basename(path).startswith("fb-")
          and path.endswith(".webm"), path)
    if toast is not None and os.path.isfile(path):
        ok, detail = video_ok(path, 2.5, 3)
        check("the recording is a WebM that gst-discoverer-1.0 reports with a VP8 stream, a duration "
              "and frames (the first picture, the guest's new drawing, the closing frame)", ok, detail)
    else:
        check("the recording's file exists", False, path)
    check("the Record toggle is off again", wait_until("unchecked", lambda: not toggled(record), 5)
          is not None)
    check("the elapsed time is hidden again", wait_until("hidden", lambda: not find_all(fb_window, "label", prefix="● "), 5)
          is not None)

    # The VM stops while recording: what was recorded is kept, and Record turns off.
    before = set(videos())
    check("Record is enabled again once the file is finished",
          wait_until("Record enabled", lambda: has_state(record, pyatspi.STATE_SENSITIVE), 10) is not None)
    click(record)
    find(fb_window, "label", prefix="● ", timeout=10)
    time.sleep(2.0)
    ctl("destroy", "fb")
    toast = wait_until("a second toast", lambda: next((n for n in find_all(fb_window, "label", prefix="Recording saved to ")
                                                       if n.name[len("Recording saved to "):] not in
                                                       {os.path.join(VIDEOS, f) for f in before}), None), 30)
    path = toast.name[len("Recording saved to "):] if toast is not None else ""
    ok, detail = video_ok(path, 1.0) if os.path.isfile(path) else (False, f"no file {path!r}")
    check("a VM that stops while recording ends it with a playable WebM", ok, detail)
    check("Record is off and disabled once the VM is off",
          wait_until("record disabled", lambda: not has_state(record, pyatspi.STATE_SENSITIVE)
                     and not toggled(record), 10) is not None)


def console_check(app, window, listbox):
    fbdraw = os.path.join(TINY, "fbdraw.elf")
    if not os.path.exists(fbdraw):
        print("     (console check not run: no fbdraw tiny guest here; it comes with the display "
              "stream in hangar-vmm)")
        return
    definition = os.path.join(work, "fb.json")
    with open(definition, "w") as f:
        json.dump({"name": "fb", "kernel": fbdraw, "memory": "32M", "display": "framebuffer"}, f)
    ctl("define", definition)
    ctl("start", "fb")
    find(listbox, "list item", "fb (Running)")
    select_row(listbox, "fb")
    open_button = find(window, "push button", "Open")
    wait_until("Open enabled", lambda: sensitive(open_button), 10)
    click(open_button)
    fb_window = find(app, "frame", "fb – Hangar")
    if fb_window is None:
        check("the fb VM window opens", False)
        return
    time.sleep(1.0)
    if [n for n in find_all(fb_window, "label") if "not available yet" in (n.name or "")]:
        print("     (console check not run: this hangard has no display stream yet, it says so "
              "on the console page)")
        return
    no_display = find(fb_window, "label", "No Display", timeout=3)
    check("the console page attaches to the VM's display", no_display is None or not showing(no_display),
          [n.name for n in find_all(fb_window, "label")][:20])
    click_page(fb_window, "Serial")
    terminal = find(fb_window, None, "Serial console")
    find(fb_window, "label", "Connected to the serial console.")
    click_into(terminal, "^fb .+ Hangar$")
    subprocess.run(["xdotool", "type", "d"], timeout=10)
    time.sleep(1.0)
    click_page(fb_window, "Console")
    raise_window("^fb .+ Hangar$")
    shot = os.path.join(work, "console.xwd")

    def drawn_pixels():
        subprocess.run(["xwd", "-root", "-silent", "-out", shot], check=True, timeout=20)
        _, _, pixels = read_xwd_pixels(shot)
        return sum(1 for r, g, b in pixels if r >= 240 and 90 <= g <= 175 and b <= 8)

    count = wait_until("the drawn rows on screen", lambda: drawn_pixels() >= 500 and drawn_pixels(), 20)
    check("the console shows what the guest drew (rows 100..163 in red, green = row)", count is not None,
          f"{drawn_pixels()} matching pixels")
    recording_check(fb_window)

    # Keys typed on the console reach the guest's keyboard: kbd prints each scancode on serial.
    click(find(fb_window, "push button", "Close"))
    definition = os.path.join(work, "kb.json")
    with open(definition, "w") as f:
        json.dump({"name": "kb", "kernel": os.path.join(TINY, "kbd.elf"), "memory": "32M",
                   "display": "framebuffer"}, f)
    ctl("define", definition)
    ctl("start", "kb")
    find(listbox, "list item", "kb (Running)")
    select_row(listbox, "kb")
    wait_until("Open enabled", lambda: sensitive(open_button), 10)
    click(open_button)
    kb_window = find(app, "frame", "kb – Hangar")
    display = find(kb_window, None, "VM display")
    time.sleep(1.0)
    clicked = click_into(display, "^kb .+ Hangar$")
    grabbed = find(kb_window, "label", "Keyboard grabbed: press Ctrl+Alt to release", timeout=5)
    check("a click on the console grabs the keyboard and says how to let go",
          clicked and grabbed is not None)
    subprocess.run(["xdotool", "type", "--delay", "100", "a"], timeout=10)
    click_page(kb_window, "Serial")
    copy_all = find(kb_window, "push button", "Copy All Output")

    def kb_serial():
        click(copy_all)
        time.sleep(0.3)
        return subprocess.run(["xclip", "-o", "-selection", "clipboard"], capture_output=True,
                              text=True, timeout=10).stdout

    text = wait_until("a scancode on serial", lambda: "scancode=" in kb_serial() and kb_serial(), 15)
    check("a key typed on the console reaches the guest's keyboard", text is not None,
          repr(kb_serial()[-300:]))
    click_page(kb_window, "Console")
    check("leaving the console lets the keyboard go",
          find(kb_window, "label", "Click the display to send the keyboard to the VM", timeout=5) is not None)
    click_into(display, "^kb .+ Hangar$")
    find(kb_window, "label", "Keyboard grabbed: press Ctrl+Alt to release", timeout=5)
    subprocess.run(["xdotool", "key", "ctrl+alt"], timeout=10)
    check("Ctrl+Alt lets the keyboard go",
          find(kb_window, "label", "Click the display to send the keyboard to the VM", timeout=5) is not None)

    # Closing the window while recording still finishes the file.
    before = set(videos())
    record = find(kb_window, "push button", "Record")
    click(record)
    find(kb_window, "label", prefix="● ", timeout=10)
    time.sleep(2.0)
    click(find(kb_window, "push button", "Close"))
    new = wait_until("a finished recording", lambda: [f for f in videos() if f not in before
                                                      and not f.endswith(".part")], 30)
    leftovers = [f for f in os.listdir(VIDEOS) if f.endswith(".part")] if os.path.isdir(VIDEOS) else []
    ok, detail = (False, "no file") if not new else video_ok(os.path.join(VIDEOS, new[0]), 1.0)
    check("a window closed while recording still finishes a playable WebM", ok and not leftovers,
          f"{detail}; leftovers {leftovers}")



harness.run(main)
