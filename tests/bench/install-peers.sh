#!/usr/bin/env bash
# Installs the peer brokers the benchmark compares against, when missing (idempotent):
# Mosquitto from Debian, rumqttd from crates.io into a cache outside the repository.
#   PEERS_DIR (default /opt/bench-peers): where rumqttd is installed (bin/rumqttd).
set -euo pipefail
PEERS_DIR="${PEERS_DIR:-/opt/bench-peers}"
SUDO=""
if [ "$(id -u)" -ne 0 ] && command -v sudo >/dev/null; then SUDO="sudo"; fi

if ! command -v mosquitto >/dev/null && [ ! -x /usr/sbin/mosquitto ]; then
  echo "installing mosquitto (apt)" >&2
  $SUDO apt-get update -qq
  DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -qq mosquitto >/dev/null
fi
# the Debian package starts a system service on 1883; the benchmark runs its own instance
if command -v systemctl >/dev/null && systemctl is-active --quiet mosquitto 2>/dev/null; then
  $SUDO systemctl stop mosquitto || true
fi

if [ ! -x "$PEERS_DIR/bin/rumqttd" ]; then
  echo "installing rumqttd into $PEERS_DIR (cargo install, several minutes)" >&2
  $SUDO mkdir -p "$PEERS_DIR"
  # a target dir of its own, so a concurrent workspace build is not blocked on its lock;
  # not --locked: rumqttd 0.20's lock file pins metrics 0.22.1, which newer rustc refuses
  CARGO_TARGET_DIR="${CARGO_TARGET_DIR_PEERS:-/tmp/target-rumqttd}" \
    cargo install rumqttd --version 0.20.0 --root "$PEERS_DIR" --quiet
fi
echo "mosquitto: $(command -v mosquitto || echo /usr/sbin/mosquitto)" >&2
echo "rumqttd:   $PEERS_DIR/bin/rumqttd" >&2
