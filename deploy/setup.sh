#!/usr/bin/env bash
# Installs what nodeguard needs on Debian/Ubuntu (as root) and creates the venv.
#   deploy/setup.sh           runtime only, venv at /opt/nodeguard (for nodes)
#   deploy/setup.sh --dev     runtime + test tools, venv at ./.venv (for the test suite)
set -euo pipefail
cd "$(dirname "$0")/.."
. deploy/system_python.sh
dev=0; [ "${1:-}" = "--dev" ] && dev=1

# hping3: the flood generator of `nodeguard demo`, which must work right after this setup (README)
runtime_pkgs=(nftables libnftables1 iptables ipset iproute2 python3 python3-venv python3-pip python3-dev gcc libnetfilter-queue-dev hping3)
# systemd: tests run the unit under systemd --user; clang, linux-libc-dev: test_datapath.py compiles BPF
# libsqlite3-0: the CrowdSec Local API the tests run (crowdsec itself: below)
test_pkgs=(hping3 conntrack iputils-ping iproute2 util-linux procps systemd clang linux-libc-dev libsqlite3-0
           ca-certificates)
pkgs=("${runtime_pkgs[@]}"); [ $dev = 1 ] && pkgs+=("${test_pkgs[@]}")

export DEBIAN_FRONTEND=noninteractive
apt-get update -qq
apt-get install -y -qq "${pkgs[@]}" >/dev/null
if [ $dev = 1 ]; then
  # promtool (test_alert_rules.py) ships only in Debian's prometheus package: the server is not wanted
  apt-get install -y -qq --no-install-recommends prometheus >/dev/null
  systemctl disable --now prometheus >/dev/null 2>&1 || true
fi

if [ $dev = 1 ]; then venv=.venv; else venv=/opt/nodeguard; fi
if [ $dev = 1 ]; then
  # crowdsec and cscli for tests/crowdsec_lab.py, unpacked into the venv, not installed: the package's
  # post-install registers with the Central API (fails offline, leaving dpkg half-configured) and
  # would start a system LAPI using /etc/crowdsec
  deb=$(mktemp -d)
  (cd "$deb" && apt-get download -qq crowdsec 2>/dev/null)
  rm -rf "$venv/crowdsec" && mkdir -p "$venv" && dpkg-deb -x "$deb"/crowdsec_*.deb "$venv/crowdsec"
  rm -rf "$deb"
fi
python=$(system_python) || exit 2
"$python" -m venv "$venv"
"$venv/bin/pip" install -q --upgrade pip >/dev/null
if [ $dev = 1 ]; then "$venv/bin/pip" install -q -e '.[test,plot,demo]'; else "$venv/bin/pip" install -q '.[plot,demo]'; fi
if [ $dev = 0 ]; then
  # The unit may set nf_conntrack_tcp_loose: the module must be loaded before its sandbox is built.
  echo nf_conntrack > /etc/modules-load.d/nodeguard.conf
fi
echo "nodeguard installed in $venv (python: $(readlink -f "$venv/bin/python"))"
