#!/usr/bin/env bash
# The whole test suite, as `make test` and CI run it: install what is missing, then the Rust tests
# (unit, integration against moto / Docker / fake IMDS), then the checks of the deploy and ship files.
set -euo pipefail
cd "$(dirname "$0")/.."
scripts/test-env.sh

if [ "${CI:-}" = "true" ]; then
  # In CI a missing peer is a failure, never a skip: check them up front with a clear message.
  docker info >/dev/null 2>&1 || { echo "CI: the Docker engine is not reachable (docker info failed)" >&2; exit 1; }
  [ -x .venv/bin/moto_server ] || { echo "CI: .venv/bin/moto_server missing after scripts/test-env.sh" >&2; exit 1; }
fi

for check in scripts/check-*.sh; do
  [ -e "$check" ] || continue
  echo "== $check" >&2
  "$check"
done

cargo nextest run --profile "${NEXTEST_PROFILE:-default}" --no-fail-fast
