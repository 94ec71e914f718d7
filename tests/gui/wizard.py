#!/usr/bin/python3
"""Drives the New VM assistant of the real `hangar` under Xvfb through AT-SPI, against a real
hangard on this session bus, with real workers running tiny guests on /dev/kvm: invalid input
keeps Next disabled with the reason next to the field, Cancel leaves nothing behind, and a VM
made end to end gets its qcow2 volume of the asked size, a stored definition, and starts. Then
the manager window in Russian.

Run by tests/gui.rs inside `dbus-run-session`; by hand:
  dbus-run-session -- /usr/bin/python3 tests/gui/wizard.py
with HANGAR, HANGARD, HANGARCTL and TINY_GUESTS set.
"""

import json
import os
import subprocess
import sys
import time

import harness
from harness import (HANGAR, TINY, check, children, click, ctl, find, find_all, hangar_app,
                     click_at, pyatspi, sensitive, set_value, showing, spawn, start_session, type_into,
                     vm_state,
                     wait_until, work)

TITLE = "^New Virtual Machine$"


def state_of_pool(env):
    """What exists: the VMs' names, the pool's volumes, the definition files."""
    vms = sorted(vm["name"] for vm in json.loads(ctl("list", "--all", "--json")))
    volumes = sorted(v["name"] for v in json.loads(ctl("vol-list", "--json")))
    defs_dir = os.path.join(env["XDG_CONFIG_HOME"], "hangar", "vms")
    files = sorted(os.listdir(defs_dir)) if os.path.isdir(defs_dir) else []
    return vms, volumes, files


def label_shown(root, text, timeout=5):
    return wait_until(f"label {text!r}", lambda: next(
        (n for n in find_all(root, "label", text) if showing(n)), None), timeout)


def open_wizard(app, window):
    click(find(window, "push button", "New VM"))
    return find(app, "frame", "New Virtual Machine", timeout=15)


def entry(wizard, title):
    return next((n for n in find_all(wizard, "text", title) if showing(n)), None)


def spin(wizard, title):
    # Its row is its label too, so the name starts with the row's title.
    return next((n for n in find_all(wizard, "spin button", prefix=title) if showing(n)), None)


def next_button(wizard):
    return next((n for n in find_all(wizard, "push button") if (n.name or "") in
                 ("Next", "Create and Start", "Create") and showing(n)), None)


