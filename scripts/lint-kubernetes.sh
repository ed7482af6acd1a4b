#!/usr/bin/env bash
# Offline checks of the Kubernetes manifests (no cluster needed):
#   1. render the kustomize base with `kubectl kustomize deploy/kubernetes`;
#   2. validate every rendered object, and the log-reader tool pod, against the Kubernetes
#      JSON schemas in strict mode (unknown fields are errors) for each version in
#      K8S_VERSIONS (`kubernetes-validate` ships the schemas);
#   3. check the Pod Security Standard "restricted" and the service's own contract field by
#      field (the Python below), failing on the first list of misses; among them, that the
#      log claim holds what rotation and retention let the pods write;
#   4. run checkov on the same files: nothing may fail; each skip is a `checkov.io/skipN`
#      annotation on its object carrying its one-line reason, printed below;
#   5. render the monitoring overlay (deploy/prometheus/kubernetes) and check its PodMonitor
#      and PrometheusRule against the base and deploy/prometheus/rules.yml;
#   6. render the shipping overlay (deploy/shipping/kubernetes): schemas and checkov.
# Each check is then run against broken copies of the rendered output and must fail on
# each of them, so a checker that passes everything cannot pass this script.
#
# Usage: scripts/lint-kubernetes.sh
# Needs: kubectl (with `kubectl kustomize`), python3 with PyYAML, and from pip:
#   kubernetes-validate, checkov. It installs nothing.
# Environment: K8S_VERSIONS (default "1.32.0 1.37.0"), KUBECTL (default kubectl).
set -euo pipefail
# shellcheck source=scripts/lib.sh
. "$(dirname "${BASH_SOURCE[0]}")/lib.sh"
cd "$(dirname "$0")/.."

base=deploy/kubernetes
tools_pod=deploy/kubernetes/tools/log-reader.yaml
monitoring=deploy/prometheus/kubernetes
rules=deploy/prometheus/rules.yml
shipping=deploy/shipping/kubernetes
versions=${K8S_VERSIONS:-1.32.0 1.37.0}
kubectl=${KUBECTL:-kubectl}


# ---- tools ----------------------------------------------------------------------------------
missing=()
command -v "$kubectl" >/dev/null || missing+=("kubectl, with its kustomize subcommand (a binary, not a pip package)")
python3 -c 'import yaml' 2>/dev/null || missing+=("PyYAML for python3 (pip install pyyaml)")
command -v kubernetes-validate >/dev/null || missing+=("kubernetes-validate (pip install kubernetes-validate)")
command -v checkov >/dev/null || missing+=("checkov (pip install checkov)")
if [ "${#missing[@]}" -gt 0 ]; then
  for m in "${missing[@]}"; do echo "FAIL missing tool: $m" >&2; done
  exit 1
fi

work=$(mktemp -d)
trap 'rm -rf "$work"' EXIT

# ---- the field check (Python) ---------------------------------------------------------------
# Usage: python3 -c "$field_check" FILE...   Exit 0 when every rule holds, 1 with the misses.
read -r -d '' field_check <<'PY' || true
import re, sys
import yaml

docs = []
for path in sys.argv[1:]:
    with open(path) as f:
        docs += [d for d in yaml.safe_load_all(f) if d]

misses = []
def need(cond, where, what):
    if not cond:
        misses.append(f"{where}: {what}")

def get(obj, *keys, default=None):
    for k in keys:
        if not isinstance(obj, dict) or k not in obj:
            return default
        obj = obj[k]
    return obj

def seconds(s):
    m = re.fullmatch(r"(\d+)(ms|s|m)?", str(s).strip())
    if not m:
        return None
    n, unit = int(m.group(1)), m.group(2) or "s"
    return n / 1000 if unit == "ms" else n * 60 if unit == "m" else n

