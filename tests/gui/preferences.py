#!/usr/bin/python3
"""Drives the real `hangar` under Xvfb through AT-SPI, against a real hangard with tiny guests
on /dev/kvm: the Preferences window (a graph column switched on shows in the list at once; the
keyboard release keys change what the console says and does; the choice lasts across a
restart of the GUI), Force Off asking first, the About and keyboard shortcuts windows.

Run by tests/gui.rs inside `dbus-run-session`; by hand:
  dbus-run-session -- /usr/bin/python3 tests/gui/preferences.py
with HANGAR, HANGARD, HANGARCTL and TINY_GUESTS set.
"""

import json
import os
import subprocess
import sys
import time

import harness
from harness import (HANGAR, TINY, check, children, click, click_at, click_into, click_page,
                     ctl, find,
                     find_all, hangar_app, select_row, sensitive, showing, spawn,
                     start_session, vm_state, wait_until, work)


def define(name, guest, display="none"):
    path = os.path.join(work, f"{name}.json")
    with open(path, "w") as f:
        json.dump({"name": name, "kernel": os.path.join(TINY, f"{guest}.elf"), "memory": "32M",
                   "display": display}, f)
    ctl("define", path)


def key(keys, title="^Hangar$"):
    """Real keys to the window whose title matches `title`, or to the focused one."""
    if title is not None:
        subprocess.run(["xdotool", "search", "--sync", "--name", title, "windowfocus", "--sync"],
                       capture_output=True, timeout=20)
    subprocess.run(["xdotool", "key", keys], timeout=10)


def shown(root, role, name, timeout=5):
    return wait_until(f"{role} {name}", lambda: next(
        (n for n in find_all(root, role, name) if showing(n)), None), timeout)


def start_gui(env):
    spawn([HANGAR], "hangar.log", env)
    app = wait_until("a hangar with its window", lambda: next(
        (a for a in [hangar_app()] if a is not None and find_all(a, "frame", "Hangar")), None))
    if app is None:
        sys.exit("gui test: hangar never appeared on the AT-SPI bus (see hangar.log)")
    return app, find(app, "frame", "Hangar")


