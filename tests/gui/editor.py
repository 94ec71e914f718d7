#!/usr/bin/python3
"""Drives the hardware editor (the VM window's Details page) of the real `hangar` under Xvfb
through AT-SPI, against a real hangard on this session bus: CPUs, memory, the command line and
a port forward edited and applied persist across a hangard killed and started again (in the
definition and on the page); hangard's refusals (a kernel that is not there, a host port
forwarded twice) show next to their rows and change nothing on disk; Revert restores the page;
a change made elsewhere meanwhile is announced and Revert loads it; a new disk is created on Apply, grown on Apply (a shrink is explained and refused), and deleted
again when the definition it came with is refused; while the VM runs the rows are insensitive.

Run by tests/gui.rs inside `dbus-run-session`; by hand:
  dbus-run-session -- /usr/bin/python3 tests/gui/editor.py
with HANGAR, HANGARD, HANGARCTL and TINY_GUESTS set.
"""

import glob
import json
import os
import shutil
import signal
import subprocess
import sys
import time

import harness
from harness import (HANGAR, HANGARD, HANGARCTL, TINY, check, children, click, click_page, ctl, find,
                     find_all, hangar_app, pyatspi, sensitive, set_value, showing, spawn, start_session,
                     text_of, type_into, wait_until, work)

TITLE = "^edit . Hangar$"


def definition():
    return json.loads(ctl("dumpdef", "edit"))


def stored_files(env):
    """The definition files as they are on disk, name and content."""
    return {os.path.basename(p): open(p).read()
            for p in glob.glob(os.path.join(env["XDG_CONFIG_HOME"], "hangar", "vms", "*"))}


def volumes():
    return {v["name"]: v for v in json.loads(ctl("vol-list", "--json"))}


def shown(root, role, name=None, prefix=None):
    return next((n for n in find_all(root, role, name, prefix) if showing(n)), None)


def entry(window, title):
    return shown(window, "text", title)


def spins(window, title):
    return [n for n in find_all(window, "spin button", prefix=title) if showing(n)]


def error_beside(window, text, row_name):
    """The red line saying `text`, if it is shown in the row right after the row named
    `row_name` (the field's own row) in the same list."""
    label = wait_until(f"error {text!r}", lambda: shown(window, "label", text), 10)
    if label is None:
        return None
    row = label
    while row is not None and row.getRoleName() != "list item":
        row = row.parent
    if row is None or row.parent is None:
        return None
    siblings = [row.parent.getChildAtIndex(i) for i in range(row.parent.childCount)]
    at = siblings.index(row) if row in siblings else -1
    before = siblings[at - 1] if at > 0 else None
    names = [before.name] + [n.name for n in find_all(before)] if before is not None else []
    return label if any((name or "").startswith(row_name) for name in names) else None


def on_screen(widget):
    """Whether `widget` lies inside the scrolled part of the page that is shown."""
    pane = widget.parent
    while pane is not None and pane.getRoleName() != "scroll pane":
        pane = pane.parent
    if pane is None:
        return True
    inner = widget.queryComponent().getExtents(pyatspi.WINDOW_COORDS)
    outer = pane.queryComponent().getExtents(pyatspi.WINDOW_COORDS)
    return outer.y <= inner.y and inner.y + inner.height <= outer.y + outer.height


def edit_text(widget, text):
    """Replaces an entry's text: typed with real keys when the entry is on screen, else set
    through AT-SPI's EditableText, as an assistive tool would (the page scrolls, and a click
    where the entry is not shown would land elsewhere). True once the entry holds `text`."""
    if widget is None:
        return False
    if on_screen(widget):
        return type_into(widget, text, TITLE)
    widget.queryEditableText().setTextContents(text)
    return wait_until("text set", lambda: text_of(widget) == text, 10) is not None


def usable(node):
    """Whether a widget takes input: it and every widget around it are sensitive (GTK 4.8 puts
    only a widget's own sensitivity on AT-SPI, not what it inherits)."""
    while node is not None and node.getRoleName() != "frame":
        if not sensitive(node):
            return False
        node = node.parent
    return True


def new_vm_window():
    """The application and window of a hangar showing the edit VM, once one is on AT-SPI (the
    registry may list a GUI that just quit for a moment longer)."""
    desktop = pyatspi.Registry.getDesktop(0)
    for i in range(desktop.childCount):
        app = desktop.getChildAtIndex(i)
        if app is not None and app.name == "hangar":
            frames = find_all(app, "frame", "edit – Hangar")
            if frames:
                return app, frames[0]
    return None