def quantity(q):
    """CPU in cores or memory in bytes from a Kubernetes quantity."""
    m = re.fullmatch(r"([0-9.]+)(m|Ki|Mi|Gi|k|M|G)?", str(q))
    if not m:
        return None
    mult = {None: 1, "m": 1e-3, "Ki": 2**10, "Mi": 2**20, "Gi": 2**30,
            "k": 1e3, "M": 1e6, "G": 1e9}[m.group(2)]
    return float(m.group(1)) * mult

by_kind = {}
for d in docs:
    by_kind.setdefault(d.get("kind"), []).append(d)

def one(kind):
    items = by_kind.get(kind, [])
    need(len(items) == 1, kind, f"exactly one expected, found {len(items)}")
    return items[0] if items else {}

# Namespace: Pod Security Admission enforces, audits and warns "restricted".
ns = one("Namespace")
ns_name = get(ns, "metadata", "name")
labels = get(ns, "metadata", "labels", default={}) or {}
for mode in ("enforce", "audit", "warn"):
    need(labels.get(f"pod-security.kubernetes.io/{mode}") == "restricted",
         f"Namespace/{ns_name}", f"label pod-security.kubernetes.io/{mode}=restricted")
for d in docs:
    if d.get("kind") not in ("Namespace",) and not d.get("kind", "").startswith("Cluster"):
        need(get(d, "metadata", "namespace") == ns_name,
             f"{d.get('kind')}/{get(d, 'metadata', 'name')}", f"in namespace {ns_name}")

# Every pod template, whatever object carries it.
def pod_specs():
    for d in docs:
        kind, name = d.get("kind"), get(d, "metadata", "name")
        if kind == "Pod":
            yield d, f"Pod/{name}", d.get("spec") or {}, False
        elif kind in ("Deployment", "StatefulSet", "DaemonSet", "ReplicaSet", "Job"):
            yield d, f"{kind}/{name}", get(d, "spec", "template", "spec", default={}), kind != "Job"
        elif kind == "CronJob":
            yield d, f"CronJob/{name}", get(d, "spec", "jobTemplate", "spec", "template", "spec", default={}), False

UID = 10001
pods = list(pod_specs())
need(pods, "manifests", "at least one pod template")
for obj, where, spec, serving in pods:
    psc = spec.get("securityContext") or {}
    need(psc.get("runAsNonRoot") is True, where, "pod securityContext.runAsNonRoot: true")
    need(psc.get("runAsUser") == UID, where, f"pod securityContext.runAsUser: {UID}")
    need(psc.get("runAsGroup") == UID, where, f"pod securityContext.runAsGroup: {UID}")
    need(get(psc, "seccompProfile", "type") == "RuntimeDefault", where,
         "pod securityContext.seccompProfile.type: RuntimeDefault")
    for field in ("hostNetwork", "hostPID", "hostIPC"):
        need(not spec.get(field), where, f"no {field}")
    need(spec.get("automountServiceAccountToken") is False, where,
         "automountServiceAccountToken: false")
    need(not spec.get("initContainers"), where, "no init container")
    need(not spec.get("ephemeralContainers"), where, "no ephemeral container in the manifest")
    volumes = spec.get("volumes") or []
    for v in volumes:
        need("hostPath" not in v, where, f"volume {v.get('name')}: no hostPath")
    writable = [m for c in spec.get("containers") or [] for m in c.get("volumeMounts") or []
                if not m.get("readOnly")]
    if writable:
        # Writable volumes get their ownership from fsGroup, not from a root init container.
        need(psc.get("fsGroup") == UID, where, f"pod securityContext.fsGroup: {UID}")
        need(psc.get("fsGroupChangePolicy") == "OnRootMismatch", where,
             "pod securityContext.fsGroupChangePolicy: OnRootMismatch")
    containers = spec.get("containers") or []
    need(containers, where, "at least one container")
    for c in containers:
        cw = f"{where} container {c.get('name')}"
        sc = c.get("securityContext") or {}
        need(sc.get("runAsNonRoot") is True, cw, "securityContext.runAsNonRoot: true")
        need(sc.get("runAsUser") == UID, cw, f"securityContext.runAsUser: {UID}")
        need(sc.get("runAsGroup") == UID, cw, f"securityContext.runAsGroup: {UID}")
        need(sc.get("allowPrivilegeEscalation") is False, cw,
             "securityContext.allowPrivilegeEscalation: false")
        need(not sc.get("privileged"), cw, "not privileged")
        need(sc.get("readOnlyRootFilesystem") is True, cw,
             "securityContext.readOnlyRootFilesystem: true")
        need("ALL" in (get(sc, "capabilities", "drop", default=[]) or []), cw,
             "securityContext.capabilities.drop: [ALL]")
        need(not get(sc, "capabilities", "add"), cw, "no capabilities added")
        need(get(sc, "seccompProfile", "type") == "RuntimeDefault", cw,
             "securityContext.seccompProfile.type: RuntimeDefault")
        for p in c.get("ports") or []:
            need("hostPort" not in p, cw, f"port {p.get('containerPort')}: no hostPort")
        for kind in ("requests", "limits"):
            for res in ("cpu", "memory"):
                need(get(c, "resources", kind, res) is not None, cw, f"resources.{kind}.{res}")
        image = c.get("image", "")
        tag = image.rsplit("/", 1)[-1]
        need(("@sha256:" in image) or (":" in tag and not tag.endswith(":latest")), cw,
             f"image pinned by tag or digest (got {image!r})")
        if serving:
            for probe in ("startupProbe", "readinessProbe", "livenessProbe"):
                need(c.get(probe), cw, f"{probe} present")

