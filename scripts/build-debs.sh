#!/usr/bin/env bash
# Builds the two Debian packages from this checkout, for one Debian release:
#   OUTDIR/miner-agent_<version>+<tag>_<arch>.deb and OUTDIR/executor-agent_<version>+<tag>_<arch>.deb
# <tag> names the release the packages are for (deb12, deb13, ubuntu24.04), because each carries a
# virtualenv built with that release's Python and Depends on exactly that Python (docs/packaging.md).
#
#   bash scripts/build-debs.sh [OUTDIR]                  for this host's release, with its /usr/bin/python3
#   SUITE=bookworm bash scripts/build-debs.sh [OUTDIR]   for Debian 12, in a debootstrapped build root
#   SUITE=trixie bash scripts/build-debs.sh [OUTDIR]     for Debian 13, likewise
#   PYTHON=/usr/bin/python3.11 bash scripts/build-debs.sh   another Debian-packaged interpreter
#                                                        (Ubuntu 22.04: its python3 is 3.10)
# Environment: VERSION (default: pyproject's), DEBIAN_MIRROR, BUILDROOTS (the build roots'
# and the shared wheelhouse's directory, default /var/tmp/miner-agent-buildroots), WHEELHOUSE
# (where the locked files are downloaded to and installed from; default: one per run, or
# $BUILDROOTS/wheelhouse with SUITE). OUTDIR defaults to dist/.
#
# Route (a) of test-environment.md §5: per package, a virtualenv made with the release's
# Python, its locked dependencies installed with pip --require-hashes (requirements/executor.txt
# or miner.txt) and the project's wheel without its dependencies, the other agent's code taken
# out, copied to /opt/<package>/venv with its paths rewritten to that final location,
# byte-compiled there, then `dpkg-deb --build`. No debian/ tree, no debhelper.
#
# With SUITE the script runs itself again inside the build root (chroot in a private mount
# namespace, so nothing stays mounted): a debootstrap --variant=minbase of that suite with
# python3 and python3-venv, made once (2-4 minutes) and kept in $BUILDROOTS/<suite>, with one
# wheelhouse for all suites, so a second build downloads nothing. Needs debootstrap then.
# Needs: dpkg-deb, python3-venv, network to PyPI. As root it apt-installs what is missing;
# otherwise it says what to install.
set -euo pipefail
REPO=$(cd "$(dirname "$0")/.." && pwd)
OUT=$(mkdir -p "${1:-$REPO/dist}" && cd "${1:-$REPO/dist}" && pwd)
PKGDIR=$REPO/packaging
BUILDROOTS=${BUILDROOTS:-/var/tmp/miner-agent-buildroots}
MIRROR=${DEBIAN_MIRROR:-http://deb.debian.org/debian}
BUILDROOT_PACKAGES=python3,python3-venv,ca-certificates
log() { echo "build-debs: $*" >&2; }

apt_need() {  # installs the named Debian packages as root, or says how
  if [ "$(id -u)" = 0 ] && command -v apt-get >/dev/null; then
    log "installing $*"
    apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq "$@" >/dev/null
  else
    log "missing $*: run  sudo apt-get install $*"; exit 1
  fi
}

# --- SUITE=...: make or reuse the build root, then run this script in it without SUITE ---
if [ -n "${SUITE:-}" ]; then
  case $SUITE in bookworm|trixie) ;; *) log "SUITE=$SUITE: known suites are bookworm (12) and trixie (13)"; exit 1;; esac
  [ "$(id -u)" = 0 ] || { log "SUITE=$SUITE builds in a chroot and needs root"; exit 1; }
  command -v debootstrap >/dev/null || apt_need debootstrap
  mkdir -p "$BUILDROOTS/wheelhouse"
  root=$BUILDROOTS/$SUITE
  recipe="$SUITE $MIRROR $BUILDROOT_PACKAGES"
  exec 9>"$BUILDROOTS/$SUITE.lock"
  flock 9   # one build per build root at a time; another build of the same suite waits here
  if [ "$(cat "$root/.recipe" 2>/dev/null)" != "$recipe" ]; then
    log "build root $root: debootstrap $SUITE from $MIRROR (once; later builds reuse it)"
    rm -rf "$root" && mkdir -p "$root"
    mkdir -p "$BUILDROOTS/debootstrap-cache"   # shared with tests/system/build-image.sh
    # One debootstrap at a time writes into the shared .deb cache (other suites, the test images).
    if ! flock "$BUILDROOTS/debootstrap-cache.lock" \
         debootstrap --variant=minbase --include="$BUILDROOT_PACKAGES" --cache-dir="$BUILDROOTS/debootstrap-cache" \
         "$SUITE" "$root" "$MIRROR" >"$BUILDROOTS/$SUITE.log" 2>&1; then
      tail -20 "$BUILDROOTS/$SUITE.log" >&2
      log "debootstrap $SUITE failed (mirror $MIRROR; set DEBIAN_MIRROR to another)"; rm -rf "$root"; exit 1
    fi
    rm -rf "$root"/var/cache/apt/archives/*.deb
    echo "$recipe" >"$root/.recipe"
  fi
  mkdir -p "$root/build/src" "$root/build/out" "$root/var/cache/wheelhouse"
  # pip in the build root trusts what this host's pip trusts (a TLS-inspecting proxy's CA, say);
  # what it downloads is checked against the lock's hashes either way.
  CA_BUNDLE=${PIP_CERT:-/etc/ssl/certs/ca-certificates.crt}
  log "building in $root ($(chroot "$root" /usr/bin/python3 --version 2>&1))"
  # The checkout read-only, OUTDIR and the shared wheelhouse bind-mounted in; proc, dev and
  # resolv.conf (for PyPI) too. All of it goes with the mount namespace when the build ends.
  unshare --mount --propagation private bash -euc '
    root=$1
    mount -t proc proc "$root/proc"
    mount --rbind /dev "$root/dev"
    mount --bind -o ro "$2" "$root/build/src"
    mount --bind "$3" "$root/build/out"
    mount --bind "$4" "$root/var/cache/wheelhouse"
    touch "$root/etc/resolv.conf"; mount --bind -o ro /etc/resolv.conf "$root/etc/resolv.conf"
    touch "$root/etc/ssl/certs/build-host-ca.crt"; mount --bind -o ro "$6" "$root/etc/ssl/certs/build-host-ca.crt"
    exec chroot "$root" /usr/bin/env -i PATH=/usr/sbin:/usr/bin:/sbin:/bin HOME=/root LANG=C.UTF-8 \
      WHEELHOUSE=/var/cache/wheelhouse PIP_DEFAULT_TIMEOUT="${PIP_DEFAULT_TIMEOUT:-60}" VERSION="$5" \
      PIP_CERT=/etc/ssl/certs/build-host-ca.crt bash /build/src/scripts/build-debs.sh /build/out
  ' _ "$root" "$REPO" "$OUT" "$BUILDROOTS/wheelhouse" "${VERSION:-}" "$CA_BUNDLE"
  exit 0
fi

# --- the build proper, for this system's release (a host, or a build root) ---
PY=${PYTHON:-/usr/bin/python3}   # a Debian-packaged interpreter, never a pyenv shim (test-environment.md §5)
need=()
command -v dpkg-deb >/dev/null || need+=(dpkg)
[ -x "$PY" ] || need+=("$(basename "$PY")")
"$PY" -c 'import ensurepip, venv' 2>/dev/null || need+=("$(basename "$PY")-venv")
[ ${#need[@]} -eq 0 ] || apt_need "${need[@]}"
PYVER=$("$PY" -c 'import sys; print("%d.%d" % sys.version_info[:2])')
REQUIRES=$("$PY" -c 'import sys, tomllib; print(tomllib.load(open(sys.argv[1], "rb"))["project"]["requires-python"])' \
           "$REPO/pyproject.toml" 2>/dev/null || echo '>=3.11')
if ! "$PY" -c 'import sys; sys.exit(sys.version_info < (3, 11))'; then
  log "$PY is Python $PYVER; the agents need $REQUIRES. On Ubuntu 22.04: apt install python3.11 python3.11-venv," \
      "then PYTHON=/usr/bin/python3.11 bash scripts/build-debs.sh (docs/packaging.md)"
  exit 1
fi
# The venv's compiled extensions are for this Python's ABI: Depend on exactly its minor version.
NEXT=$("$PY" -c 'import sys; print("%d.%d" % (sys.version_info[0], sys.version_info[1] + 1))')
if [ "$PY" = /usr/bin/python3 ]; then
  PYDEPENDS="python3 (>= $PYVER), python3 (<< $NEXT)"
else
  PYDEPENDS="python$PYVER"   # e.g. Ubuntu 22.04's python3.11 package
fi
# The release tag in the version: deb12, deb13, ubuntu24.04 (or the codename of a release without a number).
TAG=$(. /etc/os-release  # in a subshell: it sets VERSION too
      case ${ID:-} in
        debian) echo "deb${VERSION_ID:-${VERSION_CODENAME:-unknown}}" ;;
        *) echo "${ID:-linux}${VERSION_ID:-${VERSION_CODENAME:-}}" ;;
      esac)
VERSION=${VERSION:-$("$PY" -c 'import sys, tomllib; print(tomllib.load(open(sys.argv[1], "rb"))["project"]["version"])' \
                    "$REPO/pyproject.toml")}
DEBVERSION=$VERSION+$TAG
ARCH=$(dpkg --print-architecture)
WORK=$(mktemp -d /var/tmp/build-debs.XXXXXX)
trap 'rm -rf "$WORK"' EXIT
t0=$(date +%s)
PIP=(--disable-pip-version-check --no-compile --use-pep517 -q)

log "$DEBVERSION with $PY (Python $("$PY" -c 'import platform; print(platform.python_version())'))"
# A copy of the tree without local venvs and build leftovers, so pip builds a clean wheel.
tar -C "$REPO" --exclude=./.venv --exclude='./.venv-*' --exclude=./dist --exclude=./build --exclude=./.git \
    --exclude='*.egg-info' --exclude=__pycache__ --exclude=./.quickstart -cf - . | (mkdir "$WORK/src" && tar -C "$WORK/src" -xf -)
"$PY" -m venv "$WORK/wheel-venv"
"$WORK/wheel-venv/bin/pip" wheel -q --disable-pip-version-check --no-deps -w "$WORK/wheel" "$WORK/src" 2>&1 | grep -v 'is ignored' >&2 || true
WHEEL=$(ls "$WORK"/wheel/miner_agent-*.whl)
# Every locked file this Python needs (miner.txt holds executor.txt), downloaded once into the
# wheelhouse, which already has what an earlier build or another suite fetched (pip's own HTTP
# cache does not help behind a proxy that drops Cache-Control); the venvs install from it alone.
# setuptools and wheel: what pip's build isolation installs to build an sdist (sdnotify).
WHEELHOUSE=${WHEELHOUSE:-$WORK/wheelhouse}
mkdir -p "$WHEELHOUSE"
"$WORK/wheel-venv/bin/pip" download -q --disable-pip-version-check --require-hashes \
  -r "$WORK/src/requirements/miner.txt" -d "$WHEELHOUSE" 2>&1 | grep -v 'is ignored' >&2 || true
"$WORK/wheel-venv/bin/pip" download -q --disable-pip-version-check 'setuptools>=61' wheel -d "$WHEELHOUSE" 2>&1 \
  | grep -v 'is ignored' >&2 || true

make_venv() {  # $1 = package; its venv in $WORK/venv-$1 from requirements/<lock>.txt and the wheel
  local pkg=$1 venv=$WORK/venv-$1 lock other check
  case $pkg in
    miner-agent) lock=miner; other=executor_agent; check='import miner_agent.commands.main' ;;
    executor-agent) lock=executor; other=miner_agent; check='import executor_agent.cli' ;;
  esac
  "$PY" -m venv "$venv"
  "$venv/bin/pip" install "${PIP[@]}" --no-index --find-links "$WHEELHOUSE" --require-hashes \
    -r "$WORK/src/requirements/$lock.txt" 2>&1 \
    | grep -v 'is ignored' >&2 || true
  "$venv/bin/pip" install "${PIP[@]}" --no-deps "$WHEEL" 2>&1 | grep -v 'is ignored' >&2 || true
  # It records the temporary path pip installed from; meaningless on a target host.
  rm -f "$venv"/lib/python3*/site-packages/miner_agent-*.dist-info/direct_url.json
  "$venv/bin/python" -c "$check" || { log "$pkg: the venv does not import its agent; see pip's output above"; exit 1; }
  # Each package carries its own agent and the two shared packages, not the other agent
  # (docs/layout.md); RECORD loses their lines so the metadata matches what is there.
  local site=("$venv"/lib/python3*/site-packages)
  rm -rf "${site[0]:?}/$other" "$venv/bin/${other//_/-}"
  sed -i "/^${other}\//d; /^\.\.\/\.\.\/\.\.\/bin\/${other//_/-},/d" "${site[0]}"/miner_agent-*.dist-info/RECORD
  # pip and setuptools are build tools; nothing at run time uses them.
  "$venv/bin/python" -m pip uninstall -q -y pip setuptools >/dev/null 2>&1 || true
  find "$venv" -name __pycache__ -prune -exec rm -rf {} +
  rm -f "$venv/bin/activate"* "$venv/bin/Activate.ps1" "$venv/bin/pip"*
}