def no_error(window, text):
    return wait_until(f"no error {text!r}", lambda: shown(window, "label", text) is None, 10) is not None


def idle(window):
    """Apply and Revert both insensitive: nothing to apply, nothing to revert."""
    return wait_until("Apply and Revert idle", lambda: not sensitive(shown(window, "push button", "Apply"))
                      and not sensitive(shown(window, "push button", "Revert")), 15) is not None


def dialog_named(app, title):
    return wait_until(f"dialog {title}", lambda: next(
        (w for w in find_all(app, prefix=title) if w.getRoleName() in ("dialog", "frame", "alert")), None), 15)


def respond(dialog, label):
    # libadwaita 1.2 names a response button by its label twice ("Add Add").
    button = next((b for b in find_all(dialog, "push button", prefix=label)), None)
    if button is not None:
        click(button)
    return button is not None


def main():
    env = start_session()
    passt = shutil.which("passt") is not None
    path = os.path.join(work, "edit.json")
    with open(path, "w") as f:
        json.dump({"name": "edit", "kernel": os.path.join(TINY, "ticker.elf"), "memory": "32M",
                   "display": "none", "nics": [{"mode": "user", "forwards": [{"host": 8080, "guest": 80}]}]}, f)
    ctl("define", path)
    before = definition()

    spawn([HANGAR, "--show-vm", "edit"], "hangar.log", env)
    app = hangar_app()
    if app is None:
        sys.exit("gui test: hangar never appeared on the AT-SPI bus (see hangar.log)")
    window = find(app, "frame", "edit – Hangar")
    if window is None:
        check("hangar --show-vm edit opens the VM window", False)
        return
    click_page(window, "Details")
    cpus = wait_until("the CPUs row", lambda: (spins(window, "Virtual CPUs") or [None])[0], 15)
    memory = wait_until("the memory row", lambda: entry(window, "Memory"), 10)
    cmdline = entry(window, "Kernel command line")
    kernel = entry(window, "Kernel")
    check("the Details page shows the definition in editable rows",
          cpus is not None and cpus.queryValue().currentValue == 1
          and text_of(memory) == "32 MiB" and text_of(cmdline) == "console=ttyS0"
          and text_of(kernel) == os.path.join(TINY, "ticker.elf")
          and [s.queryValue().currentValue for s in spins(window, "Host port")] == [8080],
          [(n.getRoleName(), n.name, text_of(n)) for n in find_all(window, "text")])
    check("Apply and Revert are insensitive until something changes", idle(window))

    # The edit: CPUs, memory, the command line and a new port forward.
    set_value(cpus, 2)
    edit_text(memory, "64 MiB")
    edit_text(cmdline, "console=ttyS0 hangar.edited=1")
    click(shown(window, "push button", "Add Port Forward"))
    added = wait_until("a second forward", lambda: len(spins(window, "Host port")) == 2, 10)
    check("Add Port Forward adds a row with a free host port to the guest's SSH port",
          added is not None and [s.queryValue().currentValue for s in spins(window, "Host port")] == [8080, 2222]
          and spins(window, "Guest port")[1].queryValue().currentValue == 22)
    if added is not None:
        set_value(spins(window, "Host port")[1], 2022)
    apply = shown(window, "push button", "Apply")
    check("an edit makes Apply and Revert sensitive",
          wait_until("Apply sensitive", lambda: sensitive(apply) and sensitive(shown(window, "push button", "Revert")),
                     10) is not None)
    click(apply)

    def edited(d):
        return (d["vcpus"] == 2 and d["memory"] == "64M" and d["cmdline"] == "console=ttyS0 hangar.edited=1"
                and d["nics"] == [{"mode": "user", "forwards": [{"protocol": "tcp", "host": 8080, "guest": 80},
                                                               {"protocol": "tcp", "host": 2022, "guest": 22}]}])

    after = wait_until("the definition changed", lambda: edited(definition()) and definition(), 15)
    check("Apply stores the edit (hangarctl dumpdef: 2 CPUs, 64M, the command line, the new forward)",
          after is not None and after["generation"] == before["generation"] + 1, definition())
    check("after Apply there is nothing to apply or revert", idle(window))

    # hangard killed and started again: the edit is on disk, and the page shows it again.
    hangard = next(p for p in children if p.args[0] == HANGARD and p.poll() is None)
    hangard.send_signal(signal.SIGKILL)
    hangard.wait(timeout=20)
    spawn([HANGARD, "--stats-interval", "300"], "hangard.log", env)
    back = wait_until("hangard back", lambda: subprocess.run([HANGARCTL, "list"], capture_output=True).returncode == 0)
    check("after hangard is killed and started again the definition still holds the edit",
          back is not None and edited(definition()), definition() if back else "hangard did not come back")
    # The window open all along reconnects; a GUI started afresh reads it all from the new
    # hangard, with nothing of the old page to remember.
    def shows_edit(w):
        cpus = (spins(w, "Virtual CPUs") or [None])[0]
        return (cpus is not None and cpus.queryValue().currentValue == 2
                and text_of(entry(w, "Memory")) == "64 MiB"
                and text_of(entry(w, "Kernel command line")) == "console=ttyS0 hangar.edited=1"
                and [s.queryValue().currentValue for s in spins(w, "Host port")] == [8080, 2022]
                and usable(cpus))

    check("the open page reconnects to the new hangard and still shows the edit",
          wait_until("page reconnected", lambda: shows_edit(window), 20) is not None,
          [(n.name, text_of(n)) for n in find_all(window, "text")])
    for proc in children:
        if proc.args[0] == HANGAR and proc.poll() is None:
            proc.terminate()
            proc.wait(timeout=10)
    spawn([HANGAR, "--show-vm", "edit"], "hangar.log", env)
    found = wait_until("the new GUI's window", new_vm_window, 30)
    app, window = found if found else (None, None)
    if window is None:
        check("hangar started again opens the VM window", False)
        return
    click_page(window, "Details")
    check("a GUI started afresh shows the edit on the Details page",
          wait_until("fresh page", lambda: shows_edit(window), 20) is not None,
          [(n.name, text_of(n)) for n in find_all(window, "text")])

    # A kernel that is not there: hangard's reason under the kernel row, nothing written.
    on_disk = stored_files(env)
    missing = os.path.join(work, "no-such-vmlinuz")
    edit_text(entry(window, "Kernel"), missing)
    click(shown(window, "push button", "Apply"))
    reason = f"{missing}: no such file; check the path"
    check("a kernel that is not there gets hangard's reason right under the kernel row",
          error_beside(window, reason, "Kernel") is not None
          and error_beside(window, reason, "Initial RAM disk") is None,
          [n.name for n in find_all(window, "label") if "file" in (n.name or "")])
    check("the refused edit changes nothing on disk", stored_files(env) == on_disk and edited(definition()))

    # Revert restores the page.
    click(shown(window, "push button", "Revert"))
    check("Revert restores the kernel and clears the error",
          wait_until("kernel restored", lambda: text_of(entry(window, "Kernel")) == os.path.join(TINY, "ticker.elf"),
                     10) is not None and no_error(window, reason) and idle(window))

    # A host port forwarded twice: the reason under that forward's row.
    set_value(spins(window, "Host port")[1], 8080)
    click(shown(window, "push button", "Apply"))
    twice = "host port 8080/tcp is forwarded twice"
    check("a host port forwarded twice gets hangard's reason right under that forward",
          error_beside(window, twice, "Forward 2") is not None,
          [n.name for n in find_all(window, "label") if "twice" in (n.name or "")])
    check("the refused forward changes nothing on disk", stored_files(env) == on_disk)
    click(shown(window, "push button", "Revert"))
    check("Revert puts the forward back",
          wait_until("forward restored", lambda: [s.queryValue().currentValue for s in spins(window, "Host port")]
                     == [8080, 2022], 10) is not None and no_error(window, twice) and idle(window))

    # Someone else changes the VM while the page has changes of its own: the page says so and
    # offers Revert, which loads their version.
    set_value((spins(window, "Virtual CPUs") or [None])[0], 1)
    theirs = definition()
    theirs["memory"] = "48M"
    path = os.path.join(work, "theirs.json")
    with open(path, "w") as f:
        json.dump(theirs, f)
    ctl("update", "edit", path)
    notice = wait_until("the conflict", lambda: shown(window, "label", prefix="Someone else changed"), 15)
    revert = next((b for b in find_all(window, "push button", "Revert") if showing(b)), None)
    check("a change made elsewhere while the page has edits is announced, with Revert",
          notice is not None and revert is not None)
    click(revert)
    check("Revert loads the other change",
          wait_until("theirs shown", lambda: text_of(entry(window, "Memory")) == "48 MiB"
                     and (spins(window, "Virtual CPUs") or [None])[0].queryValue().currentValue == 2, 15) is not None
          and idle(window) and shown(window, "label", prefix="Someone else changed") is None)

    disks_check(app, window, env)
    running_check(window, passt)


