#!/usr/bin/env bash
# Builds and updates the signed apt repository operators install miner-agent and
# executor-agent from, with two channels (apt suites): `stable`, and `preprod`, the stock
# miner's early-access channel. One repository per Debian release, side by side:
#
#   REPO/www/                      serve this directory as it is (any static web server)
#     miner-agent.asc              the public signing key (what /etc/apt/keyrings gets)
#     bookworm/dists/{stable,preprod}/  bookworm/pool/   Debian 12 builds
#     trixie/dists/{stable,preprod}/    trixie/pool/     Debian 13 builds
#   REPO/reprepro/<release>/{conf,db}   reprepro's own state: keep it, do not serve it
#
# so an operator's source is  URIs: <base>/<codename>  Suites: stable  (or preprod), and
# switching channels is editing that one word (docs/packaging-apt.md).
#
#   build-apt-repo.sh publish --key KEY --suite stable|preprod [--release R] [--repo DIR] DEB|DIR...
#   build-apt-repo.sh promote --key KEY [--release R] [--repo DIR]    preprod's versions into stable
#   build-apt-repo.sh list [--repo DIR]                                 what each suite holds
#   build-apt-repo.sh keygen GNUPGHOME [NAME]          a passphrase-less signing key (tests, CI)
#
# KEY is a key ID/fingerprint in $GNUPGHOME (or ~/.gnupg), or a file with an exported
# secret key (imported into a throwaway GNUPGHOME for this run). DIR defaults to dist/apt.
# Publishing the version a suite already has is a no-op; an older one is refused.
# Needs reprepro and gpg; as root it apt-installs what is missing.
set -euo pipefail
REPO=$(cd "$(dirname "$0")/.." && pwd)
PACKAGES=(miner-agent executor-agent)
ARCHITECTURES="amd64 arm64"
SUITES=(stable preprod)
log() { echo "build-apt-repo: $*" >&2; }
die() { log "$*"; exit 1; }

usage() {
  sed -n '2,/^set -euo/p' "$0" | sed -e '$d' -e 's/^# \{0,1\}//'
  exit "${1:-0}"
}

ensure_tools() {
  local need=()
  command -v reprepro >/dev/null || need+=(reprepro)
  command -v gpg >/dev/null || need+=(gpg)
  command -v dpkg-deb >/dev/null || need+=(dpkg)
  [ ${#need[@]} -eq 0 ] && return
  if [ "$(id -u)" = 0 ] && command -v apt-get >/dev/null; then
    log "installing ${need[*]}"
    apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq "${need[@]}" >/dev/null
  else
    die "missing ${need[*]}: run  sudo apt-get install ${need[*]}"
  fi
}

# The release a package was built for, named as the host's VERSION_CODENAME (the README's
# URIs): its version's release tag, else the python3 range it depends on (the venv inside is
# bound to that interpreter).
release_of() {
  local version depends
  version=$(dpkg-deb -f "$1" Version)
  case $version in  # the tags scripts/build-debs.sh puts in the version
    *deb12*) echo bookworm; return ;;
    *deb13*) echo trixie; return ;;
    *ubuntu22.04*) echo jammy; return ;;
    *ubuntu24.04*) echo noble; return ;;
  esac
  depends=$(dpkg-deb -f "$1" Depends)
  case $depends in
    *"python3 (<< 3.12)"*) echo bookworm ;;
    *"python3 (<< 3.14)"*) echo trixie ;;
    *) return 1 ;;
  esac
}

