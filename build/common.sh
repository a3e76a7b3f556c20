# Helpers shared by build/engines.sh and build/launch.sh (sourced, not run). The caller sets SCRIPT to its
# own name before sourcing, so every message names the script the user ran.
# shellcheck shell=bash

# shellcheck disable=SC2034  # used by the scripts that source this file
ROOT=$(cd -- "$(dirname -- "${BASH_SOURCE[0]}")/.." && pwd)

die() { printf '%s: error: %s\n' "$SCRIPT" "$*" >&2; exit 1; }
note() { printf '%s: %s\n' "$SCRIPT" "$*" >&2; }
# --help prints the caller's header comment (from line 2 to `set -euo pipefail`).
usage() { sed -n '2,/^set -euo pipefail$/p' "$1" | sed '$d; s/^# \{0,1\}//'; }
# value OPTION [VALUE ...]: the option's value, or a one-line error when it is missing or empty.
value() {
  if [ $# -lt 2 ] || [ -z "$2" ]; then die "$1 needs a value (see --help)"; fi
  printf '%s' "$2"
}
