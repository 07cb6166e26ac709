#!/usr/bin/env bash
# End-to-end test of the container image and deploy/ in a kind cluster, through the real API
# server: build the image, load it into kind, install an overlay, and prove with kubectl that
# DaemonSets are denied, patched and left alone as deploy/README.md says.
#
#   bash tests/e2e/kind.sh
#
# Needs docker, kind, kubectl and jq (a GitHub runner has all but kind). Environment:
#   KIND_CLUSTER          an existing kind cluster to use; it is left running, and only what this
#                         script made in it is removed. Unset: a new cluster is created and deleted.
#   KIND_NODE_IMAGE       node image for the cluster this script creates (default: kind's own)
#   CERT_MANAGER=1        install cert-manager and deploy overlays/cert-manager
#                         (default: overlays/self-managed, certificates from `daemonset-webhook certs`)
#   CERT_MANAGER_VERSION  the cert-manager release to install (default v1.20.3)
#   STRICT=1              add deploy/components/strict (failurePolicy Fail, kube-system excluded)
#                         and expect DaemonSet writes to be refused while the webhook is down
#   IMAGE                 the image to test, name:tag (default daemonset-webhook:e2e)
#   BUILD_IMAGE=0         do not build IMAGE: it is already in the local Docker
#   KEEP=1                leave the cluster and the installation in place at exit, for debugging
set -euo pipefail

cd "$(dirname "$0")/../.."

IMAGE=${IMAGE:-daemonset-webhook:e2e}
CERT_MANAGER=${CERT_MANAGER:-0}
CERT_MANAGER_VERSION=${CERT_MANAGER_VERSION:-v1.20.3}
STRICT=${STRICT:-0}
BUILD_IMAGE=${BUILD_IMAGE:-1}
KEEP=${KEEP:-0}

NS=daemonset-webhook                # where the webhook runs
TEST_NS=dsw-e2e                     # where the test DaemonSets go
EXCLUDED_NS=dsw-e2e-excluded        # labelled daemonset-webhook.io/exclude=true
DENIED='admission webhook "mutate.daemonset-webhook.io" denied the request'
# shellcheck disable=SC2016 # the backquotes are part of the API server's message
MISMATCH='`selector` does not match template `labels`'
NEVER='Unsupported value: "Never": supported values: "Always"'

log() { printf '\n==> %s\n' "$*" >&2; }
pass() { printf '    ok: %s\n' "$*" >&2; }
fail() {
  printf '\nFAIL: %s\n' "$*" >&2
  exit 1
}

for tool in docker kind kubectl jq; do
  command -v "$tool" >/dev/null || fail "$tool is not installed"
done
case $IMAGE in
  *:*) ;;
  *) fail "IMAGE must be name:tag, got $IMAGE" ;;
esac

work=$(mktemp -d)
export KUBECONFIG="$work/kubeconfig"  # never touch the user's kubeconfig
created_cluster=""
installed=0

diagnostics() {
  log "diagnostics"
  kubectl get nodes -o wide || true
  kubectl -n "$NS" get all,secrets,configmaps -o wide || true
  kubectl -n "$NS" describe pods || true
  kubectl -n "$NS" logs -l app.kubernetes.io/name=daemonset-webhook --all-containers --tail=100 --prefix || true
  kubectl get mutatingwebhookconfigurations,validatingwebhookconfigurations || true
  kubectl get events -A --sort-by=.lastTimestamp | tail -40 || true
  if [ "$CERT_MANAGER" = 1 ]; then
    kubectl -n "$NS" get issuers,certificates,certificaterequests -o wide || true
    kubectl -n cert-manager logs deploy/cert-manager-cainjector --tail=50 || true
  fi
}

cleanup() {
  local rc=$?
  set +e
  [ "$rc" -eq 0 ] || diagnostics
  if [ "$KEEP" = 1 ]; then
    log "KEEP=1: leaving cluster ${created_cluster:-$KIND_CLUSTER} as it is (kubeconfig: kind get kubeconfig --name ${created_cluster:-$KIND_CLUSTER})"
  elif [ -n "$created_cluster" ]; then
    log "deleting kind cluster $created_cluster"
    kind delete cluster --name "$created_cluster"
  else
    log "removing what the test made in cluster $KIND_CLUSTER"
    kubectl delete namespace "$TEST_NS" "$EXCLUDED_NS" --ignore-not-found --wait=false
    if [ "$installed" = 1 ]; then
      kubectl delete mutatingwebhookconfiguration/daemonset-webhook \
        validatingwebhookconfiguration/daemonset-webhook --ignore-not-found
      kubectl delete namespace "$NS" --ignore-not-found --wait=false
    fi
  fi
  rm -rf "$work"
  exit "$rc"
}
trap cleanup EXIT

