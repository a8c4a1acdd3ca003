#!/usr/bin/env bash
# Lays out ecs-capacity-agent under DESTDIR (empty: this machine), as `make install` and the Packer
# provisioner do:
#   /usr/bin/ecs-capacity-agent                           0755  the binary (BIN)
#   /etc/ecs-capacity-agent/config.toml                   0644  commented default (CONFIG); an edited
#                                                               one is kept, the new default is put
#                                                               beside it as config.toml.default
#   /usr/lib/systemd/system/ecs-capacity-agent.service    0644  the unit (UNIT)
#   /var/lib/ecs-capacity-agent                           0700  state directory
# Logs go to journald (the unit's stdout). With ENABLE=1 and no DESTDIR it also reloads systemd and
# enables the unit (what the AMI build does); it never starts it.
set -euo pipefail
root="$(cd "$(dirname "$0")/.." && pwd)"

DESTDIR="${DESTDIR:-}"
BIN="${BIN:-$root/target/release/ecs-capacity-agent}"
CONFIG="${CONFIG:-$root/config/ecs-capacity-agent.toml}"
UNIT="${UNIT:-$root/systemd/ecs-capacity-agent.service}"
ENABLE="${ENABLE:-0}"

die() { echo "install.sh: $*" >&2; exit 1; }
[ -f "$BIN" ] && [ -x "$BIN" ] || die "binary $BIN not found or not executable (run \`make release\`, or set BIN=)"
[ -f "$CONFIG" ] || die "default configuration $CONFIG not found"
[ -f "$UNIT" ] || die "systemd unit $UNIT not found"
if [ -n "$DESTDIR" ]; then
  case "$DESTDIR" in /*) ;; *) DESTDIR="$(pwd)/$DESTDIR" ;; esac
fi

# Owner root when installing as root; an unprivileged DESTDIR install keeps the caller's owner.
own=()
[ "$(id -u)" = 0 ] && own=(-o root -g root)

install -d -m 0755 "$DESTDIR/usr/bin" "$DESTDIR/usr/lib/systemd/system" "$DESTDIR/etc/ecs-capacity-agent"
install -m 0755 "${own[@]}" "$BIN" "$DESTDIR/usr/bin/ecs-capacity-agent"
install -m 0644 "${own[@]}" "$UNIT" "$DESTDIR/usr/lib/systemd/system/ecs-capacity-agent.service"

conf="$DESTDIR/etc/ecs-capacity-agent/config.toml"
if [ -e "$conf" ] && ! cmp -s "$CONFIG" "$conf"; then
  install -m 0644 "${own[@]}" "$CONFIG" "$conf.default"
  echo "install.sh: kept the edited $conf; the new default is $conf.default" >&2
else
  install -m 0644 "${own[@]}" "$CONFIG" "$conf"
fi

install -d -m 0700 "${own[@]}" "$DESTDIR/var/lib/ecs-capacity-agent"

if [ "$ENABLE" = 1 ]; then
  [ -z "$DESTDIR" ] || die "ENABLE=1 only makes sense without DESTDIR"
  systemctl daemon-reload
  systemctl enable ecs-capacity-agent.service
fi
echo "install.sh: installed ecs-capacity-agent into ${DESTDIR:-/}" >&2
