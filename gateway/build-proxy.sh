#!/usr/bin/env bash
# Builds the proxy binary as it ships and installs it at DEST:
#
#   gateway/build-proxy.sh DEST
#
# Cargo.toml's `proxy` profile (whole-program optimisation, cold crates
# optimised for size), and on glibc Linux linked statically (static-pie,
# still with ASLR): a dynamically linked proxy also maps libc, libm and the
# dynamic loader, about 1 MB of every idle sidecar's resident memory, of
# which it runs little. The target is named explicitly so that the
# static-linking flag reaches only the proxy, not the build scripts and
# procedural macros that cargo builds for the host.
set -euo pipefail
dest="${1:?usage: $0 DEST}"
cd "$(dirname "$0")/.."
host="$(rustc -vV | sed -n 's/^host: //p')"
if [[ "$host" == *-linux-gnu ]]; then
  export RUSTFLAGS="${RUSTFLAGS:-} -C target-feature=+crt-static"
fi
cargo build --profile proxy --locked --target "$host" -p isthmus-gateway --bin isthmus-gateway
install -m 0755 "${CARGO_TARGET_DIR:-target}/$host/proxy/isthmus-gateway" "$dest"
