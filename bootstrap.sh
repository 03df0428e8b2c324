#!/usr/bin/env bash
# Set up everything meshfed needs on a Debian machine, then run one job:
#   ./bootstrap.sh demo    the main job (an agent on an embedded etcd, then `meshfed registry ls`)
#   ./bootstrap.sh test    lint, type checks and the whole test suite
#   ./bootstrap.sh setup   only install
# Safe to run again: every step checks before it installs.
set -euo pipefail
cd "$(dirname "$0")"
HERE=$(pwd)
VENV="$HERE/.venv"
APT_PACKAGES=(etcd-server etcd-client bind9-dnsutils iproute2 procps curl haproxy iperf3 prometheus zonemaster-cli nftables dnsperf unbound nsd chromium)

as_root() { if [ "$(id -u)" -eq 0 ]; then "$@"; else sudo "$@"; fi; }

install_system() {
    local missing=()
    for p in "${APT_PACKAGES[@]}"; do
        dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "install ok installed" || missing+=("$p")
    done
    if [ ${#missing[@]} -gt 0 ]; then
        echo "bootstrap: installing ${missing[*]}" >&2
        as_root apt-get update -qq
        as_root env DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends "${missing[@]}" >/dev/null
    fi
    # Debian's etcd-server package may start a system etcd; meshfed runs its own, so leave it alone.
    # Its prometheus package may start a Prometheus on :9090 too; the tests need only its promtool.
}

install_python() {
    local stamp="$VENV/.meshfed-installed"
    if [ ! -x "$VENV/bin/python" ]; then
        python3 -m venv "$VENV"
    fi
    if [ ! -f "$stamp" ] || [ pyproject.toml -nt "$stamp" ]; then
        echo "bootstrap: installing meshfed and its dev tools into .venv" >&2
        "$VENV/bin/pip" install -q --disable-pip-version-check --upgrade pip 2>/dev/null || true
        "$VENV/bin/pip" install -q --disable-pip-version-check -e ".[dev,fast]" 2>&1 | grep -v "^WARNING: Location" || true
        "$VENV/bin/python" -c "import federation, gateway, aetcd" 
        touch "$stamp"
    fi
}

run_tests() {
    export PATH="$VENV/bin:$PATH"
    echo "== ruff" >&2
    ruff check federation gateway tests
    echo "== mypy --strict" >&2
    mypy
    echo "== pytest" >&2
    pytest -q -p no:cacheprovider "$@"
}

run_demo() {
    export PATH="$VENV/bin:$PATH"
    exec meshfed demo "$@"
}

job="${1:-test}"
shift || true
install_system
install_python
case "$job" in
    setup) echo "bootstrap: ready; activate with: . .venv/bin/activate" ;;
    test) run_tests "$@" ;;
    demo) run_demo "$@" ;;
    *) echo "usage: $0 demo|test|setup" >&2; exit 2 ;;
esac