# The api Deployment: the service's contract with the orchestrator.
dep = one("Deployment")
dw = f"Deployment/{get(dep, 'metadata', 'name')}"
spec = dep.get("spec") or {}
need(spec.get("replicas") == 3, dw, "replicas: 3")
need(get(spec, "strategy", "type") == "RollingUpdate", dw, "strategy RollingUpdate")
need(get(spec, "strategy", "rollingUpdate", "maxUnavailable") == 0, dw, "maxUnavailable: 0")
need(get(spec, "strategy", "rollingUpdate", "maxSurge") == 1, dw, "maxSurge: 1")
pod = get(spec, "template", "spec", default={})
need(any(t.get("topologyKey") == "kubernetes.io/hostname"
         for t in pod.get("topologySpreadConstraints") or []),
     dw, "topologySpreadConstraints across kubernetes.io/hostname")
api = next((c for c in pod.get("containers") or [] if c.get("name") == "api"), {})
need(api, dw, "a container named api")
env = {e.get("name"): e.get("value") for e in api.get("env") or []}
drain, grace = seconds(env.get("DRAIN_DELAY", "")), seconds(env.get("GRACE", "5s"))
need(drain is not None and drain > 0, dw, "DRAIN_DELAY set (a duration above 0)")
tgp = pod.get("terminationGracePeriodSeconds")
if drain is not None and grace is not None:
    need(isinstance(tgp, int) and tgp >= drain + grace + 5, dw,
         f"terminationGracePeriodSeconds >= DRAIN_DELAY + GRACE + 5s margin "
         f"({drain:g} + {grace:g} + 5; got {tgp})")
need("{hostname}" in (env.get("LOG_FILE") or ""), dw, "LOG_FILE with the {hostname} placeholder")
need(env.get("HOST") in (None, "::"), dw, "HOST unset or :: (dual stack)")
def http_get(probe):
    return get(api, probe, "httpGet", default={}) or {}
need(http_get("readinessProbe").get("path") == "/health", dw, "readinessProbe httpGet /health")
need(http_get("livenessProbe").get("path") == "/", dw, "livenessProbe httpGet /")
need(http_get("startupProbe").get("path") is not None, dw, "startupProbe httpGet")
ports = api.get("ports") or []
need(any(p.get("containerPort") == 8000 and p.get("name") == "http" for p in ports), dw,
     "containerPort 8000 named http")
mem_limit = quantity(get(api, "resources", "limits", "memory", default=""))
need(mem_limit is not None and 16 * 2**20 <= mem_limit <= 128 * 2**20, dw,
     "memory limit of 16 MiB to 128 MiB (compose's limit)")
