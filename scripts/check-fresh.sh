#!/bin/sh
# check-fresh.sh -- the README's two commands on a fresh Debian 12 root, then the .deb on a root with no build tools.
#
# 1. A minbase bookworm root with only build-essential, git and ca-certificates (scripts/mkroot.sh, cached),
#    a clean `git archive` of HEAD copied into its /opt/memprof (open to the users the security tests create; no
#    ../shared beside it), and inside it, as root:
#    `make demo`, then `make test`. Both must exit 0; the demo must show an attached session and a census;
#    the test summary must have no failure and no skip but for what a fresh Debian 12 does not have (pyenv's
#    interpreters; numpy and IPython in other Pythons than Debian's python3.11) and facts of the machine ("does not
#    apply here"): the root installs every tool the suite uses (make test's deps-test) and gets the Debian sid
#    root from the host's cache, and its make test runs with MEMPROF_REQUIRE (tests/conftest.py: any other skip
#    is a failure).
# 2. `make deb` there, then a bare minbase root (no compiler): `apt-get install ./memprof_*.deb python3`,
#    `memprofd attach`, `memprof top --once`, `memprofd detach` on a real Python process.
# Each step runs in its own mount and pid namespaces: nothing it mounts or starts outlives it. Logs and a summary go to build/fresh/.
set -eu
cd "$(dirname "$0")/.."
top=$(pwd)
# Debian roots are cached where make test (tests/conftest.py) and CI keep them.
export MEMPROF_CACHE="${MEMPROF_CACHE:-/var/cache/memprof}"
out="$top/build/fresh"
mkdir -p "$out"
[ "$(id -u)" -eq 0 ] || { echo "check-fresh: needs root (debootstrap, chroot, mounts)" >&2; exit 1; }

work=$(mktemp -d /tmp/memprof-fresh.XXXXXX)
cleanup() {
    rm -rf "$work" # in_root's namespaces took their processes and mounts with them
}
trap cleanup EXIT
trap 'exit 130' INT TERM

t0=$(date +%s)
elapsed() { echo "$(( $(date +%s) - t0 )) s"; }
fail() { echo "check-fresh: FAILED: $*" >&2; echo "FAILED: $*" >>"$out/summary"; exit 1; }

# Runs a shell command as root inside DIR, as on a machine of its own: a new mount and pid namespace whose
# root is DIR (pivot_root, not chroot: user namespaces and mount propagation work inside as on a real host),
# with /proc, /dev, /sys (the kernel's BTF, /sys/kernel/btf/vmlinux, comes with it), the BPF filesystem, tracefs
# and debugfs where a host has them (memprof rss and its tests as on a host), and a tmpfs /tmp. When the command
# ends, the namespaces end: every process it left is killed and every mount is gone. No host variable leaks in.
in_root() { # DIR COMMAND
    unshare --mount --pid --fork --propagation private sh -c '
        set -e
        r=$1
        mount --bind "$r" "$r"
        mount -t proc proc "$r/proc"
        mount --rbind /dev "$r/dev"
        mount -t sysfs sysfs "$r/sys"
        ! grep -qw bpf /proc/filesystems || mount -t bpf bpf "$r/sys/fs/bpf"
        ! grep -qw tracefs /proc/filesystems || mount -t tracefs tracefs "$r/sys/kernel/tracing"
        ! grep -qw debugfs /proc/filesystems || mount -t debugfs debugfs "$r/sys/kernel/debug"
        mount -t tmpfs tmpfs "$r/tmp"
        cd "$r"
        mkdir -p .oldroot
        pivot_root . .oldroot
        umount -l /.oldroot
        rmdir /.oldroot
        exec /usr/bin/env -i HOME=/root TERM=dumb LANG=C.UTF-8 \
            PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin /bin/sh -c "$0"' "$2" "$1"
}

