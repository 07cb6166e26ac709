#!/usr/bin/env bash
# Soak: drive the release build for minutes with a real load tool and watch errors, latency and
# memory over time (memory must stay flat).
#   scripts/soak.sh [DURATION] [CONNECTIONS]     default: 5m, 16 connections (DURATION as oha's -z: 30s, 5m, 1h)
# Needs oha (`cargo install oha`), jq, curl. Mixes reviews that patch, deny and pass
# (create-plain, create-several-violations, create-complete) over HTTP/1.1 keep-alive, as the
# API server calls, and samples the server's resident memory every 10 seconds.
set -euo pipefail
cd "$(dirname "$0")/.."
duration=${1:-5m}
connections=${2:-16}
command -v oha >/dev/null || { echo "needs oha: cargo install oha" >&2; exit 2; }
command -v jq >/dev/null || { echo "needs jq" >&2; exit 2; }

cargo build --release --locked --bin daemonset-webhook >/dev/null
work=$(mktemp -d)
server_pid=
sampler_pid=
cleanup() {
  [ -n "$sampler_pid" ] && kill "$sampler_pid" 2>/dev/null
  [ -n "$server_pid" ] && kill "$server_pid" 2>/dev/null && wait "$server_pid" 2>/dev/null
  rm -rf "$work"
}
trap cleanup EXIT

binary=$(realpath target/release/daemonset-webhook)
(cd "$work" && exec "$binary" --listen 127.0.0.1:0 --log-format json 2>server.log) &
server_pid=$!
for _ in $(seq 1 100); do
  grep -q 'listening on https://' "$work/server.log" 2>/dev/null && break
  sleep 0.1
done
port=$(grep -oE 'listening on https://127\.0\.0\.1:[0-9]+' "$work/server.log" | grep -oE '[0-9]+$')
url=https://localhost:$port

rss() { awk '/VmRSS/ {print $2}' "/proc/$server_pid/status"; }
echo "seconds,rss_kib" >"$work/memory.csv"
start=$(date +%s)
(
  while kill -0 "$server_pid" 2>/dev/null; do
    echo "$(($(date +%s) - start)),$(rss)" >>"$work/memory.csv"
    sleep 10
  done
) &
sampler_pid=$!

echo "soak: $duration, ${connections} connections per fixture, against $url (pid $server_pid)"
pids=()
for fixture in create-plain create-several-violations create-complete; do
  oha --no-tui -z "$duration" -c "$connections" -m POST -H 'Content-Type: application/json' \
    -D "tests/fixtures/$fixture.json" --cacert "$work/certs/ca.crt" --output-format json \
    "$url/mutate" >"$work/$fixture.json" &
  pids+=($!)
done
for pid in "${pids[@]}"; do wait "$pid"; done
echo "$(($(date +%s) - start)),$(rss)" >>"$work/memory.csv"

# oha counts the requests still in flight when the duration ends as "aborted due to deadline":
# those are cut by the load tool, not failed by the server.
for fixture in create-plain create-several-violations create-complete; do
  jq -r --arg f "$fixture" '
    "\($f): \(.summary.total // 0 | floor) s, \(.summary.requestsPerSec | floor) req/s, success rate \(.summary.successRate * 100 | . * 100 | round / 100)%, " +
    "p50 \(.latencyPercentiles.p50 * 1000 | . * 1000 | round / 1000) ms, p99 \(.latencyPercentiles.p99 * 1000 | . * 1000 | round / 1000) ms, " +
    "p99.9 \(.latencyPercentiles["p99.9"] * 1000 | . * 1000 | round / 1000) ms, status codes \(.statusCodeDistribution | tostring), errors \(.errorDistribution | tostring)"
  ' "$work/$fixture.json"
done
curl -sS --cacert "$work/certs/ca.crt" "$url/metrics" |
  grep -E '^controller_runtime_webhook_requests_total|^controller_runtime_webhook_panics_total' || true
echo "memory (resident KiB) over time:"
column -t -s, "$work/memory.csv"
awk -F, 'NR == 2 {first = $2} NR > 1 {last = $2; if ($2 > max) max = $2; if (min == "" || $2 < min) min = $2}
  END {printf "memory: first %d KiB, last %d KiB, min %d KiB, max %d KiB\n", first, last, min, max}' "$work/memory.csv"
