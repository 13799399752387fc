#!/usr/bin/env bash
# Set up everything the workbook needs on a fresh machine (Debian, Python 3.11, no GPU needed):
#   system packages, .venv with the pinned dependencies, MinkowskiEngine built for the installed torch,
#   and the headless browser used by the browser test.
# Idempotent: a stamp file records what was installed; re-running skips what is done.
set -euo pipefail
cd "$(dirname "$0")/.."

PYTHON=${PYTHON:-python3.11}
command -v "$PYTHON" >/dev/null 2>&1 || PYTHON=python3
VENV=${VENV:-.venv}
STAMP="$VENV/.bootstrap-stamp"
want_stamp="$(cat pyproject.toml scripts/bootstrap.sh scripts/build_minkowski.py 2>/dev/null | sha256sum | cut -c1-16)"

log() { printf '\033[1m[bootstrap]\033[0m %s\n' "$*"; }

# --- system packages (root only; otherwise print what is missing) -------------------------------
need_apt=()
[ -e /usr/include/x86_64-linux-gnu/openblas-pthread/cblas.h ] || [ -e /usr/include/openblas/cblas.h ] || \
  dpkg -s libopenblas-dev >/dev/null 2>&1 || need_apt+=(libopenblas-dev)
command -v chromium >/dev/null 2>&1 || need_apt+=(chromium)
if [ ${#need_apt[@]} -gt 0 ]; then
  if [ "$(id -u)" = 0 ] && command -v apt-get >/dev/null 2>&1; then
    log "installing system packages: ${need_apt[*]}"
    apt-get update -qq >/dev/null
    DEBIAN_FRONTEND=noninteractive apt-get install -y -qq "${need_apt[@]}" >/dev/null
  else
    log "WARNING: missing system packages (install them as root): ${need_apt[*]}"
  fi
fi

# --- git filter: notebooks are committed without outputs -------------------------------------------
# .gitattributes routes *.ipynb through the "nbstripout" filter; this points it at the venv's nbstripout
# (outputs and execution counts stripped, cell ids kept so diffs stay small). The notebook tests run
# exactly this command. Re-run on every bootstrap (cheap) so a moved checkout keeps a working filter.
configure_notebook_filter() {
  git rev-parse --is-inside-work-tree >/dev/null 2>&1 || return 0
  [ -x "$VENV/bin/python" ] && "$VENV/bin/python" -c "import nbstripout" 2>/dev/null || return 0
  local python
  python="$(cd "$VENV/bin" && pwd)/python"
  git config filter.nbstripout.clean "'$python' -m nbstripout --keep-id"
  git config filter.nbstripout.smudge cat
  git config diff.ipynb.textconv "'$python' -m nbstripout --keep-id -t"
  log "git filter nbstripout configured (notebooks are committed without outputs)"
}

# --- virtual environment ---------------------------------------------------------------------------
if [ -f "$STAMP" ] && [ "$(cat "$STAMP")" = "$want_stamp" ] && "$VENV/bin/python" -c "import distilvpr_lib" 2>/dev/null; then
  configure_notebook_filter
  log "environment up to date ($VENV)"
  exit 0
fi
[ -x "$VENV/bin/python" ] || { log "creating $VENV with $PYTHON"; "$PYTHON" -m venv "$VENV"; }
PIP="$VENV/bin/python -m pip"
log "installing torch 2.14.1 + torchvision 0.29.1 (local wheels where present)"
$PIP install -q --disable-pip-version-check torch==2.14.1 torchvision==0.29.1
log "installing the workbook with its extras (notebooks, dev, faiss, cluster)"
$PIP install -q --disable-pip-version-check -e ".[notebooks,dev,faiss,cluster]"
"$VENV/bin/python" -m ipykernel install --sys-prefix --name python3 --display-name "Python 3 (distilvpr)" >/dev/null
configure_notebook_filter

# --- MinkowskiEngine, built by the project (cached wheel keyed by torch version) ----------------------
if [ -f scripts/build_minkowski.py ]; then
  log "MinkowskiEngine: building or installing the cached wheel"
  if ! "$VENV/bin/python" scripts/build_minkowski.py; then
    log "WARNING: MinkowskiEngine build failed; the 'torch' sparse backend still works."
    log "         tests marked 'minkowski' will FAIL under 'make test' (DISTILVPR_REQUIRE_MINKOWSKI=1)."
  fi
fi
echo "$want_stamp" > "$STAMP"
log "done"
