#!/usr/bin/env bash
# Runs the MQTT comparison against Mosquitto and rumqttd in one run: installs the peers when
# missing, builds tidewater and the bench in release mode, then `tidewater-bench peers`.
# Extra arguments go to the bench, e.g. `tests/bench/run-peers.sh --duration 5 --wait-idle 120`.
#   PEERS_DIR (default /opt/bench-peers): where install-peers.sh put rumqttd.
set -euo pipefail
cd "$(dirname "$0")/../.."
PEERS_DIR="${PEERS_DIR:-/opt/bench-peers}" tests/bench/install-peers.sh
cargo build --release -p tidewater-node -p tidewater-tests --bin tidewater --bin tidewater-bench
exec target/release/tidewater-bench peers --spawn target/release/tidewater \
  --rumqttd "${PEERS_DIR:-/opt/bench-peers}/bin/rumqttd" "$@"