def main():
    env = start_session()
    # A VM whose name the assistant must refuse.
    taken = os.path.join(work, "taken.json")
    with open(taken, "w") as f:
        json.dump({"name": "taken", "kernel": os.path.join(TINY, "hello.elf"), "memory": "32M",
                   "display": "none"}, f)
    ctl("define", taken)
    spawn([HANGAR], "hangar.log", env)
    app = hangar_app()
    if app is None:
        sys.exit("gui test: hangar never appeared on the AT-SPI bus (see hangar.log)")
    window = find(app, "frame", "Hangar")
    find(window, "list item", "taken (Shut off)")
    before = state_of_pool(env)

    # Step 1: nothing chosen yet, then a kernel that is not there.
    wizard = open_wizard(app, window)
    check("New VM opens the assistant on its first step", wizard is not None
          and label_shown(wizard, "Step 1 of 5: Install source") is not None)
    if wizard is None:
        return
    nxt = next_button(wizard)
    check("with no kernel chosen, Next is disabled and says what is missing",
          not sensitive(nxt) and label_shown(wizard, "Choose a Linux kernel (bzImage or vmlinux).") is not None)
    kernel = entry(wizard, "Kernel")
    type_into(kernel, os.path.join(work, "no-such-vmlinuz"), TITLE)
    check("a missing kernel file is explained next to the field, and Next stays disabled",
          label_shown(wizard, "There is no such file.") is not None and not sensitive(next_button(wizard)))
    notes = os.path.join(work, "notes.txt")
    with open(notes, "w") as f:
        f.write("not a kernel\n")
    type_into(kernel, notes, TITLE)
    check("a file that is no kernel is refused with the reason",
          wait_until("refusal", lambda: [n for n in find_all(wizard, "label", prefix="This is not a Linux kernel")
                                        if showing(n)], 5) is not None and not sensitive(next_button(wizard)))
    type_into(kernel, os.path.join(TINY, "echo.elf"), TITLE)
    check("a real kernel enables Next",
          wait_until("Next enabled", lambda: sensitive(next_button(wizard)), 10) is not None)

    # Step 2: what the source is, read from the file.
    click(next_button(wizard))
    check("step 2 shows what the kernel is, read from the file",
          label_shown(wizard, "Step 2 of 5: What the source is") is not None
          and wait_until("kind", lambda: [n for n in find_all(wizard, "label", prefix="ELF vmlinux (PVH entry)")
                                         if showing(n)], 10) is not None)

    # Step 3: memory above the host's is refused; a small one passes.
    click(next_button(wizard))
    memory = wait_until("memory", lambda: spin(wizard, "Memory (MiB)"), 10)
    host_mib = os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES") >> 20
    set_value(memory, host_mib + 1024)
    check("memory above the host's is explained and Next stays disabled",
          wait_until("too much", lambda: [n for n in find_all(wizard, "label", prefix=f"{host_mib + 1024} MiB is more than")
                                         if showing(n)], 10) is not None and not sensitive(next_button(wizard)))
    set_value(memory, 32)
    check("a memory size the host has enables Next",
          wait_until("Next enabled", lambda: sensitive(next_button(wizard)), 10) is not None)

    # Step 4: a new 2 GiB disk.
    click(next_button(wizard))
    size = wait_until("disk size", lambda: spin(wizard, "Disk size (GiB)"), 10)
    set_value(size, 2)
    click(next_button(wizard))

    # Step 5: a taken name is refused as it is typed; then a free one.
    name = wait_until("name", lambda: entry(wizard, "Name"), 10)
    check("the last step suggests a name", wait_until("a name", lambda: harness.text_of(name), 5) is not None,
          [(n.getRoleName(), n.name, harness.text_of(n)) for n in find_all(wizard, "text")])
    type_into(name, "taken", TITLE)
    check("a taken name is refused as it is typed, and Create stays disabled",
          label_shown(wizard, "A VM called taken exists already: choose another name.") is not None
          and not sensitive(next_button(wizard)))
    type_into(name, "wizvm", TITLE)
    network = next((n for n in find_all(wizard, "toggle button", "User-mode network")), None) \
        or next((n for n in find_all(wizard, None, "User-mode network") if n.getRoleName() != "label"), None)
    if network is not None and has_checked(network):
        click(network)  # the echo guest has no network driver; a card would only start a passt
    create = wait_until("Create enabled", lambda: sensitive(next_button(wizard)) and next_button(wizard), 10)
    check("a free name enables Create and Start", create is not None and create.name == "Create and Start",
          create.name if create else None)
    click(create)

    vm_window = find(app, "frame", "wizvm – Hangar", timeout=30)
    check("Create and Start defines the VM, starts it and opens its console",
          vm_window is not None and wait_until("running", lambda: vm_state("wizvm") == "running", 20) is not None,
          vm_state("wizvm"))
    definition = json.loads(ctl("dumpdef", "wizvm", "--json")) if vm_state("wizvm") else {}
    if isinstance(definition, dict) and "definition" in definition:
        definition = definition["definition"]
    if isinstance(definition, str):
        definition = json.loads(definition)
    check("the definition holds what was chosen (32 MiB, the kernel, the new disk)",
          definition.get("kernel", "").endswith("echo.elf")
          and definition.get("memory") == "32M"
          and definition.get("disks") == [{"volume": "wizvm.qcow2"}], definition)
    files = state_of_pool(env)[2]
    check("the definition is stored under XDG_CONFIG_HOME/hangar/vms", len(files) == len(before[2]) + 1, files)
    volume = os.path.join(env["XDG_DATA_HOME"], "hangar", "images", "wizvm.qcow2")
    info = subprocess.run(["qemu-img", "info", "--output=json", "-U", volume], capture_output=True, text=True)
    size_ok = info.returncode == 0 and json.loads(info.stdout).get("virtual-size") == 2 << 30
    check("the new qcow2 volume has the requested virtual size (qemu-img info)", size_ok,
          info.stdout[:300] + info.stderr)
    ctl("destroy", "wizvm")

    # An existing qcow2 imported, with "Customize before start": defined, not started, and its
    # window opens on the Details page.
    base = os.path.join(work, "base.qcow2")
    subprocess.run(["qemu-img", "create", "-q", "-f", "qcow2", base, "3G"], check=True)
    wizard = open_wizard(app, window)
    click_at(find(wizard, "check box", prefix="Import a disk image"), TITLE)
    image = wait_until("the image entry", lambda: entry(wizard, "Disk image"), 10)
    type_into(image, base, TITLE)
    type_into(entry(wizard, "Kernel"), os.path.join(TINY, "echo.elf"), TITLE)
    click(wait_until("Next", lambda: sensitive(next_button(wizard)) and next_button(wizard), 10))
    check("an image to import is read: its format and virtual size",
          label_shown(wizard, "qcow2") is not None
          and wait_until("size", lambda: [n for n in find_all(wizard, "label", prefix="3.0 GiB for the guest")
                                         if showing(n)], 10) is not None,
          [n.name for n in find_all(wizard, "label") if showing(n)][-12:])
    for _ in range(3):
        click(wait_until("Next", lambda: sensitive(next_button(wizard)) and next_button(wizard), 10))
    type_into(wait_until("name", lambda: entry(wizard, "Name"), 10), "imported", TITLE)
    customize = next((n for n in find_all(wizard, "check box", "Customize before start") if showing(n)), None)
    if customize is not None:
        click(customize)
    create = wait_until("Create", lambda: next_button(wizard).name == "Create" and next_button(wizard), 10)
    check("with Customize before start the last button only creates", create is not None)
    if create is not None:
        click(create)
    imported = find(app, "frame", "imported – Hangar", timeout=30)
    details = imported and wait_until("the Details page", lambda: next(
        (t for t in find_all(imported, "page tab", "Details") if harness.has_state(t, pyatspi.STATE_SELECTED)), None), 10)
    volumes = [v["name"] for v in json.loads(ctl("vol-list", "--json"))]
    check("…the VM is defined but not started, its window opens on Details, the image is in the pool",
          imported is not None and details is not None and vm_state("imported") == "shutoff"
          and "imported.qcow2" in volumes, (vm_state("imported"), volumes))

    # Cancel leaves nothing behind, even after filling in every step.
    before = state_of_pool(env)
    wizard = open_wizard(app, window)
    sample = find(wizard, "check box", prefix="Sample VM")
    if sample is not None:
        click_at(sample, TITLE)
    type_into(entry(wizard, "Kernel"), os.path.join(TINY, "echo.elf"), TITLE)
    for _ in range(4):
        button = wait_until("Next", lambda: sensitive(next_button(wizard)) and next_button(wizard), 10)
        if button is None or button.name != "Next":
            break
        click(button)
    cancel = find(wizard, "push button", "Cancel")
    click(cancel)
    gone = wait_until("assistant closed", lambda: not find_all(app, "frame", "New Virtual Machine"), 10)
    time.sleep(1)
    check("Cancel closes the assistant and creates no volume and no definition",
          gone is not None and state_of_pool(env) == before, f"{before} -> {state_of_pool(env)}")

    # The manager in Russian.
    for proc in children:
        if proc.args[0] == HANGAR and proc.poll() is None:
            proc.terminate()
            proc.wait(timeout=10)
    russian = dict(env, LANGUAGE="ru")
    spawn([HANGAR], "hangar-ru.log", russian)

    def russian_app():
        desktop = pyatspi.Registry.getDesktop(0)
        apps = [desktop.getChildAtIndex(i) for i in range(desktop.childCount)]
        return next((a for a in apps if a is not None and a.name == "hangar"
                     and find_all(a, "frame", "Hangar")), None)

    app = wait_until("hangar in Russian", russian_app)
    window = find(app, "frame", "Hangar") if app else None
    labels = set()
    if window is not None:
        wait_until("list", lambda: find_all(window, "list", "Виртуальные машины"), 15)
        labels = {n.name for n in find_all(window) if n.name}
    expected = {"Подключено", "Виртуальные машины", "Новая ВМ", "Запустить"}
    check("under LANGUAGE=ru the manager window reads in Russian", expected <= labels,
          sorted(expected - labels))
    check("…and a VM's state too", any(n.startswith("taken (") and "Выключена" in n for n in labels),
          sorted(n for n in labels if n.startswith("taken")))


def has_checked(node):
    return harness.has_state(node, pyatspi.STATE_CHECKED)


harness.run(main)