mounts = {m.get("mountPath"): m.get("name") for m in api.get("volumeMounts") or []}
claims = {v.get("name"): get(v, "persistentVolumeClaim", "claimName") for v in pod.get("volumes") or []}
need(claims.get(mounts.get("/app/logs")), dw, "/app/logs mounted from a PersistentVolumeClaim")
pvcs = {get(p, "metadata", "name"): p for p in by_kind.get("PersistentVolumeClaim", [])}
pvc = pvcs.get(claims.get(mounts.get("/app/logs")), {})
need("ReadWriteMany" in (get(pvc, "spec", "accessModes", default=[]) or []),
     "PersistentVolumeClaim", "the log claim is ReadWriteMany")

# The log claim cannot fill: rotation and retention are on, and the claim holds what they
# let the pods write. Each pod writes at most (LOG_KEEP + 1) files of LOG_MAX_BYTES; the pods
# with files at once are the replicas, the rolling update's surge, and the pods replaced
# within LOG_MAX_AGE (the claim's annotation says how many it is sized for). 90% of the
# claim: ext4 keeps 5% for root (the service is not root) and its metadata takes some.
def size_bytes(s):
    """A size as the service reads LOG_MAX_BYTES (100MiB, 64Mi, 500MB, 4096)."""
    m = re.fullmatch(r"(\d+)\s*([A-Za-z]*)", str(s).strip())
    units = {"": 1, "b": 1, "kib": 2**10, "mib": 2**20, "gib": 2**30, "tib": 2**40,
             "ki": 2**10, "mi": 2**20, "gi": 2**30, "ti": 2**40,
             "kb": 10**3, "mb": 10**6, "gb": 10**9, "tb": 10**12}
    if not m or m.group(2).lower() not in units:
        return None
    return int(m.group(1)) * units[m.group(2).lower()]

max_bytes = size_bytes(env.get("LOG_MAX_BYTES") or "0")
keep = env.get("LOG_KEEP") or "10"
need(max_bytes is not None and max_bytes > 0, dw, "LOG_MAX_BYTES set: each pod's log is rotated")
need(keep.isdigit() and int(keep) >= 1, dw, "LOG_KEEP a count >= 1")
need(bool(env.get("LOG_MAX_AGE")), dw, "LOG_MAX_AGE set: the files of replaced pods are deleted")
replaced = str(get(pvc, "metadata", "annotations", "api/replaced-pods-within-log-max-age",
                   default=""))
need(replaced.isdigit(), "PersistentVolumeClaim",
     "annotation api/replaced-pods-within-log-max-age: the pods replaced within LOG_MAX_AGE")
