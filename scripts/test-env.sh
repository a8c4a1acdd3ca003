#!/usr/bin/env bash
# Installs what the test suite needs and the machine lacks, then prints the environment to use.
# Idempotent: a second run on a prepared machine does nothing but check.
#  - Debian packages: busybox-static (the one binary in the test images, which are built FROM scratch
#    because the Docker engine here cannot pull), and the linters CI runs on deploy/, packer/, systemd/.
#  - moto with its server extra, pinned, in .venv/ inside the repository (git-ignored).
set -euo pipefail
cd "$(dirname "$0")/.."

MOTO_VERSION=5.2.5
CFN_LINT_VERSION=1.58.0
APT_PACKAGES=(busybox-static packer systemd)

need_apt=()
for p in "${APT_PACKAGES[@]}"; do
  dpkg -s "$p" >/dev/null 2>&1 || need_apt+=("$p")
done
if ((${#need_apt[@]})); then
  echo "test-env: installing Debian packages: ${need_apt[*]}" >&2
  if [ "$(id -u)" = 0 ]; then SUDO=""; else SUDO="sudo"; fi
  $SUDO apt-get update -qq
  DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -qq --no-install-recommends "${need_apt[@]}" >&2
fi

if [ ! -x .venv/bin/python ]; then
  echo "test-env: creating .venv" >&2
  python3 -m venv .venv
fi
want="moto==$MOTO_VERSION cfn-lint==$CFN_LINT_VERSION"
if ! .venv/bin/python -c "import importlib.metadata as m, sys; sys.exit(0 if m.version('moto')=='$MOTO_VERSION' and m.version('cfn-lint')=='$CFN_LINT_VERSION' and m.version('flask') else 1)" 2>/dev/null; then
  echo "test-env: installing $want into .venv" >&2
  .venv/bin/pip install -q --disable-pip-version-check "moto[server]==$MOTO_VERSION" "cfn-lint==$CFN_LINT_VERSION" >&2
fi

if ! command -v cargo-nextest >/dev/null 2>&1 && ! cargo nextest --version >/dev/null 2>&1; then
  echo "test-env: installing cargo-nextest" >&2
  cargo install --locked cargo-nextest >&2
fi
echo "test-env: ready (moto $MOTO_VERSION in .venv, busybox-static $(dpkg-query -W -f='${Version}' busybox-static))" >&2
