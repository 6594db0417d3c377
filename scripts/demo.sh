#!/usr/bin/env bash
# `make demo`: the operator's main job on a local control plane and the MyTimetable
# simulator, from a fresh clone.
#
# It builds the binaries, starts `calsync-devenv` (etcd and kube-apiserver on loopback) and
# `mytimetable-sim` on a free loopback port, installs the CRDs, runs `calsync-operator run`,
# applies examples/ and waits until every resource is Ready. It then prints the read-only
# API's lists beside `kubectl get calsync -A`, deletes one CalendarSync of each unlinkMode
# and prints the user's calendar events before and after each deletion.
#
# examples/ is applied unchanged through a kustomization overlay in a temporary folder. The
# overlay replaces the placeholder token Secret with a random token that the simulator also
# receives, so the operator reads its token from the Secret as it does in a cluster. The
# operator gets the simulator's loopback URL with --mytimetable-url; no request leaves the
# machine.
#
# Every process and temporary file is removed on exit, also after a failure or Ctrl-C. A
# failure names the step and prints the end of the logs. The three long-running programs run
# in sessions of their own (setsid), so that Ctrl-C reaches only the script and its current
# command, and the clean-up stops them in order: the operator, the simulator, the control
# plane.
set -euo pipefail

cd "$(dirname "${BASH_SOURCE[0]}")/.."
repo="$(pwd)"

# Bounds of the waits, in seconds. Each covers a slow first start on 2 shared cores with a
# wide margin; a healthy run needs a few seconds for each.
readonly CONTROL_PLANE_TIMEOUT=120
readonly PROCESS_TIMEOUT=30
readonly READY_TIMEOUT=120
readonly DELETE_TIMEOUT=60
# How long a stopping process may take before it is killed: the operator's shutdown grace
# period is 30 s by default, and the demo passes 5 s.
readonly STOP_TIMEOUT=15

step_name="prepare"
work=""
pids=()

step() {
    step_name="$1"
    printf '\n==> %s\n' "$1"
}

fail() {
    echo "demo: step '$step_name' failed: $*" >&2
    exit 1
}

