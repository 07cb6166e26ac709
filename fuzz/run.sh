#!/usr/bin/env bash
# Fuzz the webhook with libFuzzer (cargo fuzz), seeded from the test fixtures and the corpus.
#   fuzz/run.sh [review|manifest] [SECONDS]     default: review, 600
# Needs cargo-fuzz (`cargo install cargo-fuzz`). Runs on stable Rust: no sanitizer (-s none),
# coverage-guided all the same; the targets check their own invariants, not only "no panic".
# Findings land in fuzz/artifacts/<target>/; the growing corpus in fuzz/corpus/<target>/.
set -euo pipefail
cd "$(dirname "$0")/.."
target=${1:-review}
seconds=${2:-600}
seeds=fuzz/corpus/$target
mkdir -p "$seeds"
case "$target" in
  review) cp tests/fixtures/*.json "$seeds/" ;;
  manifest) cp tests/corpus/daemonsets/*.yaml tests/check/*.yaml "$seeds/" ;;
  *) echo "unknown target $target (review, manifest)" >&2; exit 2 ;;
esac
exec cargo fuzz run "$target" -s none "$seeds" -- -max_total_time="$seconds" -timeout=10 -rss_limit_mb=2048
