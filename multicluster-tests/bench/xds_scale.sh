#!/bin/sh
# xDS at scale: three real control planes, 1,000 services x 10 endpoints,
# 1,000 simulated sidecars; writes docs/benchmarks.md, section
# "xDS at scale (three clusters, real control planes)". Scale with
# XDS_SCALE_SERVICES, XDS_SCALE_ENDPOINTS, XDS_SCALE_PROXIES,
# XDS_SCALE_ROUNDS and XDS_SCALE_FULL_PUSHES.
set -eu
cd "$(dirname "$0")/../.."
# 1,000 proxies are 1,000 connections on each side: more than the usual
# 1,024 descriptors of the benchmark and of the control plane it starts.
ulimit -n 65536 2>/dev/null || ulimit -n "$(ulimit -Hn)"
# Release build: the test binary lives in target/release, so the harness
# builds and runs the release `isthmus` (multicluster-tests/src/binary.rs),
# unless ISTHMUS_BIN names another binary.
exec cargo test --release -p isthmus-multicluster-tests --test xds_scale_bench -- --ignored --nocapture xds_scale_benchmark