# Prints the last lines of each log, so that a failure can be understood after the
# temporary folder is gone.
show_logs() {
    local log
    for log in "$work"/*.log; do
        [ -s "$log" ] || continue
        echo "--- last lines of $(basename "$log") ---" >&2
        tail -n 20 "$log" >&2
    done
}

# Sends SIGTERM to a process and waits for it, with SIGKILL after STOP_TIMEOUT seconds.
stop_process() {
    local pid="$1" waited=0
    kill -TERM "$pid" 2>/dev/null || return 0
    while kill -0 "$pid" 2>/dev/null; do
        if [ "$waited" -ge $((STOP_TIMEOUT * 10)) ]; then
            echo "demo: process $pid did not stop within ${STOP_TIMEOUT}s; killing it" >&2
            kill -KILL "$pid" 2>/dev/null || true
            break
        fi
        sleep 0.1
        waited=$((waited + 1))
    done
    wait "$pid" 2>/dev/null || true
}

cleanup() {
    local status=$?
    trap - EXIT INT TERM
    if [ "$status" -eq 130 ] || [ "$status" -eq 143 ]; then
        echo "demo: stopped during step '$step_name'; cleaning up" >&2
    elif [ "$status" -ne 0 ]; then
        echo "demo: failed during step '$step_name' (exit status $status)" >&2
        [ -z "$work" ] || show_logs
    fi
    # In reverse order of start: the operator stops while the control plane and the
    # simulator still run, and the control plane stops last.
    local index
    for ((index = ${#pids[@]} - 1; index >= 0; index--)); do
        stop_process "${pids[$index]}"
    done
    if [ -n "$work" ]; then
        rm -rf "$work"
    fi
    exit "$status"
}
trap cleanup EXIT
trap 'echo; echo "demo: interrupted" >&2; exit 130' INT
trap 'echo "demo: terminated" >&2; exit 143' TERM

# Runs "$@" until it succeeds or SECONDS_LIMIT seconds passed; fails the step with DESCRIPTION.
wait_for() {
    local description="$1" limit="$2"
    shift 2
    local deadline=$((SECONDS + limit))
    until "$@"; do
        if [ "$SECONDS" -ge "$deadline" ]; then
            fail "timed out after ${limit}s waiting for $description"
        fi
        sleep 0.5
    done
}

# Fails the step when a started process has exited.
check_running() {
    local pid="$1" name="$2"
    kill -0 "$pid" 2>/dev/null || fail "$name exited; see its log below"
}

kubectl() {
    "$control_plane_dir/kubectl" --kubeconfig "$work/kubeconfig" "$@"
}

# GET of a loopback URL; fails on an HTTP error status.
get() {
    curl --fail --silent --show-error --max-time 5 "$1"
}

# Prints the calendar events of user $1 from the simulator, one line each, with their time
# relative to now. The simulator titles each pushed event with its synchronization.
print_events() {
    local user="$1" encoded
    encoded="$(jq -rn --arg user "$user" '$user | @uri')"
    get "$sim_root/_sim/users/$encoded/events" | jq -r '
        def started: .start[0:19] + "Z" | fromdateiso8601;
        if (.events | length) == 0 then "      (no events)" else
        .events[]
        | (if started < now then "past  " else "future" end) as $when
        | (if .source.kind == "personal" then " (personal, not from MyTimetable)" else "" end) as $note
        | "      \(.start[0:16] | sub("T"; " "))  \($when)  \(.title)\($note)"
        end'
}

count_events() {
    local encoded
    encoded="$(jq -rn --arg user "$1" '$user | @uri')"
    get "$sim_root/_sim/users/$encoded/events" | jq '.events | length'
}

# ---------------------------------------------------------------------------------------
step "check the tools"
scripts/install-tools.sh
missing=()
for tool in curl jq; do
    command -v "$tool" >/dev/null 2>&1 || missing+=("$tool")
done
if [ ${#missing[@]} -gt 0 ]; then
    [ "$(id -u)" -eq 0 ] || fail "missing ${missing[*]}; install them with apt-get as root"
    echo "demo: installing ${missing[*]} with apt-get"
    apt-get update -qq
    DEBIAN_FRONTEND=noninteractive apt-get install -y -qq "${missing[@]}"
fi

step "build kube-apiserver, kubectl and etcd (10 to 20 minutes the first time, cached later)"
control_plane_dir="$(scripts/build-control-plane.sh)" || fail "scripts/build-control-plane.sh failed"
export CALSYNC_CONTROL_PLANE_DIR="$control_plane_dir"
echo "control plane binaries in $control_plane_dir"

step "build calsync-operator, mytimetable-sim and calsync-devenv"
cargo build --locked --bins || fail "cargo build failed"
target_dir="$(cargo metadata --format-version 1 --no-deps --locked | jq -r .target_directory)"
bin="$target_dir/debug"

work="$(mktemp -d -t calsync-demo.XXXXXX)"
# A random token for this run only. It is never printed: the simulator and the overlay read
# it from this file.
head -c 24 /dev/urandom | od -An -tx1 | tr -d ' \n' >"$work/token"
chmod 600 "$work/token"

step "start the local control plane (calsync-devenv)"
setsid "$bin/calsync-devenv" --kubeconfig "$work/kubeconfig" >"$work/devenv.out" 2>"$work/devenv.log" &
devenv_pid=$!
pids+=("$devenv_pid")
devenv_ready() {
    check_running "$devenv_pid" calsync-devenv
    grep -qx ready "$work/devenv.out"
}
wait_for "calsync-devenv to print ready" "$CONTROL_PLANE_TIMEOUT" devenv_ready
kubectl version 2>/dev/null | sed 's/^/  /' || fail "kubectl cannot reach the control plane"

step "start the MyTimetable simulator (mytimetable-sim) on a free loopback port"
setsid "$bin/mytimetable-sim" --listen 127.0.0.1:0 --token-file "$work/token" \
    >"$work/sim.out" 2>"$work/sim.log" &
sim_pid=$!
pids+=("$sim_pid")
sim_started() {
    check_running "$sim_pid" mytimetable-sim
    [ -s "$work/sim.out" ]
}
wait_for "mytimetable-sim to print its URL" "$PROCESS_TIMEOUT" sim_started
base_url="$(head -n 1 "$work/sim.out")"
sim_root="${base_url%/api/v0}"
case "$base_url" in
    http://127.0.0.1:*/api/v0) echo "simulator API at $base_url" ;;
    *) fail "unexpected simulator URL '$base_url'" ;;