# This workplace reaches package registries through a TLS proxy whose CA the host trusts
# (/usr/local/share/ca-certificates, npm's cafile); a machine of its own here has them too, so the root gets
# them as well: that is the machine's setup, not something memprof needs. A root from a cached tarball,
# with the host's resolver.
make_root() { # DIR NAME
    mkdir -p "$1"
    tar -C "$1" -xzf "$(sh scripts/mkroot.sh "$2")"
    cp /etc/resolv.conf "$1/etc/resolv.conf"
    if ls /usr/local/share/ca-certificates/*.crt >/dev/null 2>&1; then
        mkdir -p "$1/usr/local/share/ca-certificates"
        cp /usr/local/share/ca-certificates/*.crt "$1/usr/local/share/ca-certificates/"
        in_root "$1" 'update-ca-certificates >/dev/null 2>&1 || true'
        echo "cafile=/etc/ssl/certs/ca-certificates.crt" >>"$1/etc/npmrc"
    fi
}

: >"$out/summary"
echo "== check-fresh: Debian 12 root ($(elapsed))"
root="$work/bookworm"
make_root "$root" bookworm
mkdir -p "$root/opt/memprof"
git archive HEAD | tar -x -C "$root/opt/memprof"
in_root "$root" 'command -v python3 || true; ls /root/.pyenv 2>/dev/null || true' >"$out/before.log" 2>&1

echo "== make demo ($(elapsed))"
s=$(date +%s)
rc=0; in_root "$root" 'cd /opt/memprof && make demo' >"$out/demo.log" 2>&1 || rc=$?
echo "make demo: exit $rc in $(( $(date +%s) - s )) s" | tee -a "$out/summary"
[ $rc -eq 0 ] || { tail -n 30 "$out/demo.log"; fail "make demo exited $rc"; }
grep -q '^attached to pid' "$out/demo.log" || fail "the demo shows no attached session"
grep -qE '^ *ID +PID' "$out/demo.log" || fail "the demo shows no session table"
grep -q 'TYPE' "$out/demo.log" || fail "the demo shows no census"

echo "== make test ($(elapsed))"
# The Debian sid root (Pythons 3.13-3.15, the container tests) and the packages the .deb pulls into it come from
# the host's cache, as on a machine where make test ran once: the root's make test would build the same one
# with the same scripts/mkroot.sh, at the cost of minutes and Debian's mirror, checking nothing more.
sid=$(sh scripts/mkroot.sh sid)
mkdir -p "$root/var/cache/memprof"
cp "$sid" "$root/var/cache/memprof/sid.tar.gz"
if [ -d "$MEMPROF_CACHE/sid-debs" ]; then cp -r "$MEMPROF_CACHE/sid-debs" "$root/var/cache/memprof/"; fi
s=$(date +%s)
# podman: the root is a mount and pid namespace with no cgroup hierarchy mounted, where runc cannot make a container
# (tests/test_podman.py skips with this reason; on a host, CI runs them).
require='all,!pyenv-*,!* has no numpy*,!* has no IPython*,!podman cannot run containers here*'
rc=0; in_root "$root" "cd /opt/memprof && MEMPROF_REQUIRE='$require' make test" >"$out/test.log" 2>&1 || rc=$?
summary=$(grep -E '^=+ .*(passed|failed|error).* in [0-9.]+s' "$out/test.log" | tail -n 1)
echo "make test: exit $rc in $(( $(date +%s) - s )) s: $summary" | tee -a "$out/summary"
[ $rc -eq 0 ] || { tail -n 40 "$out/test.log"; grep -E "^(FAILED|ERROR) " "$out/test.log" | tee -a "$out/summary"; fail "make test exited $rc"; }
echo "$summary" | grep -q ' passed' || fail "make test printed no passed count"
echo "$summary" | grep -qE ' (failed|error)' && fail "make test reported failures"
# Skips: those $require excuses and facts of the machine only (the conftest fails any other under MEMPROF_REQUIRE;
# this holds even if it did not). pytest -rs lists them as "SKIPPED [N] FILE:LINE: REASON".
skipped() { # REGEX: how many tests were skipped for a reason matching it
    sed -nE 's/^SKIPPED \[([0-9]+)\] [^ ]+:[0-9]+: /\1 /p' "$out/test.log" |
        awk -v re="^[0-9]+ ($1)" '$0 ~ re {n += $1} END {print n + 0}'
}
all=$(skipped '.'); pyenv=$(skipped 'pyenv-'); mods=$(skipped '[^ ]+ has no (numpy|IPython)')
na=$(skipped 'does not apply here'); pm=$(skipped 'podman cannot run containers here'); other=$((all - pyenv - mods - na - pm))
echo "make test: $all skipped: $pyenv for pyenv's interpreters, $mods for numpy or IPython in a Python other than" \
    "Debian's, $na not applicable here, $pm podman (no cgroups in the root), $other other" | tee -a "$out/summary"
if [ $other -ne 0 ]; then
    grep -E '^SKIPPED' "$out/test.log" |
        grep -vE '^SKIPPED \[[0-9]+\] [^ ]+:[0-9]+: (pyenv-|[^ ]+ has no (numpy|IPython)|does not apply here|podman cannot run containers here)' |
        tee -a "$out/summary"
    fail "make test skipped tests that could run in the fresh root"
fi
grep -E 'MISSING|not found' "$out/test.log" | sed -n '1,20p' >>"$out/summary" || true

echo "== make deb ($(elapsed))"
rc=0; in_root "$root" 'cd /opt/memprof && make deb' >"$out/deb.log" 2>&1 || rc=$?
[ $rc -eq 0 ] || { tail -n 20 "$out/deb.log"; fail "make deb exited $rc"; }
deb=$(ls "$root"/opt/memprof/build/memprof_*_amd64.deb 2>/dev/null | head -n 1)
[ -n "$deb" ] || fail "make deb made no build/memprof_*_amd64.deb"
cp "$deb" "$out/"

echo "== the .deb on a root without build tools ($(elapsed))"
bare="$work/bare"
make_root "$bare" bookworm-bare
cp "$deb" "$bare/root/"
rc=0; in_root "$bare" '
    set -e
    export DEBIAN_FRONTEND=noninteractive
    apt-get update -qq
    apt-get install -y -qq --no-install-recommends ./root/memprof_*.deb python3 >/dev/null
    ! command -v cc && ! command -v gcc && ! command -v make
    memprofd --version
    memprof --version
    python3 -u -c "
import time
keep = []
print(\"ready\", flush=True)
while True:
    keep.append(bytearray(100000)); time.sleep(0.01)
" >/tmp/target.log 2>&1 &
    pid=$!
    trap "kill $pid 2>/dev/null; memprofd stop >/dev/null 2>&1" EXIT
    for i in $(seq 50); do grep -q ready /tmp/target.log && break; sleep 0.1; done
    memprofd attach --pid $pid
    sleep 2
    memprof top --pid $pid --once
    memprofd detach --pid $pid
' >"$out/deb-install.log" 2>&1 || rc=$?
cat "$out/deb-install.log"
[ $rc -eq 0 ] || fail "installing and using the .deb failed (exit $rc)"
grep -q '^attached to pid' "$out/deb-install.log" || fail "the installed memprofd did not attach"
grep -q '^detached from pid' "$out/deb-install.log" || fail "the installed memprofd did not detach"

echo "check-fresh: passed in $(elapsed)" | tee -a "$out/summary"
