#!/usr/bin/env bash
# Builds the two Debian 12 packages from this checkout:
#   OUTDIR/miner-agent_<version>_<arch>.deb and OUTDIR/executor-agent_<version>_<arch>.deb
#
#   bash scripts/build-debs.sh [OUTDIR]        (default OUTDIR: dist/)
#
# Route (a) of test-environment.md §5: one virtualenv made with Debian's /usr/bin/python3
# and this project pip-installed into it (dependencies from PyPI), copied to
# /opt/<package>/venv of each package with its paths rewritten to that final location,
# byte-compiled there, then `dpkg-deb --build`. No debian/ tree, no debhelper.
# Needs: dpkg-dev's dpkg-deb, python3-venv, network to PyPI. As root it apt-installs
# what is missing; otherwise it says what to install.
set -euo pipefail
REPO=$(cd "$(dirname "$0")/.." && pwd)
OUT=$(mkdir -p "${1:-$REPO/dist}" && cd "${1:-$REPO/dist}" && pwd)
PKGDIR=$REPO/packaging
PY=/usr/bin/python3   # Debian's interpreter, never a pyenv shim (test-environment.md §5)
log() { echo "build-debs: $*" >&2; }

need=()
command -v dpkg-deb >/dev/null || need+=(dpkg)
[ -x "$PY" ] || need+=(python3)
"$PY" -c 'import ensurepip, venv' 2>/dev/null || need+=(python3-venv)
if [ ${#need[@]} -gt 0 ]; then
  if [ "$(id -u)" = 0 ] && command -v apt-get >/dev/null; then
    log "installing ${need[*]}"
    apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq "${need[@]}" >/dev/null
  else
    log "missing ${need[*]}: run  sudo apt-get install ${need[*]}"; exit 1
  fi
fi

VERSION=$("$PY" -c 'import sys, tomllib; print(tomllib.load(open(sys.argv[1], "rb"))["project"]["version"])' "$REPO/pyproject.toml")
ARCH=$(dpkg --print-architecture)
WORK=$(mktemp -d /var/tmp/build-debs.XXXXXX)
trap 'rm -rf "$WORK"' EXIT
t0=$(date +%s)

log "venv with /usr/bin/python3 ($("$PY" --version 2>&1)), installing $REPO"
"$PY" -m venv "$WORK/venv"
# A copy of the tree without local venvs and build leftovers, so pip builds a clean wheel.
tar -C "$REPO" --exclude=./.venv --exclude='./.venv-*' --exclude=./dist --exclude=./build --exclude=./.git \
    --exclude='*.egg-info' --exclude=__pycache__ --exclude=./.quickstart -cf - . | (mkdir "$WORK/src" && tar -C "$WORK/src" -xf -)
"$WORK/venv/bin/pip" install -q --disable-pip-version-check --no-compile "$WORK/src" 2>&1 | grep -v 'is ignored' >&2 || true
"$WORK/venv/bin/python" -c 'import miner_agent.commands.main, executor_agent.cli' \
  || { log "the venv does not import the agents; see pip's output above"; exit 1; }
# pip and setuptools are build tools; nothing at run time uses them.
"$WORK/venv/bin/python" -m pip uninstall -q -y pip setuptools >/dev/null 2>&1 || true
find "$WORK/venv" -name __pycache__ -prune -exec rm -rf {} +
# It records the temporary source path pip installed from; meaningless on a target host.
rm -f "$WORK"/venv/lib/python3*/site-packages/miner_agent-*.dist-info/direct_url.json
rm -f "$WORK/venv/bin/activate"* "$WORK/venv/bin/Activate.ps1"

build_one() {  # $1 = package name (also its command, unit and config name)
  local pkg=$1 stage=$WORK/stage-$1 venv=/opt/$1/venv
  mkdir -p "$stage/opt/$pkg" "$stage/usr/bin" "$stage/lib/systemd/system" "$stage/etc/$pkg" \
           "$stage/usr/share/doc/$pkg" "$stage/DEBIAN"
  cp -a "$WORK/venv" "$stage$venv"
  # Scripts' shebangs and pyvenv.cfg name the build path; point them at the installed one.
  grep -rlI --null -F "$WORK/venv" "$stage$venv/bin" "$stage$venv/pyvenv.cfg" | xargs -0 -r sed -i "s|$WORK/venv|$venv|g"
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
                         "$stage/lib/systemd/system/podman.socket.d/50-executor-agent.conf" ;;
  esac
  local size
  size=$(du -sk --exclude=DEBIAN "$stage" | cut -f1)
  sed -e "s/@VERSION@/$VERSION/" -e "s/@ARCH@/$ARCH/" -e "s/@INSTALLED_SIZE@/$size/" \
      "$PKGDIR/deb/$pkg/control.in" >"$stage/DEBIAN/control"
  local deb=$OUT/${pkg}_${VERSION}_${ARCH}.deb
  dpkg-deb --root-owner-group -Zxz -z3 --build "$stage" "$deb" >/dev/null
  log "$deb ($(du -h "$deb" | cut -f1), installed ${size} KiB)"
}

build_one miner-agent & miner=$!
build_one executor-agent & executor=$!
wait "$miner" || { log "miner-agent failed"; exit 1; }
wait "$executor" || { log "executor-agent failed"; exit 1; }
log "done in $(( $(date +%s) - t0 )) s"