surge = get(spec, "strategy", "rollingUpdate", "maxSurge", default=1)
replicas = spec.get("replicas") or 1
if isinstance(surge, str) and surge.endswith("%"):
    surge = -(-replicas * int(surge[:-1]) // 100)
claim = quantity(get(pvc, "spec", "resources", "requests", "storage", default=""))
claim_note = ""
need(isinstance(surge, int), dw, "maxSurge a count or a percentage")
if max_bytes and keep.isdigit() and replaced.isdigit() and claim and isinstance(surge, int):
    writers = replicas + surge + int(replaced)
    bound = writers * (int(keep) + 1) * max_bytes
    need(bound <= 0.9 * claim, "PersistentVolumeClaim",
         f"storage of at least {bound / 0.9 / 2**30:.2f} GiB, so that (replicas {replicas} + "
         f"surge {surge} + replaced {replaced}) x (LOG_KEEP {keep} + 1) x LOG_MAX_BYTES "
         f"{max_bytes / 2**20:g} MiB = {bound / 2**20:g} MiB is 90% of it at most "
         f"(got {claim / 2**30:g} GiB)")
    claim_note = (f"log claim: ({replicas} replicas + {surge} surge + {replaced} replaced) pods x "
                  f"{int(keep) + 1} files x {max_bytes / 2**20:g} MiB = {bound / 2**20:g} MiB, "
                  f"{100 * bound / claim:.0f}% of the {claim / 2**30:g} GiB claim")

selector = get(spec, "selector", "matchLabels", default={})
svc = one("Service")
need(get(svc, "spec", "type", default="ClusterIP") == "ClusterIP", "Service", "type ClusterIP")
need(get(svc, "spec", "selector") == selector, "Service", "selects the Deployment's pods")
need([p.get("port") for p in get(svc, "spec", "ports", default=[])] == [8000, 9464], "Service",
     "ports 8000 (http) and 9464 (metrics) only")
need(env.get("METRICS_PORT") == "9464" and any(p.get("containerPort") == 9464 and p.get("name") == "metrics"
                                               for p in ports),
     dw, "METRICS_PORT 9464, the containerPort named metrics")
pdb = one("PodDisruptionBudget")
need(get(pdb, "spec", "selector", "matchLabels") == selector, "PodDisruptionBudget",
     "selects the Deployment's pods")
need(get(pdb, "spec", "maxUnavailable") is not None or get(pdb, "spec", "minAvailable") is not None,
     "PodDisruptionBudget", "maxUnavailable or minAvailable")
nps = [n for n in by_kind.get("NetworkPolicy", [])
       if get(n, "spec", "podSelector", "matchLabels") == selector]
need(len(nps) == 1, "NetworkPolicy", "exactly one selects the Deployment's pods")
for n in nps:
    need("Ingress" in (get(n, "spec", "policyTypes", default=[]) or []), "NetworkPolicy",
         "policyTypes has Ingress")
    rules = get(n, "spec", "ingress", default=[]) or []
    def tcp_ports(r):
        return [p for p in (r.get("ports") or [None])]
    open_rules = [r for r in rules if not r.get("from")]
    need(open_rules and all(p and p.get("protocol", "TCP") == "TCP" and p.get("port") in (8000, "http")
                            and "endPort" not in p for r in open_rules for p in tcp_ports(r)),
         "NetworkPolicy", "ingress from anywhere admits TCP 8000 only (every such rule names it)")
    for r in rules:
        if r.get("from"):
            need(all(p and p.get("port") in (9464, "metrics") and "endPort" not in p for p in tcp_ports(r))
                 and all(list(f) == ["namespaceSelector"] and get(f, "namespaceSelector", "matchLabels")
                         for f in r["from"]),
                 "NetworkPolicy", "the metrics port 9464 only, only from a labelled namespace")

need(claim_note, "PersistentVolumeClaim", "its size checked against the log's bound")
if misses:
    print(f"FAIL restricted/contract field check: {len(misses)} miss(es)")
    for m in misses:
        print(f"  - {m}")
    sys.exit(1)
print(claim_note)
print(f"PASS restricted/contract field check: {len(docs)} objects, {len(pods)} pod template(s)")
PY

# ---- 1. render ------------------------------------------------------------------------------
step "render: $kubectl kustomize $base"
"$kubectl" kustomize "$base" >"$work/rendered.yaml" || die "kubectl kustomize $base"
objects=$(python3 -c '
import sys, yaml
for d in yaml.safe_load_all(open(sys.argv[1])):
    if d:
        print(d["kind"] + "/" + d["metadata"]["name"])' "$work/rendered.yaml")
count=$(printf '%s\n' "$objects" | grep -c .) || true
kinds=$(printf '%s\n' "$objects" | paste -sd, - | sed 's/,/, /g')
[ "$count" -gt 0 ] || die "kustomize rendered no object"
echo "PASS rendered $count objects: $kinds"
# The files every later check reads: the rendered base and the throwaway reader pod.
mkdir "$work/scan"
cp "$work/rendered.yaml" "$work/scan/rendered.yaml"
cp "$tools_pod" "$work/scan/log-reader.yaml"

# Broken copies of the rendered output; every check below must fail on each of them.
# mutate NAME PYTHON-STATEMENTS: docs is the list of objects; dep the Deployment's pod spec.
mutate() {
  python3 - "$work/rendered.yaml" "$work/broken-$1.yaml" "$2" <<'PY'
import sys, yaml
docs = [d for d in yaml.safe_load_all(open(sys.argv[1])) if d]
ns = next(d for d in docs if d["kind"] == "Namespace")
dep = next(d for d in docs if d["kind"] == "Deployment")["spec"]["template"]["spec"]
api = dep["containers"][0]
exec(sys.argv[3])
yaml.safe_dump_all(docs, open(sys.argv[2], "w"), sort_keys=False)
PY
}
mutate no-runasnonroot 'del api["securityContext"]["runAsNonRoot"]; del dep["securityContext"]["runAsNonRoot"]'
mutate container-runasnonroot 'del api["securityContext"]["runAsNonRoot"]'
mutate privesc 'api["securityContext"]["allowPrivilegeEscalation"] = True'
mutate caps 'api["securityContext"]["capabilities"] = {"drop": ["NET_RAW"]}'
mutate rw-root 'api["securityContext"]["readOnlyRootFilesystem"] = False'
mutate hostpath 'dep["volumes"].append({"name": "h", "hostPath": {"path": "/var/log"}})'
mutate hostnetwork 'dep["hostNetwork"] = True'
mutate no-readiness 'del api["readinessProbe"]'
mutate no-limits 'del api["resources"]["limits"]'
mutate ns-label 'del ns["metadata"]["labels"]["pod-security.kubernetes.io/enforce"]'
mutate short-grace 'dep["terminationGracePeriodSeconds"] = 5'
mutate init-root 'dep["initContainers"] = [{"name": "chown", "image": "busybox:1.37", "securityContext": {"runAsUser": 0}}]'
mutate bad-field 'api["livenessProbe"]["httpGet"]["paht"] = "/"'
mutate metrics-open 'next(d for d in docs if d["kind"] == "NetworkPolicy")["spec"]["ingress"][1].pop("from")'
pvc='next(d for d in docs if d["kind"] == "PersistentVolumeClaim")'
mutate small-claim "$pvc"'["spec"]["resources"]["requests"]["storage"] = "2Gi"'
mutate more-kept 'next(e for e in api["env"] if e["name"] == "LOG_KEEP")["value"] = "10"'
mutate no-rotation 'api["env"] = [e for e in api["env"] if e["name"] != "LOG_MAX_BYTES"]'
mutate no-max-age 'api["env"] = [e for e in api["env"] if e["name"] != "LOG_MAX_AGE"]'

# ---- 2. schemas -----------------------------------------------------------------------------
step "schemas: kubernetes-validate --strict, Kubernetes $versions"
for v in $versions; do
  out=$(kubernetes-validate --strict --quiet -k "$v" "$work/scan/rendered.yaml" "$work/scan/log-reader.yaml" 2>&1) \
    || { printf '%s\n' "$out"; die "schema validation against Kubernetes $v"; }
  [ -z "$out" ] || printf '%s\n' "$out"
  echo "PASS $((count + 2)) objects valid against the Kubernetes $v schemas (strict)"
done
if kubernetes-validate --strict --quiet -k "${versions##* }" "$work/broken-bad-field.yaml" >"$work/kv.out" 2>&1; then
  die "kubernetes-validate accepted an unknown field (livenessProbe.httpGet.paht): it cannot fail"
fi
echo "PASS (self-test) a copy with an unknown field is rejected: $(grep -m1 -o "Additional properties are not allowed[^)]*)" "$work/kv.out" || head -n 1 "$work/kv.out")"

