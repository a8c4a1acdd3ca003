#!/usr/bin/env bash
# CI checks of what ships (run by scripts/test.sh): the Packer template (`packer fmt -check` and a full
# `packer validate`, which needs no AWS access) and the systemd unit (`systemd-analyze verify`), both
# on a tree laid out by scripts/install.sh. Prints the unit's `systemd-analyze security` exposure.
set -euo pipefail
cd "$(dirname "$0")/.."
export CHECKPOINT_DISABLE=1   # no Packer version check over the network

for tool in packer systemd-analyze; do
  command -v "$tool" >/dev/null || { echo "check-ship: $tool missing (scripts/test-env.sh installs it)" >&2; exit 1; }
done

tmp=$(mktemp -d)
trap 'rm -rf "$tmp"' EXIT
# Only the layout matters here, not the binary: a stand-in executable avoids a build
# (tests/it/install.rs installs the real binary).
printf '#!/bin/sh\nexit 0\n' > "$tmp/bin"
chmod 0755 "$tmp/bin"
DESTDIR="$tmp/root" BIN="$tmp/bin" scripts/install.sh 2>/dev/null

echo "check-ship: packer fmt -check packer/" >&2
packer fmt -check packer/ || { echo "check-ship: run \`packer fmt packer/\`" >&2; exit 1; }
echo "check-ship: packer validate packer/" >&2
(cd packer && AWS_EC2_METADATA_DISABLED=true packer validate -var agent_version=0.0.0-ci \
  -var "install_root=$tmp/root" -var install_script=../scripts/install.sh .)
# The builder instance must run with IMDSv2 required and hop limit 1, and prove it, before any
# other provisioner.
first=$(grep -n 'provisioner "' packer/ecs-capacity-agent.pkr.hcl | head -1)
case "$first" in *'"shell-local"'*) ;; *) echo "check-ship: the first provisioner must set the builder's metadata options" >&2; exit 1 ;; esac
for want in 'modify-instance-metadata-options' '--http-tokens required' '--http-put-response-hop-limit 1' '= 401'; do
  grep -qF -- "$want" packer/ecs-capacity-agent.pkr.hcl ||
    { echo "check-ship: packer/ecs-capacity-agent.pkr.hcl lacks $want" >&2; exit 1; }
done

echo "check-ship: systemd-analyze verify ecs-capacity-agent.service" >&2
# --recursive-errors=no: docker.service and ecs.service exist on the AMI, not necessarily here.
out=$(systemd-analyze verify --recursive-errors=no --man=no --root="$tmp/root" ecs-capacity-agent.service 2>&1) || {
  echo "$out" >&2; exit 1; }
[ -z "$out" ] || { echo "check-ship: systemd-analyze verify warned:" >&2; echo "$out" >&2; exit 1; }
score=$(systemd-analyze security --offline=true --root="$tmp/root" ecs-capacity-agent.service 2>&1 | grep 'Overall exposure' || true)
echo "check-ship: ${score:-systemd-analyze security gave no score}" >&2
echo "check-ship: ok" >&2
