#!/usr/bin/env bash
# Builds the ECS container instance AMI with ecs-capacity-agent (`make ami`):
#   1. the release binary (BIN, default target/release/ecs-capacity-agent; `make release` if missing),
#   2. `make install DESTDIR=target/ami/root` — the tree Packer uploads,
#   3. `packer build packer/`.
# Needs AWS credentials with the usual Packer EC2 permissions. Variables are passed through:
#   AWS_REGION (default us-east-1), INSTANCE_TYPE, ARCH (x86_64|arm64), SUBNET_ID, AMI_NAME_PREFIX.
# The binary must run on Amazon Linux 2023 (glibc 2.34): build it on AL2023 or an older glibc, or
# for a musl target, and pass it as BIN=.
set -euo pipefail
cd "$(dirname "$0")/.."

BIN="${BIN:-target/release/ecs-capacity-agent}"
ARCH="${ARCH:-x86_64}"
ROOT=target/ami/root
AL2023_GLIBC=2.34

die() { echo "build-ami: $*" >&2; exit 1; }
command -v packer >/dev/null || die "packer not found (apt-get install packer, or https://developer.hashicorp.com/packer/install)"
# The template requires IMDSv2 on the builder instance with the AWS CLI (Packer 1.6 has no
# metadata_options).
command -v aws >/dev/null || die "aws (the AWS CLI) not found: the build sets the builder instance's metadata options with it"

if [ ! -x "$BIN" ]; then
  [ "$BIN" = target/release/ecs-capacity-agent ] || die "BIN=$BIN is not an executable"
  make release
fi

# The binary must match the AMI's architecture and need no newer glibc than AL2023 has.
machine=$(readelf -h "$BIN" | awk -F: '/Machine:/ {gsub(/^ +/, "", $2); print $2}')
case "$ARCH:$machine" in
  x86_64:*X86-64*|arm64:*AArch64*) ;;
  *) die "$BIN is built for '$machine', the AMI is $ARCH (set ARCH= or BIN=)" ;;
esac
need=$( (objdump -T "$BIN" 2>/dev/null || true) | grep -o 'GLIBC_[0-9.]*' | sed 's/GLIBC_//' | sort -uV | tail -1)
if [ -n "$need" ] && [ "$(printf '%s\n%s\n' "$need" "$AL2023_GLIBC" | sort -V | tail -1)" != "$AL2023_GLIBC" ]; then
  die "$BIN needs glibc $need but Amazon Linux 2023 has $AL2023_GLIBC: build it on AL2023 (or for x86_64-unknown-linux-musl) and pass BIN="
fi

rm -rf "$ROOT"
make install DESTDIR="$ROOT" BIN="$BIN"

version=$(sed -n 's/^version = "\(.*\)"/\1/p' Cargo.toml | head -1)
# Packer >= 1.10 no longer bundles the amazon builder.
if packer plugins installed >/dev/null 2>&1 && ! packer plugins installed | grep -q amazon; then
  packer plugins install github.com/hashicorp/amazon
fi

cd packer
vars=(-var "agent_version=$version" -var "architecture=$ARCH" -var "install_root=../$ROOT"
      -var "install_script=../scripts/install.sh" -var "region=${AWS_REGION:-us-east-1}")
[ -n "${INSTANCE_TYPE:-}" ] && vars+=(-var "instance_type=$INSTANCE_TYPE")
[ -n "${SUBNET_ID:-}" ] && vars+=(-var "subnet_id=$SUBNET_ID")
[ -n "${AMI_NAME_PREFIX:-}" ] && vars+=(-var "ami_name_prefix=$AMI_NAME_PREFIX")
packer validate "${vars[@]}" .
exec packer build "${vars[@]}" .
