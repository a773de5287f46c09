#!/bin/sh
# mkdeb.sh -- builds $BUILD/memprof_VERSION_ARCH.deb from a staged `make install PREFIX=/usr` (run by `make deb`).
# The package is built in its own tree ($BUILD/pkg) so the developer build in $BUILD keeps its PREFIX.
# Depends comes from dpkg-shlibdeps, which needs a debian/control to read: a minimal one is written in
# the staging area, so the package has one source of truth (this script and the Makefile's install list).
set -eu
BUILD=${BUILD:-build}
MAKE=${MAKE:-make}
for tool in dpkg-deb dpkg-shlibdeps dpkg-architecture; do
    command -v $tool >/dev/null 2>&1 || { echo "mkdeb: $tool not found (apt-get install dpkg-dev)" >&2; exit 1; }
done
VERSION=${MEMPROF_VERSION:-$($MAKE -s --no-print-directory version)}
ARCH=$(dpkg-architecture -qDEB_HOST_ARCH)
PKG=$BUILD/pkg
STAGE=$PKG/src/debian/memprof # where dpkg-shlibdeps expects a package's files
DEB=$BUILD/memprof_${VERSION}_${ARCH}.deb

rm -rf "$PKG/src"
mkdir -p "$STAGE"
$MAKE --no-print-directory install BUILD="$PKG/build" DESTDIR="$(cd "$STAGE" && pwd)" PREFIX=/usr MEMPROF_VERSION="$VERSION"

# Debian ships binaries stripped (the agent keeps its dynamic symbols: memprofd looks them up there).
for f in "$STAGE"/usr/bin/memprof "$STAGE"/usr/bin/memprofd "$STAGE"/usr/lib/memprof/libmemprof_agent.so; do
    strip --strip-unneeded --remove-section=.comment --remove-section=.note "$f"
done
# Debian's layout: man pages compressed, the license as the package's copyright file.
gzip -9n "$STAGE"/usr/share/man/man1/memprof.1 "$STAGE"/usr/share/man/man8/memprofd.8
install -D -m 644 LICENSE "$STAGE/usr/share/doc/memprof/copyright"
# The supported CPythons as common/pyversions.h defines them, for the description.
PYRANGE=$(sed -n 's/^#define MP_PY_\(MIN\|MAX\)_MINOR \([0-9]*\)$/3.\2/p' common/pyversions.h | paste -sd-)
[ -n "$PYRANGE" ] || { echo "mkdeb: no MP_PY_MIN_MINOR/MP_PY_MAX_MINOR in common/pyversions.h" >&2; exit 1; }

mkdir -p "$STAGE/DEBIAN" # also how dpkg-shlibdeps recognises the package root
printf 'Source: memprof\n\nPackage: memprof\nArchitecture: any\n' >"$PKG/src/debian/control"
# memprofd loads libmicrohttpd with dlopen (daemon/mhd.c): a program linked to it that takes the addresses of the
# functions memprofd calls (daemon/mhd.h's list) lets dpkg-shlibdeps say which version has them.
printf '#include "daemon/mhd.h"\n#define ADDR(name) (void *)&MHD_##name,\nvoid *const used[] = {MHD_FNS(ADDR)};\n%s\n' \
    'int main(void) { return !used[0]; }' >"$PKG/mhd_used.c"
${CC:-cc} -iquote . $(pkg-config --cflags libmicrohttpd) -o "$STAGE/mhd_used" "$PKG/mhd_used.c" \
    $(pkg-config --libs libmicrohttpd)
DEPENDS=$(cd "$PKG/src" && dpkg-shlibdeps -O -edebian/memprof/usr/bin/memprofd -edebian/memprof/usr/bin/memprof \
              -edebian/memprof/usr/lib/memprof/libmemprof_agent.so -edebian/memprof/mhd_used | sed -n 's/^shlibs:Depends=//p')
rm -f "$STAGE/mhd_used" "$PKG/mhd_used.c"
case "$DEPENDS" in *libmicrohttpd*) ;; *) echo "mkdeb: no libmicrohttpd in Depends ($DEPENDS)" >&2; exit 1 ;; esac
[ -n "$DEPENDS" ] || { echo "mkdeb: dpkg-shlibdeps found no dependencies" >&2; exit 1; }

(cd "$STAGE" && find usr -type f | LC_ALL=C sort | xargs md5sum) >"$STAGE/DEBIAN/md5sums"
cat >"$STAGE/DEBIAN/control" <<CONTROL
Package: memprof
Version: $VERSION
Architecture: $ARCH
Maintainer: memprof developers <memprof@localhost>
Installed-Size: $(du -sk --exclude=DEBIAN "$STAGE" | cut -f1)
Depends: $DEPENDS
Section: devel
Priority: optional
Description: memory profiler for live CPython processes
 memprofd attaches to a running CPython $PYRANGE process (ptrace, about a
 millisecond stopped) and injects an agent that samples allocations and
 counts objects; memprof shows where memory goes by line and function
 (top, lines, diff, plot, export), what objects exist and why they stay
 alive (types, growth, backrefs, chain), and profiles scripts from their
 first line (memprof run). The systemd unit memprofd.service runs the root
 daemon (not enabled by default).
CONTROL
dpkg-deb --root-owner-group -Zxz --build "$STAGE" "$DEB" >/dev/null
echo "mkdeb: wrote $DEB (Depends: $DEPENDS)"