# KEY -> $SIGN_WITH (a fingerprint) and $GNUPGHOME, importing a key file when given one.
setup_key() {
  local key=$1
  [ -n "$key" ] || die "--key is required: a key ID in \$GNUPGHOME, or a secret key file (see --help)"
  if [ -f "$key" ]; then
    GNUPGHOME=$(mktemp -d /tmp/build-apt-repo-gpg.XXXXXX)
    export GNUPGHOME
    trap 'gpgconf --kill gpg-agent >/dev/null 2>&1 || true; rm -rf "$GNUPGHOME"' EXIT
    gpg --batch --quiet --import "$key" 2>/dev/null || die "$key: gpg cannot import it as a secret key"
    key=
  fi
  SIGN_WITH=$(gpg --batch --with-colons --list-secret-keys $key 2>/dev/null | awk -F: '$1 == "fpr" { print $10; exit }')
  [ -n "$SIGN_WITH" ] || die "no secret key ${key:-in the given file} (GNUPGHOME=${GNUPGHOME:-~/.gnupg}); list them with: gpg -K"
}

# The repository of one Debian release: reprepro config (rewritten every run, so the
# signing key and the suites follow this script), then reprepro with its state out of www/.
rr() {  # $1 = release, then reprepro arguments
  local release=$1 state=$DIR/reprepro/$1
  shift
  reprepro --silent --basedir "$state" --outdir "$DIR/www/$release" "$@"
}

configure_release() {
  local release=$1 state=$DIR/reprepro/$1 suite
  mkdir -p "$state/conf" "$DIR/www/$release"
  for suite in "${SUITES[@]}"; do
    cat <<EOF
Origin: miner-agent
Label: miner-agent
Suite: $suite
Codename: $suite
Architectures: $ARCHITECTURES
Components: main
Description: miner-agent and executor-agent for Debian $release, channel $suite
SignWith: $SIGN_WITH

EOF
  done >"$state/conf/distributions"
}

# Re-signs every suite (so an empty preprod exists too) and checks the signature.
export_release() {
  local release=$1 suite
  rr "$release" export
  gpg --batch --armor --export "$SIGN_WITH" >"$DIR/www/miner-agent.asc"
  for suite in "${SUITES[@]}"; do
    gpg --batch --quiet --verify "$DIR/www/$release/dists/$suite/InRelease" 2>/dev/null \
      || die "$release/$suite: InRelease does not verify with $SIGN_WITH"
  done
}

version_in() {  # release suite package -> its version there, or nothing
  rr "$1" --list-format '${version}\n' list "$2" "$3" 2>/dev/null | head -1
}

sha256_in() {  # release suite package -> the SHA256 its index lists
  rr "$1" --list-format '${SHA256}\n' list "$2" "$3" 2>/dev/null | head -1
}

publish() {
  [ -n "$SUITE" ] || die "publish needs --suite stable or --suite preprod"
  case " ${SUITES[*]} " in *" $SUITE "*) ;; *) die "unknown suite $SUITE: use stable or preprod" ;; esac
  local debs=() arg deb release version pkg have
  for arg in "$@"; do
    if [ -d "$arg" ]; then
      for deb in "$arg"/*.deb; do [ -e "$deb" ] && debs+=("$deb"); done
    elif [ -f "$arg" ]; then
      debs+=("$arg")
    else
      die "$arg: no such file or directory"
    fi
  done
  [ ${#debs[@]} -gt 0 ] || die "publish: no .deb given (files, or a directory holding them)"
  declare -A configured=()
  for deb in "${debs[@]}"; do
    pkg=$(dpkg-deb -f "$deb" Package) || die "$deb: not a Debian package"
    version=$(dpkg-deb -f "$deb" Version)
    release=${RELEASE:-$(release_of "$deb")} \
      || die "$deb: cannot tell its Debian release (no debNN in $version, no known python3 range); pass --release"
    if [ -z "${configured[$release]:-}" ]; then
      configure_release "$release"
      configured[$release]=1
    fi
    have=$(version_in "$release" "$SUITE" "$pkg")
    if [ -n "$have" ] && dpkg --compare-versions "$version" eq "$have"; then
      # A host that installed it has these bytes' hashes: the same version must stay the same file.
      [ "$(sha256sum <"$deb" | cut -d' ' -f1)" = "$(sha256_in "$release" "$SUITE" "$pkg")" ] \
        || die "$release/$SUITE already has $pkg $version with other contents: publish it under a new version"
      log "$release/$SUITE: $pkg $version already published"
      continue
    elif [ -n "$have" ] && dpkg --compare-versions "$version" lt "$have"; then
      die "$release/$SUITE has $pkg $have, newer than $version: refusing to go back (apt would not downgrade anyway)"
    fi
    rr "$release" includedeb "$SUITE" "$deb" || die "$release/$SUITE: reprepro could not add $deb"
    log "$release/$SUITE: $pkg $version published"
  done
  for release in "${!configured[@]}"; do export_release "$release"; done
}

releases() {  # the releases this repository has, or the one --release named
  if [ -n "$RELEASE" ]; then echo "$RELEASE"; return; fi
  local d
  for d in "$DIR"/reprepro/*/; do [ -d "$d/db" ] && basename "$d"; done
}

