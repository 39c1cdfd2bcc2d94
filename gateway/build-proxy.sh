#!/usr/bin/env bash
# Builds the proxy binary as it ships and installs it at DEST:
#
#   gateway/build-proxy.sh [--pgo] DEST
#
# Cargo.toml's `proxy` profile (whole-program optimisation, cold crates
# optimised for size), and on glibc Linux linked statically (static-pie,
# still with ASLR): a dynamically linked proxy also maps libc, libm and the
# dynamic loader, about 1 MB of every idle sidecar's resident memory, of
# which it runs little. The target is named explicitly so that the
# static-linking flag reaches only the proxy, not the build scripts and
# procedural macros that cargo builds for the host.
#
# --pgo adds profile-guided optimisation, as the image ships it: an
# instrumented proxy is built and trained by gateway/pgo/train.sh (real
# HTTP/1.1, HTTP/2, TLS and mTLS traffic through an ingress and two
# sidecars), then the proxy is built again with that profile: about a fifth
# fewer instructions per proxied request (docs/benchmarks.md). It takes
# two proxy builds and a minute of training; it needs `isthmus` for the
# training's control plane (ISTHMUS_BIN, else built here with --release),
# curl, openssl, and llvm-profdata from rustup's llvm-tools component
# (added when missing). Its intermediate builds and profiles live in
# ${CARGO_TARGET_DIR:-target}/pgo.
set -euo pipefail
pgo=0
if [[ "${1:-}" == --pgo ]]; then
  pgo=1
  shift
fi
dest="${1:?usage: $0 [--pgo] DEST}"
dest="$(realpath -m "$dest")"
cd "$(dirname "$0")/.."
target="$(realpath -m "${CARGO_TARGET_DIR:-target}")"
host="$(rustc -vV | sed -n 's/^host: //p')"
base="${RUSTFLAGS:-}"
if [[ "$host" == *-linux-gnu ]]; then
  base="$base -C target-feature=+crt-static"
fi
step() { echo "build-proxy: $*" >&2; }

# build TARGET_DIR RUSTFLAGS: the proxy, into TARGET_DIR/HOST/proxy.
build() {
  CARGO_TARGET_DIR="$1" RUSTFLAGS="$2" \
    cargo build --profile proxy --locked --target "$host" -p isthmus-gateway --bin isthmus-gateway
}

if ((pgo == 0)); then
  build "$target" "$base"
  install -m 0755 "$target/$host/proxy/isthmus-gateway" "$dest"
  exit 0
fi

profdata="$(rustc --print sysroot)/lib/rustlib/$host/bin/llvm-profdata"
if [[ ! -x "$profdata" ]]; then
  step "adding rustup's llvm-tools component (llvm-profdata)"
  rustup component add llvm-tools
fi
[[ -x "$profdata" ]] || {
  echo "build-proxy: no llvm-profdata at $profdata (rustup component add llvm-tools)" >&2
  exit 1
}
isthmus="${ISTHMUS_BIN:-}"
if [[ -z "$isthmus" ]]; then
  step "building isthmus (the training's control plane)"
  CARGO_TARGET_DIR="$target" cargo build --release --locked -p isthmus-control --bin isthmus
  isthmus="$target/release/isthmus"
fi

# Each variant keeps its own target directory: their flags differ for
# every crate, so sharing one would rebuild everything at each switch.
work="$target/pgo"
rm -rf "$work/raw"
mkdir -p "$work/raw"
step "1/3 instrumented build"
build "$work/generate" "$base -C profile-generate=$work/raw"
step "2/3 training"
LLVM_PROFILE_FILE="$work/raw/proxy-%p-%m.profraw" \
  gateway/pgo/train.sh "$isthmus" "$work/generate/$host/proxy/isthmus-gateway"
"$profdata" merge -o "$work/merged.profdata" "$work/raw"/*.profraw
# Named by content: cargo tracks RUSTFLAGS, not the file they point at,
# so a new profile must change the flags to be used.
profile="$work/proxy-$(sha256sum "$work/merged.profdata" | cut -c1-16).profdata"
mv "$work/merged.profdata" "$profile"
find "$work" -maxdepth 1 -name 'proxy-*.profdata' ! -path "$profile" -delete
step "3/3 optimised build with $profile"
build "$work/use" "$base -C profile-use=$profile"
install -m 0755 "$work/use/$host/proxy/isthmus-gateway" "$dest"
