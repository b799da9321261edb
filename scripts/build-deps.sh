#!/usr/bin/env bash
# Installs what building payctl needs and a clean Debian machine lacks:
# a C toolchain and make (librdkafka is compiled from source by rdkafka-sys),
# pkg-config and OpenSSL's headers (librdkafka's TLS and SASL SCRAM link
# the system OpenSSL), and zlib's headers (gzip). zstd, lz4 and snappy are
# built from source inside the crates and need nothing more.
#
# Quiet when everything is there; otherwise says what it installs, once,
# with apt-get as root (through sudo when not root). Called by the scripts
# that build (test.sh, demo.sh, bench.sh, faults.sh) before cargo.
set -euo pipefail

packages=(build-essential pkg-config libssl-dev zlib1g-dev)

say() { printf 'build-deps: %s\n' "$*" >&2; }

if ! command -v dpkg-query >/dev/null || ! command -v apt-get >/dev/null; then
  # Not Debian: check what the build uses and name what is missing.
  missing=()
  command -v cc >/dev/null || missing+=("a C compiler")
  command -v make >/dev/null || missing+=(make)
  command -v pkg-config >/dev/null || missing+=(pkg-config)
  if command -v pkg-config >/dev/null && ! pkg-config --exists openssl; then missing+=("OpenSSL headers"); fi
  if [ ${#missing[@]} -gt 0 ]; then
    say "error: no apt-get here; install ${missing[*]} with this system's package manager"
    exit 1
  fi
  exit 0
fi

missing=()
for package in "${packages[@]}"; do
  status=$(dpkg-query -W -f='${Status}' "$package" 2>/dev/null || true)
  [ "$status" = "install ok installed" ] || missing+=("$package")
done
[ ${#missing[@]} -eq 0 ] && exit 0

as_root() { if [ "$(id -u)" = 0 ]; then "$@"; else sudo "$@"; fi; }

say "installing ${missing[*]} (Debian packages, to build librdkafka with TLS, SASL and every codec)"
as_root apt-get update -qq
as_root env DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends "${missing[@]}" >/dev/null
