#!/usr/bin/env bash
# make demo: the lab end to end. Enable KMS (key V1) on 2,000 Secrets, watch the operator re-encrypt
# them, verify every Secret in etcd, plan then rotate to V2, verify again. Leaves the lab up; stops the operator.
set -euo pipefail

cd "$(dirname "$0")/.."
REPO=$(pwd)
LAB_DIR=${LAB_DIR:-$REPO/.lab}
SECRETS=${SECRETS:-2000}
NAMESPACES=${NAMESPACES:-20}
CLI="$REPO/.venv/bin/aks-kms-operator"
KUBECTL="$REPO/.cache/bin/kubectl"
PY="$REPO/.venv/bin/python"
OPERATOR_PID=""

stop_operator() {
  if [[ -n "$OPERATOR_PID" ]] && kill -0 "$OPERATOR_PID" 2>/dev/null; then
    kill -TERM "$OPERATOR_PID" 2>/dev/null || true
    for _ in $(seq 50); do kill -0 "$OPERATOR_PID" 2>/dev/null || break; sleep 0.2; done
    kill -KILL "$OPERATOR_PID" 2>/dev/null || true
    wait "$OPERATOR_PID" 2>/dev/null || true
  fi
  OPERATOR_PID=""
}
on_exit() {
  local rc=$?
  stop_operator
  if [[ $rc -ne 0 ]]; then
    echo >&2
    echo "demo FAILED (exit $rc). Operator log: $LAB_DIR/operator.log; lab log: $LAB_DIR/supervisor.log" >&2
    echo "The lab is left up for inspection; \`$CLI lab down\` removes it." >&2
  fi
}
trap on_exit EXIT
trap 'exit 130' INT
trap 'exit 143' TERM

START=$(date +%s.%N)
STEP_START=$START
STEPS=()
now() { date +%s.%N; }
step() { echo; echo "==> $*"; STEP_START=$(now); STEP_NAME="$*"; }
done_step() {
  local t; t=$(awk -v a="$STEP_START" -v b="$(now)" 'BEGIN{printf "%.1f", b-a}')
  STEPS+=("$(printf '%6ss  %s' "$t" "$STEP_NAME")")
  echo "    (${t}s)"
}
kc() { "$KUBECTL" --kubeconfig "$LAB_DIR/kubeconfig" "$@"; }

apply_policy() { # $1: key URL
  policy_yaml "$1" | kc apply -f -
}

policy_yaml() { # $1: key URL
  cat <<YAML
apiVersion: aks-kms.dev/v1alpha1
kind: ClusterEncryptionPolicy
metadata:
  name: default
spec:
  cluster:
    subscriptionId: 11111111-2222-3333-4444-555555555555
    resourceGroup: lab-rg
    name: lab-aks
  kms:
    enabled: true
    keyId: $1
    keyVaultNetworkAccess: Public
YAML
}

