#!/usr/bin/env bash
# Conformance against an independent client: ../shared/tools/apiserver-standin calls the webhook
# the way kube-apiserver's dispatcher does (HTTP/1.1 keep-alive over verified TLS, ?timeout=10s,
# uid check, base64 patch applied with evanphx/json-patch, reinvocation on the patched object,
# then the validating call). Every apps/v1 DaemonSet of the corpus must be allowed, its patch
# must apply, and the reinvocation must ask for nothing more; the invalid fixtures must be denied.
#
# Usage: tests/conformance/apiserver-standin.sh [path/to/daemonset-webhook]
# Needs: go with evanphx/json-patch (Debian: golang-go golang-github-evanphx-json-patch-dev),
# python3 with PyYAML, jq, curl. .ci/run installs them.
set -euo pipefail

repo=$(cd "$(dirname "$0")/../.." && pwd)
binary=${1:-$repo/target/debug/daemonset-webhook}
standin=${STANDIN_DIR:-$repo/../shared/tools/apiserver-standin}
[ -x "$binary" ] || { echo "no webhook binary at $binary (run cargo build first)" >&2; exit 2; }
binary=$(realpath "$binary")
[ -x "$standin/run.sh" ] || { echo "no apiserver-standin at $standin" >&2; exit 2; }

work=$(mktemp -d)
server_pid=
cleanup() {
  [ -n "$server_pid" ] && kill "$server_pid" 2>/dev/null && wait "$server_pid" 2>/dev/null
  rm -rf "$work"
}
trap cleanup EXIT

# Start on a free port with a freshly generated development CA (the binary's own default).
(cd "$work" && exec "$binary" --listen 127.0.0.1:0 2>server.log) &
server_pid=$!
for _ in $(seq 1 100); do
  grep -q 'listening on https://' "$work/server.log" 2>/dev/null && break
  sleep 0.1
done
url=$(grep -o 'listening on https://[0-9.:]*' "$work/server.log" | head -1 | sed 's/listening on //')
[ -n "$url" ] || { cat "$work/server.log" >&2; echo "server did not start" >&2; exit 1; }
port=${url##*:}

# Corpus DaemonSets (apps/v1) and the fixtures' objects, as JSON files.
mkdir -p "$work/allowed" "$work/denied"
python3 - "$repo" "$work" <<'PY'
import glob, json, os, sys
import yaml
repo, work = sys.argv[1], sys.argv[2]
for path in sorted(glob.glob(os.path.join(repo, "tests/corpus/daemonsets/*.yaml"))):
    obj = yaml.safe_load(open(path))
    if obj.get("apiVersion") == "apps/v1":
        name = os.path.basename(path)[:-5]
        json.dump(obj, open(os.path.join(work, "allowed", name + ".json"), "w"))
for path in sorted(glob.glob(os.path.join(repo, "tests/fixtures/*.json"))):
    review = json.load(open(path))
    request = review.get("request") or {}
    obj = request.get("object")
    if request.get("kind", {}).get("kind") != "DaemonSet" or not obj:
        continue
    name = os.path.basename(path)
    expect = "denied" if any(w in name for w in ("mismatch", "empty-selector", "restart", "violations", "invalid")) else "allowed"
    json.dump(obj, open(os.path.join(work, expect, "fixture-" + name), "w"))
PY

failures=0
run() {
  "$standin/run.sh" -mutate "https://localhost:$port/mutate" -validate "https://localhost:$port/validate" \
    -ca "$work/certs/ca.crt" -server-name localhost "$@"
}
for proto in h1 h2; do
  flags=()
  [ "$proto" = h2 ] && flags=(-h2)
  run "${flags[@]}" "$work"/allowed/*.json > "$work/allowed-$proto.jsonl"
  run "${flags[@]}" "$work"/denied/*.json > "$work/denied-$proto.jsonl"
  allowed=$(wc -l < "$work/allowed-$proto.jsonl")
  bad=$(jq -c 'select(.allowed != true or .reinvokeOps != 0 or .error != null) | {file, allowed, reinvokeOps, error, message}' "$work/allowed-$proto.jsonl")
  if [ -n "$bad" ]; then echo "$proto: not allowed cleanly:"; echo "$bad"; failures=$((failures + 1)); fi
  wrong=$(jq -c 'select(.allowed != false or .code != 422 or .patchOps != 0) | {file, allowed, code, patchOps, error}' "$work/denied-$proto.jsonl")
  if [ -n "$wrong" ]; then echo "$proto: not denied as expected:"; echo "$wrong"; failures=$((failures + 1)); fi
  protos=$(jq -r .proto "$work/allowed-$proto.jsonl" | sort -u | tr '\n' ' ')
  patched=$(jq -s 'map(select(.patchOps > 0)) | length' "$work/allowed-$proto.jsonl")
  denied=$(wc -l < "$work/denied-$proto.jsonl")
  echo "apiserver-standin ($proto, $protos): $allowed allowed ($patched patched, reinvocation clean), $denied denied"
done
[ "$failures" -eq 0 ] || { echo "apiserver-standin conformance FAILED" >&2; exit 1; }