# retry ATTEMPTS DELAY COMMAND...: runs COMMAND until it succeeds, at most ATTEMPTS times.
retry() {
  local attempts=$1 delay=$2 i
  shift 2
  for ((i = 1; i <= attempts; i++)); do
    "$@" && return 0
    [ "$i" -lt "$attempts" ] && sleep "$delay"
  done
  return 1
}

# daemonset NAME NAMESPACE SELECTOR_APP LABEL_APP RESTART_POLICY: a DaemonSet manifest.
daemonset() {
  cat <<EOF
apiVersion: apps/v1
kind: DaemonSet
metadata:
  name: $1
  namespace: $2
spec:
  selector:
    matchLabels:
      app: $3
  template:
    metadata:
      labels:
        app: $4
    spec:
      restartPolicy: $5
      containers:
        - name: pause
          image: registry.k8s.io/pause:3.10
EOF
}

# expect_denied WHAT MESSAGE: applies the manifest on stdin; it must be denied by our mutating
# webhook (not only by the API server's built-in validation, which says the same) with MESSAGE.
expect_denied() {
  local out
  if out=$(kubectl apply -f - 2>&1); then
    fail "$1: admitted, expected a denial: $out"
  fi
  grep -qF -- "$DENIED" <<<"$out" || fail "$1: not denied by the webhook: $out"
  grep -qF -- "$2" <<<"$out" || fail "$1: denial lacks '$2': $out"
  pass "$1: $out"
}

# expect_builtin_denial WHAT: the manifest on stdin must be rejected by the API server's own
# validation, without our webhook taking part.
expect_builtin_denial() {
  local out
  if out=$(kubectl apply -f - 2>&1); then
    fail "$1: admitted, expected the API server's own denial: $out"
  fi
  grep -qF -- "$MISMATCH" <<<"$out" || fail "$1: unexpected error: $out"
  if grep -qF 'denied the request' <<<"$out"; then
    fail "$1: the webhook took part: $out"
  fi
  pass "$1: $out"
}

# assert_patched WHAT: the DaemonSet JSON on stdin carries the standard tolerations and resources.
assert_patched() {
  local what=$1 json effect key
  json=$(cat)
  [ -n "$json" ] || fail "$what: no object to check"
  for key in not-ready unreachable disk-pressure memory-pressure pid-pressure unschedulable; do
    case $key in
      not-ready | unreachable) effect=NoExecute ;;
      *) effect=NoSchedule ;;
    esac
    jq -e --arg key "node.kubernetes.io/$key" --arg effect "$effect" \
      '.spec.template.spec.tolerations // [] | any(.key == $key and .operator == "Exists" and .effect == $effect)' \
      <<<"$json" >/dev/null || fail "$what: no toleration $key:$effect: $(jq -c .spec.template.spec.tolerations <<<"$json")"
  done
  jq -e '.spec.template.spec.containers[0].resources
    == {"limits": {"cpu": "500m", "memory": "512Mi"}, "requests": {"cpu": "50m", "memory": "64Mi"}}' \
    <<<"$json" >/dev/null || fail "$what: resources are $(jq -c '.spec.template.spec.containers[0].resources' <<<"$json")"
  pass "$what: six standard tolerations, limits 500m/512Mi, requests 50m/64Mi"
}

# assert_untouched WHAT: the DaemonSet JSON on stdin has neither tolerations nor resources.
assert_untouched() {
  local json
  json=$(cat)
  [ -n "$json" ] || fail "$1: no object to check"
  jq -e '(.spec.template.spec.tolerations // []) == [] and (.spec.template.spec.containers[0].resources // {}) == {}' \
    <<<"$json" >/dev/null || fail "$1: was patched: $(jq -c .spec.template.spec <<<"$json")"
  pass "$1: stored as written, no tolerations, no resources"
}