wait_ready() { # $1: key URL the policy must report in status.encryptedWith; live progress until Ready
  local want=$1 deadline=$(( $(date +%s) + 240 )) line last=""
  while :; do
    if [[ -n "$OPERATOR_PID" ]] && ! kill -0 "$OPERATOR_PID" 2>/dev/null; then
      echo; echo "the operator exited; last lines of $LAB_DIR/operator.log:" >&2
      tail -n 30 "$LAB_DIR/operator.log" >&2; return 1
    fi
    line=$(kc get cep default -o json 2>/dev/null | WANT="$want" "$PY" -c '
import json, os, sys
try:
    obj = json.load(sys.stdin)
except ValueError:
    print("WAIT API server restarting (AKS is rolling it)"); sys.exit()
st = obj.get("status") or {}
rw = st.get("rewrite") or {}
conds = {c["type"]: c for c in st.get("conditions") or []}
ready = conds.get("Ready", {}).get("status") == "True"
current = st.get("observedGeneration") == obj["metadata"].get("generation")
done = ready and current and st.get("encryptedWith") == os.environ["WANT"]
seen, total = int(rw.get("seen") or 0), int(rw.get("secretsTotal") or 0)
nsd, nst = int(rw.get("namespacesDone") or 0), int(rw.get("namespacesTotal") or 0)
if total:
    frac = min(1.0, seen / total)
elif nst:  # the operator has not counted Secrets up front: namespaces done of total
    frac = min(1.0, nsd / nst)
else:
    frac = 1.0 if done else 0.0
if not rw.get("startedAt"):
    frac = 1.0 if done else 0.0
bar = "#" * int(frac * 30) + "-" * (30 - int(frac * 30))
phase = st.get("phase") or "Pending"
ns = rw.get("currentNamespace") or "-"
stalled = conds.get("Stalled", {})
reason = stalled.get("reason")
extra = f" stalled: {reason}" if stalled.get("status") == "True" else ""
shown_total = total or "?"
print(("DONE " if done else "WAIT ") + f"{phase:<15} [{bar}] seen {seen:>5}/{shown_total:<5} "
      f"ns {nsd}/{nst} {ns:<10}{extra}")
' || true)
    if [[ -t 1 ]]; then
      printf '\r    %-100s' "${line#* }"
    elif [[ "$line" != "$last" ]]; then
      echo "    ${line#* }"
    fi
    last=$line
    if [[ $line == DONE* ]]; then [[ -t 1 ]] && echo; return 0; fi
    if (( $(date +%s) > deadline )); then
      echo; echo "not Ready after 240s; operator log tail:" >&2; tail -n 30 "$LAB_DIR/operator.log" >&2; return 1
    fi
    sleep 1
  done
}

step "clean: lab down"
"$CLI" lab down --dir "$LAB_DIR"
done_step

step "lab up (etcd, 2 kube-apiserver replicas behind a balancer, KMS v2 plugins, fake Azure)"
"$CLI" lab up --dir "$LAB_DIR" >/dev/null
"$CLI" lab status --dir "$LAB_DIR"
done_step

step "seed $SECRETS Secrets in $NAMESPACES namespaces"
"$CLI" lab seed --dir "$LAB_DIR" --secrets "$SECRETS" --namespaces "$NAMESPACES"
done_step

set -a
# shellcheck disable=SC1091
. "$LAB_DIR/env"
set +a

step "start the operator (logs: $LAB_DIR/operator.log)"
"$CLI" run --liveness= --log-format=plain >"$LAB_DIR/operator.log" 2>&1 &
OPERATOR_PID=$!
echo "    operator pid $OPERATOR_PID"
done_step

step "enable KMS with key V1 ($LAB_KEY_V1)"
apply_policy "$LAB_KEY_V1"
wait_ready "$LAB_KEY_V1"
done_step

step "lab verify (expect V1)"
"$CLI" lab verify --dir "$LAB_DIR"
done_step

step "plan the rotation to V2 before applying it (reads only; exit 2: change planned)"
rc=0
policy_yaml "$LAB_KEY_V2" | "$CLI" plan -f - || rc=$?
[ "$rc" -eq 2 ] || { echo "plan exited $rc, expected 2 (change planned)" >&2; exit 1; }
done_step

step "rotate to key V2 ($LAB_KEY_V2)"
apply_policy "$LAB_KEY_V2"
wait_ready "$LAB_KEY_V2"
done_step

step "lab verify (expect V2)"
"$CLI" lab verify --dir "$LAB_DIR"
done_step

stop_operator
TOTAL=$(awk -v a="$START" -v b="$(now)" 'BEGIN{printf "%.1f", b-a}')
echo
echo "==> summary: demo finished in ${TOTAL}s"
printf '  %s\n' "${STEPS[@]}"
kc get cep -o wide
echo
echo "The operator is stopped; the lab is still up. Try:"
echo "  $KUBECTL --kubeconfig $LAB_DIR/kubeconfig get cep -o wide"
echo "  $CLI lab verify"
echo "  $CLI lab status"
echo "  $CLI lab down"
