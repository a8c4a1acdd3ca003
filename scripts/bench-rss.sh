#!/usr/bin/env bash
# Daemon memory with N labelled containers running (issue 3: RSS with 200 containers <= 15 MiB).
#
#   scripts/bench-rss.sh            # N=200
#   N=50 scripts/bench-rss.sh
#
# Builds the release binary in the shared bench target dir, starts N tiny ECS-labelled containers
# (2 per task, bridge mode, CPU shares and a memory limit) from the test image, runs the daemon with
# config/local.toml (stdout sink discarded, Prometheus on a free port) until it has observed them a
# few times, then prints VmHWM (peak RSS) and VmRSS from /proc. Removes its containers on exit.
set -euo pipefail
cd "$(dirname "$0")/.."
N=${N:-200}
export CARGO_TARGET_DIR=${CARGO_TARGET_DIR:-target}
IMAGE=ecs-capacity-agent-test/busybox:1
PREFIX=eca-rss-$$

# BIN=path/to/binary skips the build (e.g. to compare a debug build).
if [[ -z "${BIN:-}" ]]; then
  cargo build --release --bin ecs-capacity-agent >&2
  BIN=$CARGO_TARGET_DIR/release/ecs-capacity-agent
fi

if ! docker image inspect "$IMAGE" >/dev/null 2>&1; then
  ctx=$(mktemp -d)
  mkdir -p "$ctx/rootfs/bin" && cp /bin/busybox "$ctx/rootfs/bin/busybox"
  printf 'FROM scratch\nCOPY rootfs/ /\n' >"$ctx/Dockerfile"
  docker build -q -t "$IMAGE" "$ctx" >&2
  rm -rf "$ctx"
fi

cleanup() {
  [[ -n "${DAEMON:-}" ]] && kill "$DAEMON" 2>/dev/null || true
  docker ps -aq --filter "name=^${PREFIX}-" | xargs -r docker rm -f >/dev/null 2>&1 || true
}
trap cleanup EXIT

echo "starting $N containers..." >&2
seq 1 "$N" | xargs -P 4 -I{} sh -c '
  i={}; task=$(( (i + 1) / 2 ))
  docker run -d --name '"$PREFIX"'-$i --cpu-shares 16 -m 8m \
    --label com.amazonaws.ecs.cluster=rss \
    --label com.amazonaws.ecs.task-arn=arn:aws:ecs:us-east-1:123456789012:task/rss/'"$PREFIX"'-$task \
    --label com.amazonaws.ecs.task-definition-family=rss \
    --label com.amazonaws.ecs.task-definition-version=1 \
    --label com.amazonaws.ecs.container-name=c$(( i % 2 )) \
    '"$IMAGE"' /bin/busybox sleep 3600 >/dev/null'
running=$(docker ps -q --filter "name=^${PREFIX}-" | wc -l)
echo "$running containers running" >&2

port=$(python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])')
ECS_CAPACITY_AGENT_PROMETHEUS_LISTEN=127.0.0.1:$port ECS_CAPACITY_AGENT_AGENT_INTERVAL=2s \
  AWS_EC2_METADATA_SERVICE_ENDPOINT=http://127.0.0.1:9 \
  "$BIN" run --config config/local.toml >"${TMPDIR:-/tmp}/$PREFIX.out" 2>"${TMPDIR:-/tmp}/$PREFIX.log" &
DAEMON=$!
# Several observation intervals; the stdout sink prints one JSON report per interval.
sleep 15
if ! kill -0 "$DAEMON" 2>/dev/null; then
  echo "daemon exited early:" >&2; cat "${TMPDIR:-/tmp}/$PREFIX.log" >&2; exit 1
fi
hwm=$(awk '/^VmHWM/ {print $2}' "/proc/$DAEMON/status")
rss=$(awk '/^VmRSS/ {print $2}' "/proc/$DAEMON/status")
tasks=$(tail -n 1 "${TMPDIR:-/tmp}/$PREFIX.out" | python3 -c 'import json,sys; d=json.load(sys.stdin); print(sum(1 for t in d["snapshot"]["tasks"] if t["family"]=="rss"))')
rm -f "${TMPDIR:-/tmp}/$PREFIX.out"
printf 'tasks_seen=%s ' "$tasks"
printf 'containers=%s VmHWM=%.1f MiB VmRSS=%.1f MiB\n' "$running" "$(echo "$hwm/1024" | bc -l)" "$(echo "$rss/1024" | bc -l)"