# ---- 3. restricted profile, field by field --------------------------------------------------
step "restricted profile and contract, field by field"
python3 -c "$field_check" "$work/scan/rendered.yaml" "$work/scan/log-reader.yaml"
for name in no-runasnonroot container-runasnonroot privesc caps rw-root hostpath hostnetwork no-readiness no-limits \
            ns-label short-grace init-root metrics-open small-claim more-kept no-rotation no-max-age; do
  if python3 -c "$field_check" "$work/broken-$name.yaml" >"$work/fc.out" 2>&1; then
    cat "$work/fc.out"
    die "the field check passed a copy broken by '$name': it cannot fail"
  fi
  grep -q '^FAIL' "$work/fc.out" || { cat "$work/fc.out"; die "field check crashed on '$name' instead of reporting"; }
  echo "PASS (self-test) broken copy '$name' rejected: $(sed -n 2p "$work/fc.out" | sed 's/^ *- //')"
done

# ---- 4. checkov -----------------------------------------------------------------------------
step "checkov (kubernetes framework; skips are annotations with a reason)"
# Offline: no download of policy metadata, no update check.
export BC_SKIP_MAPPING=TRUE CKV_SKIP_PACKAGE_UPDATE_CHECK=TRUE
run_checkov() { # DIR -> JSON report in $work/checkov.json; exit status is checkov's
  checkov --directory "$1" --framework kubernetes --skip-download --output json \
    >"$work/checkov.json" 2>"$work/checkov.err"
}
report() {
  python3 - "$work/checkov.json" <<'PY'
import json, sys
data = json.load(open(sys.argv[1]))
reports = data if isinstance(data, list) else [data]
passed = failed = skipped = errors = 0
for r in reports:
    s = r.get("summary", {})
    passed += s.get("passed", 0); failed += s.get("failed", 0)
    skipped += s.get("skipped", 0); errors += s.get("parsing_errors", 0)
    for c in r.get("results", {}).get("failed_checks", []):
        print(f"  FAILED  {c['check_id']} {c['check_name']} -- {c['resource']}")
    for c in r.get("results", {}).get("skipped_checks", []):
        why = (c.get("check_result") or {}).get("suppress_comment", "")
        print(f"  SKIPPED {c['check_id']} {c['resource']}: {why}")
print(f"checkov: {passed} passed, {failed} failed, {skipped} skipped, {errors} parsing errors")
sys.exit(1 if failed or errors or passed == 0 else 0)
PY
}
# checkov_clean DIR WHAT [HOW]: checkov over DIR with its findings listed; stops the script
# ("WHAT (exit N): HOW") unless checkov found nothing and checked something.
checkov_clean() {
  local status=0
  run_checkov "$1" || status=$?
  if ! report || [ "$status" -ne 0 ]; then
    cat "$work/checkov.err" >&2
    die "$2 (exit $status)${3:+: $3}"
  fi
}
checkov_clean "$work/scan" checkov \
  "fix the finding, or skip it on its object with a checkov.io/skipN annotation giving the reason"
