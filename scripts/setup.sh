# Sourced by scripts/demo and scripts/test, from the repository's root: what both need before
# they run anything.

# `venv EXTRAS`: create .venv if missing, install logagg into it, editable, with EXTRAS.
venv() {
  if ! python3 -c 'import sys; sys.exit(sys.version_info < (3, 11))' 2>/dev/null; then
    echo "logagg needs Python 3.11 or newer as python3; found: $(python3 --version 2>&1)" >&2
    exit 2
  fi
  # Tested on pip, not on python: a venv left half-made (no ensurepip) has python but no pip.
  [ -x .venv/bin/pip ] || python3 -m venv .venv
  .venv/bin/pip install -q --disable-pip-version-check -e "$1"
}

# PostgreSQL refuses to run as root; as root, logagg runs it as the `postgres` system user.
# Debian's postgresql package creates that user; pip's PostgreSQL does not, so a machine
# without the package gets it here (the package, if installed later, keeps it).
postgres_user() {
  if [ "$(id -u)" = 0 ] && ! id postgres >/dev/null 2>&1; then
    echo "creating the system user 'postgres' to run PostgreSQL as (we are root)" >&2
    useradd --system --user-group --no-create-home --shell /usr/sbin/nologin postgres
  fi
}