promote() {
  local release pkg from to found=
  for release in $(releases); do
    found=1
    configure_release "$release"
    for pkg in "${PACKAGES[@]}"; do
      from=$(version_in "$release" preprod "$pkg")
      to=$(version_in "$release" stable "$pkg")
      [ -n "$from" ] || continue
      if [ -n "$to" ] && dpkg --compare-versions "$from" le "$to"; then
        log "$release: stable already has $pkg $to (preprod: $from)"
        continue
      fi
      rr "$release" copy stable preprod "$pkg" || die "$release: reprepro could not copy $pkg into stable"
      log "$release: $pkg $from promoted preprod -> stable${to:+ (was $to)}"
    done
    export_release "$release"
  done
  [ -n "$found" ] || die "nothing to promote: $DIR has no repository yet (publish first)"
}

list() {
  local release suite pkg
  for release in $(releases); do
    for suite in "${SUITES[@]}"; do
      for pkg in "${PACKAGES[@]}"; do
        printf '%s\t%s\t%s\t%s\n' "$release" "$suite" "$pkg" "$(version_in "$release" "$suite" "$pkg")"
      done
    done
  done
}

keygen() {
  local home=${1:?usage: build-apt-repo.sh keygen GNUPGHOME [NAME]} name=${2:-miner-agent repository <apt@localhost>}
  mkdir -p "$home" && chmod 0700 "$home"
  GNUPGHOME=$home gpg --batch --quiet --passphrase '' --quick-generate-key "$name" ed25519 sign never 2>/dev/null \
    || die "gpg could not make a key in $home"
  GNUPGHOME=$home gpg --batch --with-colons --list-secret-keys "$name" 2>/dev/null | awk -F: '$1 == "fpr" { print $10; exit }'
}

CMD=${1:-}
[ -n "$CMD" ] || usage 2
shift
case $CMD in -h|--help|help) usage 0 ;; esac
DIR=$REPO/dist/apt KEY= SUITE= RELEASE=
args=()
while [ $# -gt 0 ]; do
  case $1 in
    -k|--key) KEY=${2:?--key needs a value}; shift 2 ;;
    -s|--suite) SUITE=${2:?--suite needs a value}; shift 2 ;;
    -r|--release) RELEASE=${2:?--release needs a value}; shift 2 ;;
    -o|--repo) DIR=${2:?--repo needs a value}; shift 2 ;;
    -h|--help) usage 0 ;;
    --) shift; args+=("$@"); break ;;
    -*) log "unknown option $1"; usage 2 ;;
    *) args+=("$1"); shift ;;
  esac
done
ensure_tools
case $CMD in
  publish) setup_key "$KEY"; mkdir -p "$DIR"; DIR=$(cd "$DIR" && pwd); publish "${args[@]}" ;;
  promote) [ -d "$DIR" ] || die "no repository at $DIR (publish first, or pass --repo)"; setup_key "$KEY"; promote ;;
  list) [ -d "$DIR" ] || die "no repository at $DIR (publish first, or pass --repo)"; list ;;
  keygen) keygen "${args[@]}" ;;
  *) log "unknown command $CMD"; usage 2 ;;
esac
