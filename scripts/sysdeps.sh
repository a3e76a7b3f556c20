#!/usr/bin/env bash
# Install the Debian libraries the embedded Triton stack links, only if they are missing.
#   libpython3.X  - the Python-backend stub (triton_python_backend_stub) links libpython3.X.so
#   libb64-0d     - perf_analyzer from the tritonclient wheel links libb64.so.0d
#   shellcheck    - lints build/*.sh (tests/test_engines_sh.py runs it when installed)
set -euo pipefail
pyver=$(python3 -c 'import sys; print(f"{sys.version_info.major}.{sys.version_info.minor}")')
need=()
for pkg in "libpython${pyver}" libb64-0d shellcheck; do
  dpkg -s "$pkg" >/dev/null 2>&1 || need+=("$pkg")
done
if [ ${#need[@]} -eq 0 ]; then
  exit 0
fi
if [ "$(id -u)" -ne 0 ]; then
  echo "missing Debian packages: ${need[*]}; run: sudo apt-get install -y ${need[*]}" >&2
  exit 1
fi
echo "installing Debian packages: ${need[*]}"
apt-get update -qq
DEBIAN_FRONTEND=noninteractive apt-get install -y -qq "${need[@]}" >/dev/null
