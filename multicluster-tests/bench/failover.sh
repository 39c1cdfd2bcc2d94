#!/bin/sh
# Runs the disaster-recovery scenario ISTHMUS_BENCH_RUNS times (default 10)
# and writes the results into docs/benchmarks.md, section
# "Failover (disaster recovery)". ISTHMUS_SCENARIO_RATE sets the load (req/s).
set -eu
cd "$(dirname "$0")/../.."
exec cargo test -p isthmus-multicluster-tests --test failover_bench -- --ignored --nocapture failover_benchmark