echo "PASS checkov"
mkdir "$work/broken-scan"
cp "$work/broken-rw-root.yaml" "$work/broken-scan/rendered.yaml"
if run_checkov "$work/broken-scan"; then
  die "checkov passed a copy with readOnlyRootFilesystem: false: it cannot fail"
fi
grep -q '"CKV_K8S_22"' "$work/checkov.json" \
  || die "checkov failed the broken copy, but not on CKV_K8S_22 (read-only root)"
echo "PASS (self-test) checkov rejects a copy with readOnlyRootFilesystem: false (CKV_K8S_22)"

# ---- 5. the monitoring overlay ---------------------------------------------------------------
# The PodMonitor and PrometheusRule are custom resources, which the Kubernetes schemas do not
# cover: they are checked here against what the Prometheus Operator needs and the base has.
step "monitoring overlay: $kubectl kustomize $monitoring"
"$kubectl" kustomize "$monitoring" >"$work/monitoring.yaml" || die "kubectl kustomize $monitoring"
read -r -d '' monitoring_check <<'PY' || true
import sys, yaml
docs = [d for d in yaml.safe_load_all(open(sys.argv[1])) if d]
rules = yaml.safe_load(open(sys.argv[2]))
misses = []
def need(cond, what):
    if not cond:
        misses.append(what)
kinds = {}
for d in docs:
    kinds.setdefault(d["kind"], []).append(d)