esac

step "install the CRDs (kubectl apply --server-side -f crds/)"
kubectl apply --server-side -f crds/
kubectl wait --for=condition=Established --timeout="${PROCESS_TIMEOUT}s" \
    crd/calendarusers.calsync.dev crd/calendarsyncs.calsync.dev

step "run the controller (calsync-operator run)"
setsid "$bin/calsync-operator" run \
    --kubeconfig "$work/kubeconfig" \
    --mytimetable-url "$base_url" \
    --token-secret-namespace calsync-system \
    --token-secret-name mytimetable-token \
    --http-listen 127.0.0.1:0 \
    --leader-election false \
    --shutdown-grace-period 5s \
    >"$work/controller.log" 2>&1 &
controller_pid=$!
pids+=("$controller_pid")
controller_serving() {
    check_running "$controller_pid" calsync-operator
    grep -qE 'Serving HTTP address=127\.0\.0\.1:[0-9]+' "$work/controller.log"
}
wait_for "the controller to serve HTTP" "$PROCESS_TIMEOUT" controller_serving
api_root="http://$(grep -oE 'Serving HTTP address=127\.0\.0\.1:[0-9]+' "$work/controller.log" |
    head -n 1 | cut -d= -f2)"
echo "read-only API, /healthz, /readyz and /metrics at $api_root"

step "apply examples/ (kubectl apply -k, with the demo token in the Secret)"
overlay="$work/overlay"
mkdir "$overlay"
cp "$work/token" "$overlay/token"
# kustomize accepts only relative paths to a base.
cat >"$overlay/kustomization.yaml" <<EOF
apiVersion: kustomize.config.k8s.io/v1beta1
kind: Kustomization
resources:
  - $(realpath --relative-to="$overlay" "$repo/examples")
generatorOptions:
  disableNameSuffixHash: true
secretGenerator:
  - name: mytimetable-token
    namespace: calsync-system
    behavior: replace
    files:
      - token
EOF
kubectl apply -k "$overlay"

step "wait until every CalendarUser and CalendarSync is Ready"
kubectl wait --for=condition=Ready --timeout="${READY_TIMEOUT}s" \
    calendarusers,calendarsyncs --all --all-namespaces ||
    {
        kubectl get calsync -A -o wide || true
        fail "not every resource became Ready within ${READY_TIMEOUT}s"
    }

step "kubectl get calsync -A"
kubectl get calsync -A

# The read-only API serves the remote view; the ids it lists for managed synchronizations
# must be exactly the ids the CalendarSyncs report.
cluster_ids() {
    kubectl get calendarsyncs -A -o json | jq -c '[.items[].status.syncId] | sort'
}
api_ids() {
    get "$api_root/api/v0/synchronizations?managed=true" | jq -c '[.synchronizations[].id] | sort'
}
api_matches_cluster() {
    [ "$(api_ids 2>/dev/null)" = "$(cluster_ids)" ]
}
wait_for "the read-only API to list the synchronizations of the CalendarSyncs" \
    "$PROCESS_TIMEOUT" api_matches_cluster

