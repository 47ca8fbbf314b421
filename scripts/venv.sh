# Sourced by scripts/demo and scripts/test, from the repository's root: `venv EXTRAS` creates
# .venv if missing and installs logagg into it, editable, with EXTRAS (e.g. '.[servers]').
venv() {
  if ! python3 -c 'import sys; sys.exit(sys.version_info < (3, 11))' 2>/dev/null; then
    echo "logagg needs Python 3.11 or newer as python3; found: $(python3 --version 2>&1)" >&2
    exit 2
  fi
  # Tested on pip, not on python: a venv left half-made (no ensurepip) has python but no pip.
  [ -x .venv/bin/pip ] || python3 -m venv .venv
  .venv/bin/pip install -q --disable-pip-version-check -e "$1"
}
