#!/usr/bin/env bash
# Issue 8: runs the AuthorizationPolicy / JWT benchmark
# (gateway/examples/policy_bench) once and replaces the section between
# <!-- policy-bench:start --> and <!-- policy-bench:end --> in
# docs/benchmarks.md (appending it if the markers are absent).
#
#   gateway/bench/policy.sh [--connections N] [--warmup-secs S] [--secs S] [--rounds R]
#
# Arguments go to the benchmark. The build is the dev profile with the
# workspace's own crates at opt-level 2 (dependencies already are, see the
# root Cargo.toml): the RBAC and JWT code under test must be optimized, or
# its cost is overstated; a full release build of every dependency takes
# several minutes on 2 cores. BENCH_RELEASE=1 builds with --release instead.
# Honours CARGO_TARGET_DIR. NOTE='...' adds a sentence to the section
# (e.g. what else ran on the machine).
set -euo pipefail

root="$(cd "$(dirname "$0")/../.." && pwd)"
cd "$root"
doc="docs/benchmarks.md"
out="$(mktemp)"
section="$(mktemp)"
trap 'rm -f "$out" "$section"' EXIT

if [[ "${BENCH_RELEASE:-0}" == 1 ]]; then
  build=(cargo build --release -p isthmus-gateway --example policy_bench)
  bin="${CARGO_TARGET_DIR:-target}/release/examples/policy_bench"
  profile="release profile"
else
  export CARGO_PROFILE_DEV_OPT_LEVEL=2 CARGO_PROFILE_DEV_DEBUG=0
  build=(cargo build -p isthmus-gateway --example policy_bench)
  bin="${CARGO_TARGET_DIR:-target}/debug/examples/policy_bench"
  profile="dev profile with CARGO_PROFILE_DEV_OPT_LEVEL=2 (every crate at opt-level 2)"
fi
"${build[@]}"

cpus="$(nproc)"
model="$(grep -m1 'model name' /proc/cpuinfo | cut -d: -f2- | sed 's/^ *//' || true)"
load_before="$(cut -d' ' -f1-3 /proc/loadavg)"
started="$(date -u '+%Y-%m-%d %H:%M UTC')"
rev="$(git rev-parse --short HEAD 2>/dev/null || echo unknown)"

"$bin" --out "$out" "$@"

load_after="$(cut -d' ' -f1-3 /proc/loadavg)"

{
  echo "<!-- policy-bench:start -->"
  echo "## AuthorizationPolicy rules and JWT validation on the inbound path (issue 8)"
  echo
  echo "Run \`gateway/bench/policy.sh\` (about 1.5 minutes plus the build); it"
  echo "rewrites this section. Source: \`gateway/examples/policy_bench/\`."
  echo
  echo "**Setup**: four httpbin sidecars (in-process \`isthmus-gateway\`s) side by"
  echo "side, each configured over a real ADS stream with the inbound listener"
  echo "the control plane's translation makes from Istio YAML (mesh-wide STRICT"
  echo "PeerAuthentication; ServiceEntry + WorkloadEntry): STRICT mTLS with"
  echo "certificates from the identity crate's CA, HTTP connection manager,"
  echo "forwarding to a local hyper echo backend. Configurations: no policy;"
  echo "10 and 100 ALLOW AuthorizationPolicies of one rule each (principal,"
  echo "methods, path) where only the last in evaluation order matches, so every"
  echo "request walks all of them; a RequestAuthentication (RS256, 2048-bit key,"
  echo "inline JWKS) plus one ALLOW rule on \`requestPrincipals\`, so every request's"
  echo "token signature is verified. Before measuring, each sidecar must answer"
  echo "the measured request with 200 and a request its policy denies with 403."
  echo
  echo "**Load**: the same in-process generator for every configuration: N"
  echo "keep-alive HTTP/1.1 connections over mTLS (one SPIFFE client identity), each"
  echo "in a closed loop, \`GET /bench/items\` with the same bearer token in every"
  echo "configuration (only the JWT one checks it). Throughput counts responses"
  echo "inside the measured window; latency is from sending to the last body byte."
  echo "The cost column is the median over rounds of the drop against that round's"
  echo "no-policy run."
  echo
  echo "**Machine**: ${cpus} vCPU (${model:-unknown CPU}), shared by the gateways, the"
  echo "backend and the load generator (all in one process, one tokio runtime)."
  echo "Build: ${profile}. Tree at commit ${rev}, run started ${started}; load average"
  echo "(1/5/15 min) ${load_before} before, ${load_after} after."
  if [[ -n "${NOTE:-}" ]]; then
    echo "${NOTE}"
  fi
  echo
  cat "$out"
  echo
  echo "The numbers are relative: client, proxy and backend compete for the same"
  echo "${cpus} cores, so the absolute req/s says little about a real sidecar; the"
  echo "cost of a configuration is what it adds per request on the proxy."
  echo "<!-- policy-bench:end -->"
} > "$section"

if grep -q '<!-- policy-bench:start -->' "$doc" && grep -q '<!-- policy-bench:end -->' "$doc"; then
  awk -v sec="$section" '
    /<!-- policy-bench:start -->/ { while ((getline line < sec) > 0) print line; skip = 1; next }
    /<!-- policy-bench:end -->/ { skip = 0; next }
    !skip { print }
  ' "$doc" > "$doc.tmp"
  mv "$doc.tmp" "$doc"
else
  { echo; cat "$section"; } >> "$doc"
fi
echo "wrote the policy-bench section of $doc"