step "the read-only API beside it: GET $api_root/api/v0/users and /synchronizations"
users_json="$(get "$api_root/api/v0/users")"
syncs_json="$(get "$api_root/api/v0/synchronizations")"
{
    echo "USERS"
    jq -r '.users[]' <<<"$users_json"
} >"$work/users.txt"
{
    echo "SYNCHRONIZATIONS (ID USERNAME TYPE)"
    jq -r '.synchronizations[] | "\(.id) \(.username) \(.type)"' <<<"$syncs_json"
} >"$work/syncs.txt"
# Two columns: users on the left, synchronizations on the right.
paste "$work/users.txt" "$work/syncs.txt" | awk -F '\t' '{ printf "  %-28s %s\n", $1, $2 }'
echo "  managed users: $(get "$api_root/api/v0/users?managed=true" | jq '.users | length')," \
    "unmanaged: $(get "$api_root/api/v0/users?managed=false" | jq '.users | length')"

step "delete one CalendarSync of each unlinkMode"
# A personal appointment in each calendar shows that no unlinkMode touches events that
# MyTimetable did not push.
appointment_start="$(date -u -d 'tomorrow 12:00' +%Y-%m-%dT%H:%M:%SZ)"
appointment_end="$(date -u -d 'tomorrow 13:00' +%Y-%m-%dT%H:%M:%SZ)"
syncs_json="$(kubectl get calendarsyncs -A -o json)"
summary=()
for mode in UNLINK_ONLY DELETE_FUTURE_EVENTS DELETE_ALL_EVENTS CLEANUP; do
    # The first CalendarSync with this unlinkMode (UNLINK_ONLY when unset) that is not
    # orphaned, because an orphaned one is left in MyTimetable and never unlinked.
    target="$(jq -r --arg mode "$mode" '
        [.items[] | select((.spec.unlinkMode // "UNLINK_ONLY") == $mode
                           and (.spec.deletionPolicy // "Delete") != "Orphan")][0]
        | if . == null then "" else
          "\(.metadata.namespace) \(.metadata.name) \(.status.username) \(.status.syncId)" end' \
        <<<"$syncs_json")"
    [ -n "$target" ] || fail "examples/ has no CalendarSync with unlinkMode $mode"
    read -r namespace name user sync_id <<<"$target"

    echo
    echo "  $mode: CalendarSync $namespace/$name, user $user, synchronization $sync_id"
    encoded="$(jq -rn --arg user "$user" '$user | @uri')"
    curl --fail --silent --show-error --max-time 5 -o /dev/null \
        -H 'content-type: application/json' "$sim_root/_sim/users/$encoded/events" \
        -d "{\"title\": \"Dentist\", \"start\": \"$appointment_start\", \"end\": \"$appointment_end\"}"
    before="$(count_events "$user")"
    echo "    calendar before ($before events):"
    print_events "$user"

    kubectl delete calendarsync -n "$namespace" "$name" --timeout="${DELETE_TIMEOUT}s" |
        sed 's/^/    /'
    sync_gone() {
        get "$api_root/api/v0/synchronizations" |
            jq -e --argjson id "$sync_id" 'all(.synchronizations[]; .id != $id)' >/dev/null
    }
    wait_for "synchronization $sync_id to leave the read-only API" "$PROCESS_TIMEOUT" sync_gone
    grep -F "sync=$namespace/$name " "$work/controller.log" |
        grep -oE 'Unlinked MyTimetable synchronization .*' | sed 's/^/    controller log: /' || true
    echo "    synchronization $sync_id is gone from MyTimetable"
    after="$(count_events "$user")"
    echo "    calendar after ($after events):"
    print_events "$user"
    summary+=("$(printf '%-21s %-24s %s -> %s' "$mode" "$user" "$before" "$after")")
done

step "summary"
printf '  %-21s %-24s %s\n' "unlinkMode" "user" "calendar events"
for line in "${summary[@]}"; do
    echo "  $line"
done

# The token must appear in no log; the demo's own output never prints it.
step "check that the token appears in no log"
token="$(cat "$work/token")"
for log in "$work"/*.log "$work"/*.out; do
    if grep -qF "$token" "$log"; then
        fail "the token appears in $(basename "$log")"
    fi
done
echo "  the token appears in none of the controller, simulator and control-plane logs"

step "done: stopping the controller, the simulator and the control plane"