# --- the cluster -----------------------------------------------------------------------------
if [ -n "${KIND_CLUSTER:-}" ]; then
  cluster=$KIND_CLUSTER
  log "using kind cluster $cluster"
  kind get kubeconfig --name "$cluster" >"$KUBECONFIG"
else
  cluster="dsw-e2e-$$"
  log "creating kind cluster $cluster"
  created_cluster=$cluster
  kind create cluster --name "$cluster" --kubeconfig "$KUBECONFIG" --wait 180s \
    ${KIND_NODE_IMAGE:+--image "$KIND_NODE_IMAGE"}
fi
kubectl version

# --- the image -------------------------------------------------------------------------------
if [ "$BUILD_IMAGE" != 0 ]; then
  log "building $IMAGE"
  docker build -t "$IMAGE" .
fi
log "loading $IMAGE into kind"
kind load docker-image "$IMAGE" --name "$cluster"

# --- the manifests: a copy of deploy/, so certificates never land in the work tree ------------
cp -R deploy "$work/deploy"
if [ "$CERT_MANAGER" = 1 ]; then
  overlay=cert-manager
  log "installing cert-manager $CERT_MANAGER_VERSION"
  kubectl apply -f "https://github.com/cert-manager/cert-manager/releases/download/$CERT_MANAGER_VERSION/cert-manager.yaml"
  kubectl -n cert-manager wait --for=condition=Available deployment --all --timeout=300s
else
  overlay=self-managed
  certs="$work/deploy/overlays/self-managed/certs"
  rm -rf "$certs" && mkdir -p "$certs"
  log "generating certificates with the image: daemonset-webhook certs"
  docker run --rm --user "$(id -u):$(id -g)" -v "$certs:/certs" "$IMAGE" certs --out-dir /certs
fi

# An overlay of the overlay that points the Deployment at the image under test (and, with
# STRICT=1, adds the strict component the way deploy/README.md shows).
mkdir "$work/e2e"
cat >"$work/e2e/kustomization.yaml" <<EOF
apiVersion: kustomize.config.k8s.io/v1beta1
kind: Kustomization
resources:
  - ../deploy/overlays/$overlay