def main():
    env = start_session()
    define("ticker", "ticker")
    define("kb", "kbd", display="framebuffer")
    ctl("start", "ticker")
    app, window = start_gui(env)
    listbox = find(window, "list", "Virtual machines")
    find(listbox, "list item", "ticker (Running)")

    def memory_graph_shown():
        return [g for g in find_all(listbox, None, "Memory usage") if showing(g)]

    check("by default the list shows no memory graph", not memory_graph_shown())

    # Preferences: Ctrl+comma, switch the memory column on.
    key("ctrl+comma")
    prefs = find(app, "frame", "Preferences", timeout=10)
    check("Ctrl+, opens the Preferences window", prefs is not None)
    if prefs is None:
        return
    switch = next((n for n in find_all(prefs, None, "Memory usage") if n.getRoleName() in
                   ("toggle button", "switch", "check box")), None)
    if switch is not None:
        click(switch)
    check("switching on the memory column shows memory graphs in the list at once",
          wait_until("memory graphs", memory_graph_shown, 10) is not None)

    # The release keys: choose Right Ctrl from the combo row, with the keyboard, as a user does.
    click_page(prefs, "Console")
    combo = wait_until("release row", lambda: next(
        (n for n in find_all(prefs, prefix="Release keyboard with") if showing(n)), None), 10)
    click_at(combo, "^Preferences$")
    time.sleep(0.8)
    right = shown(app, "label", "Right Ctrl")
    if right is not None:
        click_at(right, "^Preferences$")
    keyfile = os.path.join(env["XDG_CONFIG_HOME"], "glib-2.0", "settings", "keyfile")
    stored = wait_until("the choice stored", lambda: os.path.exists(keyfile)
                        and "grab-key='right-ctrl'" in open(keyfile).read(), 10)
    check("choosing Right Ctrl stores it in the user's settings", stored is not None,
          open(keyfile).read() if os.path.exists(keyfile) else "no keyfile")
    key("Escape", "^Preferences$")

    # The GUI restarted keeps both choices; the console says and does what they say.
    for proc in children:
        if proc.args[0] == HANGAR and proc.poll() is None:
            proc.terminate()
            proc.wait(timeout=10)
    ctl("start", "kb")
    app, window = start_gui(env)
    listbox = find(window, "list", "Virtual machines")
    find(listbox, "list item", "kb (Running)")
    check("after a restart of the GUI the memory column is still on",
          wait_until("memory graphs", memory_graph_shown, 10) is not None)
    select_row(listbox, "kb")
    open_button = find(window, "push button", "Open")
    wait_until("Open enabled", lambda: sensitive(open_button), 10)
    click(open_button)
    kb_window = find(app, "frame", "kb – Hangar")
    display = find(kb_window, None, "VM display")
    time.sleep(1.0)
    click_into(display, "^kb .+ Hangar$")
    check("the console names the chosen release key",
          shown(kb_window, "label", "Keyboard grabbed: press Right Ctrl to release") is not None)
    subprocess.run(["xdotool", "key", "ctrl+alt"], timeout=10)
    time.sleep(0.5)
    check("Ctrl+Alt no longer releases it (it goes to the guest)",
          shown(kb_window, "label", "Keyboard grabbed: press Right Ctrl to release", 2) is not None)
    subprocess.run(["xdotool", "key", "Control_R"], timeout=10)
    check("Right Ctrl releases it",
          shown(kb_window, "label", "Click the display to send the keyboard to the VM") is not None)
    click(find(kb_window, "push button", "Close"))

    # Force Off asks first; Cancel keeps the VM running.
    select_row(listbox, "ticker")
    time.sleep(0.5)

    def force_off_dialog():
        return next((w for w in find_all(app, prefix="Force off ticker?")
                     if w.getRoleName() in ("dialog", "frame", "alert")), None)

    row = next(r for r in find_all(listbox, "list item") if (r.name or "").startswith("ticker"))

    def ask_force_off():
        for _ in range(3):
            context_menu(row)
            item = shown(app, None, "Force Off")
            if item is not None:
                click_menu_item(item)
                dialog = wait_until("the Force Off question", force_off_dialog, 10)
                if dialog is not None:
                    return dialog
            key("Escape")
        return None

    dialog = ask_force_off()
    check("Force Off asks first", dialog is not None)
    if dialog is not None:
        click(find_all(dialog, "push button", prefix="Cancel")[0])
        wait_until("the question gone", lambda: not force_off_dialog(), 10)
        time.sleep(1)
    check("…and Cancel leaves the VM running", vm_state("ticker") == "running", vm_state("ticker"))
    dialog = ask_force_off()
    if dialog is not None:
        click(find_all(dialog, "push button", prefix="Force Off")[0])
    check("confirming stops it", wait_until("shut off", lambda: vm_state("ticker") == "shutoff", 15) is not None,
          vm_state("ticker"))

    # Keyboard shortcuts and About.
    key("ctrl+question")
    check("Ctrl+? shows the keyboard shortcuts",
          wait_until("shortcuts", lambda: [n for n in find_all(app, "label", "Open the selected VM")], 10)
          is not None)
    key("Escape", None)
    menu = find(window, "toggle button", "Main Menu") or find(window, "push button", "Main Menu")
    for _ in range(3):
        click_at(menu, "^Hangar$")
        about_item = shown(app, None, "About Hangar")
        if about_item is not None:
            click_menu_item(about_item)
            break
        key("Escape")
    check("the main menu's About Hangar shows the version",
          wait_until("about", lambda: [n for n in find_all(app, "label", "0.1.0")], 10) is not None)


def context_menu(row):
    """A real right-click on `row` of the manager's list."""
    click_at(row, "^Hangar$", button=3, across=1 / 3)
    time.sleep(0.8)


def click_menu_item(item):
    try:
        click(item)
    except Exception:
        click_at(item, "^Hangar$")


harness.run(main)
