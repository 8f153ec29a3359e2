#!/usr/bin/env bash
# Run the sandbox tests again as an unprivileged user (called by `make test`
# as root).  The user gets a copy of the tree it can read, with a virtual
# environment of its own, so the run does not depend on where the checkout
# lives or who owns it.
set -euo pipefail
user=${1:-srtkernel-test}
here=$(cd "$(dirname "$0")/.." && pwd)

id "$user" >/dev/null 2>&1 || useradd --create-home --shell /bin/bash "$user"
home=$(getent passwd "$user" | cut -d: -f6)
work="$home/srt-kernel-tests"

rm -rf "$work"
mkdir -p "$work"
tar -C "$here" --exclude=./.venv --exclude=./.git --exclude='*/__pycache__' \
    --exclude=./.pytest_cache --exclude=./.mypy_cache --exclude=./.hypothesis -cf - . \
  | tar -C "$work" -xf -
chown -R "$user:" "$work"

run() { runuser -u "$user" -- env -i HOME="$home" PATH=/usr/local/bin:/usr/bin:/bin LANG=C.UTF-8 "$@"; }
# Reuse the root venv's downloaded wheels through pip's cache of the user.
run bash -c "cd '$work' && python3 -m venv .venv && .venv/bin/pip install --quiet --upgrade pip && .venv/bin/pip install --quiet -e '.[test,demo]'"
run bash -c "cd '$work' && .venv/bin/python -m pytest -q -ra -m 'bwrap or unprivileged' -p no:cacheprovider"
