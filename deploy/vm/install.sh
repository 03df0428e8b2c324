#!/usr/bin/env bash
# Install meshfed on a Debian VM from this source tree: the virtualenv under /opt/meshfed, then
# `meshfed vm install` for the config, the systemd unit, the site bundle and DNS routing.
# Safe to run again. Every argument goes to `meshfed vm install` (see --help), for example:
#   sudo deploy/vm/install.sh --site vm-a --network net-a --registry 198.18.0.5:2379 --bundle ./vm-a-site
# With --root DIR everything goes below DIR instead of / (image builds, tests) and nothing is started.
set -euo pipefail
SRC=$(cd "$(dirname "$0")/../.." && pwd)
ROOT=/
args=("$@")
for ((i = 0; i < ${#args[@]}; i++)); do
    case "${args[$i]}" in
        --root) ROOT=${args[$((i + 1))]:-/} ;;
        --root=*) ROOT=${args[$i]#--root=} ;;
    esac
done
VENV="${ROOT%/}/opt/meshfed"

if [ "$ROOT" = "/" ] && [ "$(id -u)" -ne 0 ]; then
    echo "install.sh: run as root (it writes /opt, /etc and starts a systemd service)" >&2
    exit 1
fi
if ! python3 -c "import venv, ensurepip" 2>/dev/null; then
    echo "install.sh: installing python3-venv" >&2
    apt-get update -qq
    DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends python3-venv >/dev/null
fi
if [ "$ROOT" = "/" ] && ! command -v nft >/dev/null 2>&1 && command -v apt-get >/dev/null 2>&1; then
    # The egress captures the VIP range into one listener with nft (vm.egress_capture: auto); without
    # it the agent says so and runs a listener per imported service port.
    echo "install.sh: installing nftables" >&2
    apt-get update -qq
    DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends nftables >/dev/null ||
        echo "install.sh: nftables not installed; the egress will use a listener per service port" >&2
fi
if [ ! -x "$VENV/bin/python" ]; then
    python3 -m venv "$VENV"
fi
"$VENV/bin/pip" install --quiet --disable-pip-version-check "$SRC"
exec "$VENV/bin/meshfed" vm install --no-venv "$@"