images:
  - name: daemonset-webhook
    newName: ${IMAGE%:*}
    newTag: ${IMAGE##*:}
EOF
what="overlays/$overlay"
if [ "$STRICT" = 1 ]; then
  printf 'components:\n  - ../deploy/components/strict\n' >>"$work/e2e/kustomization.yaml"
  what="$what with components/strict"
fi

log "installing $what"
installed=1
# cert-manager's own webhook may need a few more seconds before it admits Issuers.
retry 30 5 kubectl apply -k "$work/e2e" || fail "kubectl apply -k $what kept failing"
if [ "$CERT_MANAGER" = 1 ]; then
  kubectl -n "$NS" wait --for=condition=Ready certificate/daemonset-webhook-serving --timeout=180s
fi
kubectl -n "$NS" rollout status deployment/daemonset-webhook --timeout=300s

# Both webhook configurations must trust the CA that signed the serving certificate (with
# cert-manager, once its CA injector has filled caBundle in).
ca_bundles_match() {
  local want kind got
  want=$(kubectl -n "$NS" get secret daemonset-webhook-tls -o jsonpath='{.data.ca\.crt}')
  [ -n "$want" ] || return 1
  for kind in mutatingwebhookconfiguration validatingwebhookconfiguration; do
    got=$(kubectl get "$kind" daemonset-webhook -o jsonpath='{.webhooks[0].clientConfig.caBundle}')
    [ "$got" = "$want" ] || return 1
  done
}
retry 60 2 ca_bundles_match || fail "caBundle never matched the Secret's ca.crt"
pass "both webhook configurations carry the serving certificate's CA"

for namespace in "$TEST_NS" "$EXCLUDED_NS"; do
  kubectl create namespace "$namespace" --dry-run=client -o yaml | kubectl apply -f -
done
kubectl label namespace "$EXCLUDED_NS" daemonset-webhook.io/exclude=true --overwrite

# The API server reaches the webhook through its Service a moment after the pods are ready; with
# failurePolicy Ignore a call that fails is silently skipped, so wait until a review happens.
webhook_answers() {
  daemonset warmup "$TEST_NS" warmup warmup Always |
    kubectl apply --dry-run=server -o json -f - 2>/dev/null |
    jq -e '.spec.template.spec.tolerations // [] | length > 0' >/dev/null
}
retry 60 2 webhook_answers || fail "the API server never got an answer from the webhook"
pass "the API server reaches the webhook"

# --- denials ---------------------------------------------------------------------------------
log "a DaemonSet whose selector does not select its template's labels is denied"
daemonset mismatch "$TEST_NS" mismatch other Always | expect_denied "selector mismatch" "$MISMATCH"

log "a DaemonSet with restartPolicy Never is denied"
daemonset never "$TEST_NS" never never Never | expect_denied "restartPolicy Never" "$NEVER"

# --- mutation --------------------------------------------------------------------------------
log "a plain DaemonSet is stored with the standard tolerations and default resources"
out=$(daemonset plain "$TEST_NS" plain plain Always | kubectl apply -f - 2>&1) || fail "apply plain: $out"
printf '%s\n' "$out" >&2
kubectl -n "$TEST_NS" get daemonset plain -o json | assert_patched "stored DaemonSet plain"
generation=$(kubectl -n "$TEST_NS" get daemonset plain -o jsonpath='{.metadata.generation}')

log "applying it again changes nothing"
# Client-side apply finds nothing to send (the patched fields are not in last-applied)...
out=$(daemonset plain "$TEST_NS" plain plain Always | kubectl apply -f - 2>&1) || fail "re-apply plain: $out"
grep -q 'unchanged' <<<"$out" || fail "re-apply was not 'unchanged': $out"
pass "kubectl apply: $out"
# ...server-side apply sends the manifest, which the webhook reviews: still no change.
out=$(daemonset plain "$TEST_NS" plain plain Always | kubectl apply --server-side --force-conflicts -f - 2>&1) \
  || fail "server-side re-apply plain: $out"
after=$(kubectl -n "$TEST_NS" get daemonset plain -o jsonpath='{.metadata.generation}')
[ "$after" = "$generation" ] || fail "server-side apply moved the generation from $generation to $after"
kubectl -n "$TEST_NS" get daemonset plain -o json | assert_patched "DaemonSet plain after server-side apply"
pass "kubectl apply --server-side: $out; generation stays $generation"

log "writing the stored object back (an UPDATE the webhook reviews) changes nothing"
kubectl -n "$TEST_NS" get daemonset plain -o json | kubectl replace -f - >/dev/null
after=$(kubectl -n "$TEST_NS" get daemonset plain -o jsonpath='{.metadata.generation}')
[ "$after" = "$generation" ] || fail "generation went from $generation to $after: the webhook patched a complete DaemonSet"
pass "generation stays $generation"

log "kubectl apply --dry-run=server shows the patched object and stores nothing"
daemonset dry "$TEST_NS" dry dry Always |
  kubectl apply --dry-run=server -o json -f - | assert_patched "server-side dry run"
if kubectl -n "$TEST_NS" get daemonset dry >/dev/null 2>&1; then
  fail "the dry run stored DaemonSet dry"
fi
pass "nothing stored"

# --- the opt-out label -----------------------------------------------------------------------
log "a namespace labelled daemonset-webhook.io/exclude=true is left alone"
daemonset plain "$EXCLUDED_NS" plain plain Always | kubectl apply -f - >/dev/null
kubectl -n "$EXCLUDED_NS" get daemonset plain -o json | assert_untouched "DaemonSet in $EXCLUDED_NS"
daemonset mismatch "$EXCLUDED_NS" mismatch other Always |
  expect_builtin_denial "selector mismatch in $EXCLUDED_NS (the API server's own validation)"

# --- failurePolicy ---------------------------------------------------------------------------
kubectl -n "$NS" scale deployment/daemonset-webhook --replicas=0
kubectl -n "$NS" wait --for=delete pod -l app.kubernetes.io/name=daemonset-webhook --timeout=120s
if [ "$STRICT" = 1 ]; then
  log "with no webhook pod running, DaemonSet writes are refused (failurePolicy Fail)"
  if out=$(daemonset open "$TEST_NS" open open Always | kubectl apply -f - 2>&1); then
    fail "DaemonSet open was admitted during the outage: $out"
  fi
  grep -qF 'failed calling webhook "mutate.daemonset-webhook.io"' <<<"$out" ||
    fail "unexpected error during the outage: $out"
  pass "refused: $out"
  log "... except in kube-system, which the strict component excludes"
  daemonset dsw-e2e-open kube-system dsw-e2e-open dsw-e2e-open Always | kubectl apply -f - >/dev/null
  kubectl -n kube-system get daemonset dsw-e2e-open -o json | assert_untouched "DaemonSet kube-system/dsw-e2e-open"
  kubectl -n kube-system delete daemonset dsw-e2e-open
else
  log "with no webhook pod running, DaemonSet writes go on (failurePolicy Ignore)"
  start=$SECONDS
  daemonset open "$TEST_NS" open open Always | kubectl apply -f - >/dev/null
  kubectl -n "$TEST_NS" get daemonset open -o json | assert_untouched "DaemonSet open, written during the outage"
  pass "admitted after $((SECONDS - start)) s"
  daemonset mismatch2 "$TEST_NS" mismatch2 other Always |
    expect_builtin_denial "selector mismatch during the outage (the API server's own validation)"
fi
kubectl -n "$NS" scale deployment/daemonset-webhook --replicas=2
kubectl -n "$NS" rollout status deployment/daemonset-webhook --timeout=300s
retry 60 2 webhook_answers || fail "the webhook did not come back"
if [ "$STRICT" = 1 ]; then
  log "once the webhook is back, the refused DaemonSet can be written"
  daemonset open "$TEST_NS" open open Always | kubectl apply -f - >/dev/null
else
  log "the next write of DaemonSet open adds what the outage missed"
  kubectl -n "$TEST_NS" label daemonset open touched=yes >/dev/null
fi
kubectl -n "$TEST_NS" get daemonset open -o json | assert_patched "DaemonSet open"

# --- reloads ---------------------------------------------------------------------------------
if [ "$CERT_MANAGER" = 1 ]; then
  log "a changed policy is taken up without new pods"
else
  log "a changed policy and new certificates are taken up without new pods"
fi
pods=$(kubectl -n "$NS" get pods -l app.kubernetes.io/name=daemonset-webhook -o jsonpath='{.items[*].metadata.uid}')
sed -i 's/cpu: 500m/cpu: 400m/' "$work/deploy/base/policy.yaml"
if [ "$CERT_MANAGER" != 1 ]; then
  # A new CA and certificate: once the API server trusts only the new CA, a review that
  # succeeds proves the pods serve the new certificate.
  docker run --rm --user "$(id -u):$(id -g)" -v "$certs:/certs" "$IMAGE" certs --out-dir /certs --force
fi
kubectl apply -k "$work/e2e"
start=$SECONDS
new_policy_answers() {
  daemonset reload "$TEST_NS" reload reload Always |
    kubectl apply --dry-run=server -o json -f - 2>/dev/null |
    jq -e '.spec.template.spec.containers[0].resources.limits.cpu == "400m"' >/dev/null
}
retry 120 2 new_policy_answers || fail "the webhook never answered with the new policy"
after=$(kubectl -n "$NS" get pods -l app.kubernetes.io/name=daemonset-webhook -o jsonpath='{.items[*].metadata.uid}')
[ "$after" = "$pods" ] || fail "the pods were replaced ($pods -> $after)"
restarts=$(kubectl -n "$NS" get pods -l app.kubernetes.io/name=daemonset-webhook -o json |
  jq '[.items[].status.containerStatuses[].restartCount] | add')
[ "$restarts" = 0 ] || fail "webhook containers restarted $restarts times"
pass "taken up after $((SECONDS - start)) s by the same pods, no restarts"

# --- uninstall, as deploy/README.md says: webhook configurations first ------------------------
log "uninstalling"
kubectl delete mutatingwebhookconfiguration/daemonset-webhook validatingwebhookconfiguration/daemonset-webhook
kubectl delete namespace "$NS" --timeout=180s
installed=0
left=$(kubectl get mutatingwebhookconfigurations,validatingwebhookconfigurations -o name | grep daemonset-webhook || true)
[ -z "$left" ] || fail "webhook configurations left behind: $left"
if kubectl get namespace "$NS" >/dev/null 2>&1; then
  fail "namespace $NS still exists"
fi
pass "no webhook configuration and no namespace $NS left"

log "all end-to-end checks passed ($what)"
