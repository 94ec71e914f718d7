# shellcheck shell=bash
# Hangar guest kit: shared functions for tests/guests/build and tests/lab/run.
# Source it from bash with `set -euo pipefail` in effect; it defines functions and a few
# variables and runs nothing.

# shellcheck disable=SC2034 # used by the scripts that source this file
KIT_DIR=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
KIT_CACHE=${HANGAR_GUEST_CACHE:-$HOME/.cache/hangar/guests}
KIT_FLAVORS=(amd64 cloud-amd64)

kit_log() { printf '%s: %s\n' "${KIT_NAME:-guests}" "$*" >&2; }
kit_die() { kit_log "error: $*"; exit 1; }

kit_as_root() {
    if ((EUID == 0)); then
        "$@"
    elif command -v sudo >/dev/null; then
        sudo "$@"
    else
        kit_die "need root (or sudo) to run: $*"
    fi
}

kit_apt_update() {
    kit_log "apt-get update"
    kit_as_root apt-get update -qq
}

# Installs the Debian packages that are not installed yet. A fresh machine may have empty
# package lists, so a failed install is retried once after `apt-get update`.
kit_need_packages() {
    local pkg missing=()
    for pkg in "$@"; do
        dpkg-query -W -f='${Status}' "$pkg" 2>/dev/null | grep -q 'install ok installed' \
            || missing+=("$pkg")
    done
    ((${#missing[@]})) || return 0
    kit_log "installing ${missing[*]}"
    local install=(env DEBIAN_FRONTEND=noninteractive apt-get install -y -qq
        --no-install-recommends "${missing[@]}")
    kit_as_root "${install[@]}" >/dev/null || { kit_apt_update && kit_as_root "${install[@]}" >/dev/null; }
}

# Takes the cache lock for the rest of the calling process, or until kit_unlock.
# A cache we cannot write (the host's, read-only inside the lab) is only read: no lock then.
kit_lock() {
    mkdir -p "$KIT_CACHE" 2>/dev/null || true
    [[ -w $KIT_CACHE ]] || return 0
    exec {KIT_LOCK_FD}>"$KIT_CACHE/.lock"
    flock "$KIT_LOCK_FD"
}
kit_unlock() { [[ -z ${KIT_LOCK_FD:-} ]] || exec {KIT_LOCK_FD}>&-; }

# Prints "PACKAGE VERSION" of the versioned kernel package that linux-image-FLAVOR depends on.
kit_kernel_candidate() {
    local flavor=$1 pkg version
    pkg=$(apt-cache depends "linux-image-$flavor" 2>/dev/null \
        | awk '$1 == "Depends:" && $2 ~ /^linux-image-[0-9]/ && !found { print $2; found = 1 }')
    [[ -n $pkg ]] || return 1
    version=$(apt-cache show --no-all-versions "$pkg" 2>/dev/null \
        | awk '$1 == "Version:" && !found { print $2; found = 1 }')
    [[ -n $version ]] || return 1
    echo "$pkg $version"
}

kit_kernel_cached() {
    local flavor=$1
    [[ -f $KIT_CACHE/package-$flavor && -f $KIT_CACHE/vmlinuz-$flavor && -d $KIT_CACHE/modules-$flavor/ ]]
}

# Makes sure $KIT_CACHE holds the current Debian kernel of FLAVOR: vmlinuz-FLAVOR,
# config-FLAVOR, version-FLAVOR (uname -r), package-FLAVOR, and modules-FLAVOR pointing at
# lib/modules/RELEASE (with modules.dep from depmod).
kit_kernel() {
    local flavor=$1 want
    want=$(kit_kernel_candidate "$flavor") \
        || { kit_apt_update && want=$(kit_kernel_candidate "$flavor"); } \
        || want=
    if [[ -z $want ]]; then
        kit_kernel_cached "$flavor" \
            || kit_die "cannot resolve linux-image-$flavor with apt-cache and nothing is cached"
        kit_log "warning: apt cannot resolve linux-image-$flavor; using the cached $(<"$KIT_CACHE/package-$flavor")"
        return 0
    fi
    if kit_kernel_cached "$flavor" && [[ $(<"$KIT_CACHE/package-$flavor") == "$want" ]]; then
        return 0
    fi

    local pkg=${want% *} tmp release
    kit_need_packages kmod
    kit_log "downloading $want"
    tmp=$(mktemp -d "$KIT_CACHE/.fetch.XXXXXX")
    local apt_opts=()
    ((EUID != 0)) || apt_opts=(-o APT::Sandbox::User=root)
    (cd "$tmp" && apt-get download -qq "${apt_opts[@]}" "$pkg")
    dpkg-deb -x "$tmp/${pkg}_"*.deb "$tmp/root"

    local moddir=$tmp/root/lib/modules
    [[ -d $moddir ]] || moddir=$tmp/root/usr/lib/modules
    release=$(ls "$moddir")
    [[ -n $release && -f $tmp/root/boot/vmlinuz-$release ]] || kit_die "unexpected layout in $pkg"

    mkdir -p "$KIT_CACHE/lib/modules"
    rm -rf "$KIT_CACHE/lib/modules/$release"
    mv "$moddir/$release" "$KIT_CACHE/lib/modules/$release"
    PATH=$PATH:/usr/sbin:/sbin depmod -b "$KIT_CACHE" "$release"
    ln -sfn "lib/modules/$release" "$KIT_CACHE/modules-$flavor"
    cp "$tmp/root/boot/vmlinuz-$release" "$KIT_CACHE/vmlinuz-$flavor"
    cp "$tmp/root/boot/config-$release" "$KIT_CACHE/config-$flavor"
    echo "$release" >"$KIT_CACHE/version-$flavor"
    echo "$want" >"$KIT_CACHE/package-$flavor" # written last: marks the flavor complete
    rm -rf "$tmp"
    kit_prune_modules
}

# Drops module trees that no flavor points at any more (older kernel ABIs).
kit_prune_modules() {
    local dir keep flavor
    for dir in "$KIT_CACHE"/lib/modules/*/; do
        keep=
        for flavor in "${KIT_FLAVORS[@]}"; do
            [[ -f $KIT_CACHE/version-$flavor && $(basename "$dir") == "$(<"$KIT_CACHE/version-$flavor")" ]] && keep=1
        done
        [[ -n $keep ]] || rm -rf "$dir"
    done
}

kit_release() { cat "$KIT_CACHE/version-$1"; }

# Prints the module files (relative to the modules tree of FLAVOR) needed to load the named
# modules, dependencies first, each once. Built-in modules are skipped.
kit_resolve_modules() {
    local flavor=$1
    shift
    local tree=$KIT_CACHE/modules-$flavor
    local -A path_of=() deps_of=() seen=()
    local target deps name
    while IFS=: read -r target deps; do
        name=$(basename "$target")
        name=${name%%.ko*}
        path_of[${name//-/_}]=$target
        deps_of[$target]=$deps
    done <"$tree/modules.dep"

    visit() {
        local file=$1 dep
        [[ -z ${seen[$file]:-} ]] || return 0
        seen[$file]=1
        for dep in ${deps_of[$file]}; do visit "$dep"; done
        echo "$file"
    }
    local module key
    for module in "$@"; do
        key=${module//-/_}
        if [[ -n ${path_of[$key]:-} ]]; then
            visit "${path_of[$key]}"
        elif grep -qE "/${key//_/[-_]}\.ko" "$tree/modules.builtin"; then
            kit_log "$module is built into $(kit_release "$flavor"), nothing to load"
        else
            kit_die "module $module not found in $(kit_release "$flavor")"
        fi
    done
    unset -f visit
}

kit_busybox() {
    kit_need_packages busybox-static
    dpkg-query -L busybox-static | awk '/\/bin\/busybox$/ && !found { print; found = 1 }'
}

# Builds OUT (cpio newc, gzip) from busybox-static, INIT as /init, and the named modules of
# FLAVOR with their dependencies. /modules.order-load lists the module files in load order.
# Skips the work when nothing that goes into OUT changed.
kit_initramfs() {
    local out=$1 init=$2 flavor=$3
    shift 3
    kit_need_packages cpio gzip kmod
    local busybox release stamp
    busybox=$(kit_busybox)
    release=$(kit_release "$flavor")
    stamp=$({
        echo "$release $*"
        dpkg-query -W -f='${Version}\n' busybox-static
        cat "$init" "${BASH_SOURCE[0]}"
    } | sha256sum)
    if [[ -f $out && -f $out.stamp && $(<"$out.stamp") == "$stamp" ]]; then
        return 0
    fi

    [[ -w $KIT_CACHE ]] || kit_die "$out is out of date and $KIT_CACHE is read-only here; run tests/guests/build all where it is writable (on the host, not in the lab)"
    local root file load_order
    load_order=$(kit_resolve_modules "$flavor" "$@")
    root=$(mktemp -d "$KIT_CACHE/.initramfs.XXXXXX")
    mkdir -p "$root"/{bin,dev,proc,sys,tmp,run,root,etc,mnt}
    cp "$busybox" "$root/bin/busybox"
    for file in $("$busybox" --list); do
        [[ $file == busybox ]] || ln -s busybox "$root/bin/$file"
    done
    ln -s bin "$root/sbin"
    install -m 0755 "$init" "$root/init"

    local modules=$KIT_CACHE/modules-$flavor/ dest
    : >"$root/modules.order-load"
    while read -r file; do
        dest=lib/modules/$release/${file%.xz}
        dest=${dest%.zst}
        mkdir -p "$root/$(dirname "$dest")"
        case $file in
            *.xz) xz -dc "$modules/$file" >"$root/$dest" ;;
            *.zst) zstd -qdc "$modules/$file" >"$root/$dest" ;;
            *) cp "$modules/$file" "$root/$dest" ;;
        esac
        echo "/$dest" >>"$root/modules.order-load"
    done <<<"$load_order"

    mkdir -p "$(dirname "$out")"
    (cd "$root" && find . -mindepth 1 -print0 | LC_ALL=C sort -z \
        | cpio --null --create --format=newc --owner=0:0 --reproducible --quiet) \
        | gzip -9n >"$out.tmp"
    mv "$out.tmp" "$out"
    echo "$stamp" >"$out.stamp"
    rm -rf "$root"
}
