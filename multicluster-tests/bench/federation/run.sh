#!/bin/sh
# Federation registry vs etcd: throughput, commit latency p50/p99 (1 and
# 1,000 concurrent writers) and the ack gap when the leader is killed with
# SIGKILL, for a 3-member cluster of each on loopback, in one run.
# Results: stdout, and the Markdown table in $BENCH_OUT (default
# target/registry_vs_etcd.md). Takes about 2 minutes plus the build.
set -eu
cd "$(dirname "$0")/../../.."
if ! command -v etcd >/dev/null || ! command -v etcdctl >/dev/null; then
    echo "installing etcd (Debian etcd-server, etcd-client)" >&2
    apt-get update -qq && apt-get install -y -qq etcd-server etcd-client >/dev/null
fi
# The Debian package starts a system etcd on 2379/2380; the benchmark uses
# its own ports and data directories, so that one may keep running.
export BENCH_OUT="${BENCH_OUT:-$PWD/target/registry_vs_etcd.md}"
export BENCH_SECS="${BENCH_SECS:-8}"
mkdir -p "$(dirname "$BENCH_OUT")"
exec cargo bench -p isthmus-federation --bench registry_vs_etcd
