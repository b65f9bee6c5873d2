# Sourced by scripts/*: create or refresh the project virtualenv in .venv (only when setup.cfg, pyproject.toml or the
# C source of the head scanner changed, or the scanner is not built in the tree where a compiler is at hand).
# Usage: ensure_venv EXTRAS   (e.g. ensure_venv "fast" or ensure_venv "test,fast")
ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
VENV="${EDGEPROXY_VENV:-$ROOT/.venv}"
SCANNER_C="$ROOT/edgeproxy/http/_headscan.c"

ensure_venv() {
  local extras="$1"
  local stamp="$VENV/.edgeproxy-stamp"
  local want
  want="$(cat "$ROOT/setup.cfg" "$ROOT/pyproject.toml" "$SCANNER_C" | sha256sum | cut -c1-16)-$extras"
  if [ ! -x "$VENV/bin/python" ]; then
    python3 -m venv "$VENV"
  fi
  ensure_build_tools
  if [ ! -f "$stamp" ] || ! grep -qx -- "$want" "$stamp" 2>/dev/null || ! scanner_built; then
    "$VENV/bin/python" -m pip install -q --disable-pip-version-check --upgrade pip >/dev/null 2>&1 || true
    "$VENV/bin/python" -m pip install -q --disable-pip-version-check -e "$ROOT[$extras]"
    echo "$want" > "$stamp"
  fi
}

# Install Debian packages that are missing; 'apt-get update' at most once per call.
ensure_debs() {
  local missing=()
  for pkg in "$@"; do
    dpkg-query -W -f='${Status}' "$pkg" 2>/dev/null | grep -q "install ok installed" || missing+=("$pkg")
  done
  if [ ${#missing[@]} -gt 0 ]; then
    echo "installing Debian packages: ${missing[*]}" >&2
    export DEBIAN_FRONTEND=noninteractive
    apt-get update -q >/dev/null
    apt-get install -y -q --no-install-recommends "${missing[@]}" >/dev/null
  fi
}

# The compiled head scanner (an optional extension: without it the Python twin runs) needs a C compiler and the
# interpreter's headers (Debian: gcc, python3-dev for the distribution's python3). Installed when missing and root.
ensure_build_tools() {
  if command -v cc >/dev/null && [ -f "$(python_include)/Python.h" ]; then
    return
  fi
  if [ "$(id -u)" -eq 0 ] && command -v apt-get >/dev/null; then
    ensure_debs gcc libc6-dev python3-dev
  fi
  command -v cc >/dev/null && [ -f "$(python_include)/Python.h" ] \
    || echo "no C compiler or no Python headers: the head scanner's Python twin will run" >&2
}

python_include() {
  "$VENV/bin/python" -c 'import sysconfig; print(sysconfig.get_paths()["include"])'
}

# The editable install builds the extension next to its source; a tree without it (git clean) is rebuilt, unless no
# compiler could build it anyway.
scanner_built() {
  compgen -G "$ROOT/edgeproxy/http/_headscan.*.so" >/dev/null || ! command -v cc >/dev/null
}
