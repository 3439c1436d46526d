#!/usr/bin/env bash
# Everything a fresh machine needs, idempotent: system packages (apt), the Python virtual
# environment with the project installed, and the pinned npm package of MicroPython.
set -euo pipefail
cd "$(dirname "$0")/.."

need_apt=()
command -v node >/dev/null || need_apt+=(nodejs npm)
command -v mosquitto >/dev/null || [ -x /usr/sbin/mosquitto ] || need_apt+=(mosquitto)
command -v mosquitto_passwd >/dev/null || need_apt+=(mosquitto-clients)
command -v openssl >/dev/null || need_apt+=(openssl)
[ -d /usr/lib/postgresql ] && ls /usr/lib/postgresql/*/bin/initdb >/dev/null 2>&1 || need_apt+=(postgresql)
[ -f /usr/share/iso-codes/json/iso_3166-2.json ] || need_apt+=(iso-codes)
# the console's browser tests drive Debian's chromium through Playwright (no browser download)
[ -x /usr/bin/chromium ] || need_apt+=(chromium)
if [ ${#need_apt[@]} -gt 0 ]; then
  echo "setup: apt-get install ${need_apt[*]}"
  SUDO=""; [ "$(id -u)" = 0 ] || SUDO="sudo"
  $SUDO apt-get update -qq
  DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -qq "${need_apt[@]}" >/dev/null
  # Debian starts the packaged services; the project runs its own instances on its own ports.
  $SUDO systemctl stop mosquitto >/dev/null 2>&1 || $SUDO service mosquitto stop >/dev/null 2>&1 || true
fi

PY=${PYTHON:-python3}
if [ ! -x .venv/bin/python ]; then
  "$PY" -m venv .venv
fi
stamp=.venv/.nabd-installed
if [ ! -f "$stamp" ] || [ pyproject.toml -nt "$stamp" ] || [ compat/pyproject.toml -nt "$stamp" ]; then
  .venv/bin/pip install -q --upgrade pip
  # compat/: the CPython stand-ins for MicroPython's `micropython` and `framebuf` (its own distribution)
  .venv/bin/pip install -q -e ".[dev,bench]" -e ./compat
  rm -f "$(.venv/bin/python -c 'import sysconfig; print(sysconfig.get_paths()["purelib"])')/nabd-compat.pth"
  touch "$stamp"
fi

if [ ! -f node_modules/@micropython/micropython-webassembly-pyscript/micropython.mjs ] || [ package.json -nt node_modules/.package-lock.json ]; then
  [ -L node_modules ] && rm node_modules
  npm install --no-audit --no-fund --silent
fi
echo "setup: ok"
