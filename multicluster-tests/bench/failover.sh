#!/bin/sh
# Runs the disaster-recovery scenario ISTHMUS_BENCH_RUNS times (default 10)
# and writes the results into docs/benchmarks.md, section
# "Failover (disaster recovery)": the HTTP scenario with retries of
# tests/disaster_recovery.rs, at 200 req/s unless ISTHMUS_SCENARIO_RATE says otherwise.
set -eu
cd "$(dirname "$0")/../.."
exec cargo test -p isthmus-multicluster-tests --test failover_bench -- --ignored --nocapture failover_benchmark