def disks_check(app, window, env):
    """A new disk is created on Apply and grown on Apply; a new volume whose definition is
    refused is deleted again."""
    # Refused: the new volume must not stay behind.
    pool = set(volumes())
    click(shown(window, "push button", "Add Disk"))
    dialog = dialog_named(app, "Add Disk")
    check("Add Disk asks for a new volume's name and size",
          dialog is not None and text_of(shown(dialog, "text", "Volume name")) == "edit-disk1.qcow2"
          and text_of(shown(dialog, "text", "Size")) == "1 GiB")
    if dialog is None:
        return
    type_into(shown(dialog, "text", "Size"), "16 MiB", "^Add Disk$")
    respond(dialog, "Add")
    row = find(window, "list item", "edit-disk1.qcow2", timeout=10)
    check("the new disk is listed, to be created on Apply, and nothing exists yet",
          row is not None and "edit-disk1.qcow2" not in volumes(),
          [n.name for n in find_all(window, "list item")])
    edit_text(entry(window, "Kernel"), os.path.join(work, "no-such-vmlinuz"))
    click(shown(window, "push button", "Apply"))
    wait_until("the refusal", lambda: shown(window, "label", prefix=os.path.join(work, "no-such-vmlinuz")), 10)
    check("a new volume whose definition is refused is deleted again",
          set(volumes()) == pool and not definition().get("disks"), sorted(volumes()))
    edit_text(entry(window, "Kernel"), os.path.join(TINY, "ticker.elf"))
    click(shown(window, "push button", "Apply"))
    created = wait_until("the volume", lambda: volumes().get("edit-disk1.qcow2"), 15)
    check("Apply creates the new qcow2 volume of the asked size and attaches it",
          created is not None and created["virtual_size"] == 16 << 20 and created["format"] == "qcow2"
          and definition().get("disks") == [{"volume": "edit-disk1.qcow2"}], [created, definition().get("disks")])
    idle(window)

    # Grow: smaller is explained and refused, larger happens on Apply.
    click(find(window, "push button", "Grow edit-disk1.qcow2", timeout=10))
    dialog = dialog_named(app, "Grow edit-disk1.qcow2")
    if dialog is None:
        check("Grow opens its dialog", False)
        return
    type_into(shown(dialog, "text", "New size"), "8 MiB", "^Grow edit-disk1.qcow2$")
    explained = wait_until("the shrink explained", lambda: shown(dialog, "label", prefix="Volumes can only grow"), 10)
    grow = next((b for b in find_all(dialog, "push button", prefix="Grow")), None)
    check("a smaller size is explained and Grow is disabled", explained is not None and not sensitive(grow),
          [n.name for n in find_all(dialog, "label")])
    type_into(shown(dialog, "text", "New size"), "32 MiB", "^Grow edit-disk1.qcow2$")
    wait_until("Grow enabled", lambda: sensitive(grow), 10)
    respond(dialog, "Grow")
    time.sleep(0.5)
    check("growing waits for Apply", volumes()["edit-disk1.qcow2"]["virtual_size"] == 16 << 20)
    click(shown(window, "push button", "Apply"))
    check("Apply grows the volume",
          wait_until("grown", lambda: volumes()["edit-disk1.qcow2"]["virtual_size"] == 32 << 20, 15) is not None,
          volumes()["edit-disk1.qcow2"])


def running_check(window, passt):
    """While the VM runs, the rows take no edits, and the page says why."""
    if not passt:
        print("     (running check not run: the VM has a user-mode NIC and passt is not installed)")
        return
    idle(window)
    ctl("start", "edit")
    note = wait_until("the note", lambda: shown(window, "label", "Shut the VM down to change its hardware."), 15)
    cpus = (spins(window, "Virtual CPUs") or [None])[0]
    rows = [cpus, entry(window, "Kernel command line"), shown(window, "push button", "Add Disk"),
            (spins(window, "Host port") or [None])[0]]
    check("while the VM runs the rows are insensitive, with a line saying to shut it down",
          note is not None and None not in rows and not any(usable(r) for r in rows),
          [note, [r and usable(r) for r in rows]])
    ctl("destroy", "edit")
    check("shut off again, the rows take edits",
          wait_until("editable", lambda: usable((spins(window, "Virtual CPUs") or [None])[0]), 15) is not None)


harness.run(main)