build_one() {  # $1 = package name (also its command, unit and config name)
  local pkg=$1 stage=$WORK/stage-$1 venv=/opt/$1/venv
  make_venv "$pkg"
  mkdir -p "$stage/opt/$pkg" "$stage/usr/bin" "$stage/lib/systemd/system" "$stage/etc/$pkg" \
           "$stage/usr/share/doc/$pkg" "$stage/DEBIAN"
  cp -a "$WORK/venv-$pkg" "$stage$venv"
  # Scripts' shebangs and pyvenv.cfg name the build path; point them at the installed one.
  grep -rlI --null -F "$WORK/venv-$pkg" "$stage$venv/bin" "$stage$venv/pyvenv.cfg" \
    | xargs -0 -r sed -i "s|$WORK/venv-$pkg|$venv|g"
  if grep -rlI -F "$WORK" "$stage$venv" >/dev/null; then
    log "$pkg: build paths left in: $(grep -rlI -F "$WORK" "$stage$venv" | head -3)"; exit 1
  fi
  # Byte-compile as the installed tree, so tracebacks name /opt/... and nothing is
  # written under /opt at run time (the units make /opt read-only anyway).
  "$PY" -m compileall -q -j0 -s "$stage" -p / "$stage$venv/lib" >/dev/null 2>&1 || true
  ln -s "$venv/bin/$pkg" "$stage/usr/bin/$pkg"
  install -m 0644 "$PKGDIR/deb/$pkg/$pkg.toml" "$stage/etc/$pkg/$pkg.toml"
  install -m 0644 "$PKGDIR/deb/copyright" "$stage/usr/share/doc/$pkg/copyright"
  install -m 0644 "$REPO/README.md" "$stage/usr/share/doc/$pkg/README.md"
  install -D -m 0644 -t "$stage/usr/share/doc/$pkg/docs" "$REPO"/docs/*.md   # the README's links
  install -m 0644 "$PKGDIR/deb/$pkg/conffiles" "$stage/DEBIAN/conffiles"
  install -m 0755 "$PKGDIR/deb/$pkg/postinst" "$PKGDIR/deb/$pkg/prerm" "$PKGDIR/deb/$pkg/postrm" "$stage/DEBIAN/"
  case $pkg in
    miner-agent)
      install -m 0644 "$PKGDIR/systemd/miner-agent.service" "$stage/lib/systemd/system/" ;;
    executor-agent)
      install -m 0644 "$PKGDIR/systemd/executor-agent.service" "$PKGDIR/systemd/executor-agent-preload.service" \
                      "$PKGDIR/systemd/executor-agent-preload.timer" "$stage/lib/systemd/system/"
      install -D -m 0644 "$PKGDIR/systemd/podman.socket.d/50-executor-agent.conf" \
                         "$stage/lib/systemd/system/podman.socket.d/50-executor-agent.conf"
      install -D -m 0644 "$PKGDIR/deb/executor-agent/tmpfiles.conf" "$stage/usr/lib/tmpfiles.d/executor-agent.conf" ;;
  esac
  local size
  size=$(du -sk --exclude=DEBIAN "$stage" | cut -f1)
  sed -e "s/@VERSION@/$DEBVERSION/" -e "s/@ARCH@/$ARCH/" -e "s/@INSTALLED_SIZE@/$size/" \
      -e "s/@PYTHON_DEPENDS@/$PYDEPENDS/" "$PKGDIR/deb/$pkg/control.in" >"$stage/DEBIAN/control"
  local deb=$OUT/${pkg}_${DEBVERSION}_${ARCH}.deb
  dpkg-deb --root-owner-group -Zxz -z3 --build "$stage" "$deb" >/dev/null
  log "$deb ($(du -h "$deb" | cut -f1), Installed-Size ${size} KiB)"
}

build_one miner-agent & miner=$!
build_one executor-agent & executor=$!
wait "$miner" || { log "miner-agent failed"; exit 1; }
wait "$executor" || { log "executor-agent failed"; exit 1; }
log "done in $(( $(date +%s) - t0 )) s"