dep = kinds["Deployment"][0]
pod = dep["spec"]["template"]
selector = dep["spec"]["selector"]["matchLabels"]
ports = {p.get("name") for c in pod["spec"]["containers"] for p in c.get("ports") or []}
pm = (kinds.get("PodMonitor") or [{}])[0]
spec = pm.get("spec") or {}
need(pm.get("apiVersion") == "monitoring.coreos.com/v1", "PodMonitor monitoring.coreos.com/v1")
need((spec.get("selector") or {}).get("matchLabels") == selector, "PodMonitor selects the Deployment's pods")
endpoints = spec.get("podMetricsEndpoints") or []
need(endpoints and all(e.get("port") in ports and e.get("path") == "/metrics" for e in endpoints),
     f"PodMonitor endpoints name a container port of the pods ({sorted(ports)}) and /metrics")
need(pod["metadata"]["labels"].get(spec.get("jobLabel")) == "api",
     "PodMonitor jobLabel names a pod label whose value is api (the rules' job)")
pr = (kinds.get("PrometheusRule") or [{}])[0]
need(pr.get("apiVersion") == "monitoring.coreos.com/v1", "PrometheusRule monitoring.coreos.com/v1")
need((pr.get("spec") or {}).get("groups") == rules.get("groups"),
     "PrometheusRule groups equal deploy/prometheus/rules.yml")
ns = {d["metadata"].get("namespace") for d in docs if d["kind"] != "Namespace"}
need(ns == {"api"}, f"every object in namespace api (got {ns})")
if misses:
    print(f"FAIL monitoring overlay: {len(misses)} miss(es)")
    for m in misses:
        print(f"  - {m}")
    sys.exit(1)
print(f"PASS monitoring overlay: {len(docs)} objects; PodMonitor and PrometheusRule agree with the base and rules.yml")
PY
python3 -c "$monitoring_check" "$work/monitoring.yaml" "$rules"
python3 - "$work/monitoring.yaml" "$work/monitoring-broken.yaml" <<'PY'
import sys, yaml
docs = [d for d in yaml.safe_load_all(open(sys.argv[1])) if d]
pm = next(d for d in docs if d["kind"] == "PodMonitor")
pm["spec"]["podMetricsEndpoints"][0]["port"] = "metric"
yaml.safe_dump_all(docs, open(sys.argv[2], "w"), sort_keys=False)
PY
if python3 -c "$monitoring_check" "$work/monitoring-broken.yaml" "$rules" >"$work/mc.out" 2>&1; then
  die "the monitoring check passed a PodMonitor naming a port the pods lack: it cannot fail"
fi
echo "PASS (self-test) a PodMonitor naming a port the pods lack is rejected"

# ---- 6. the shipping overlay -----------------------------------------------------------------
# deploy/shipping/kubernetes: the base plus the log shipper. Its objects are the Kubernetes
# schemas' own kinds, so the same schema check and checkov apply.
step "shipping overlay: $kubectl kustomize $shipping"
mkdir "$work/shipping"
"$kubectl" kustomize "$shipping" >"$work/shipping/rendered.yaml" || die "kubectl kustomize $shipping"
shipping_count=$(python3 -c '
import sys, yaml
print(sum(1 for d in yaml.safe_load_all(open(sys.argv[1])) if d))' "$work/shipping/rendered.yaml")
for v in $versions; do
  out=$(kubernetes-validate --strict --quiet -k "$v" "$work/shipping/rendered.yaml" 2>&1) \
    || { printf '%s\n' "$out"; die "the shipping overlay against the Kubernetes $v schemas"; }
  echo "PASS $shipping_count objects of the shipping overlay valid against the Kubernetes $v schemas (strict)"
done
checkov_clean "$work/shipping" "checkov on the shipping overlay"
echo "PASS checkov on the shipping overlay"

printf '\nPASS lint-kubernetes: %s objects rendered, schemas (%s), restricted field check, checkov, monitoring and shipping overlays\n' "$count" "$versions"
