#!/usr/bin/env bash
# Installs schemathesis (pinned) into a cached virtualenv and prints the path of its `st`
# command. Used by tests/chaos_input.rs (scenario 10c). Needs Python 3 with venv and PyPI
# reachable through pip's ordinary configuration. Made once per version under
# ${DEVSET_CACHE:-~/.cache/devset}; a half-made venv (no `.complete`) is made again.
set -euo pipefail
version=4.32.5
cache=${DEVSET_CACHE:-$HOME/.cache/devset}
venv=$cache/schemathesis-$version
if [[ ! -f $venv/.complete ]]; then
    rm -rf "$venv"
    mkdir -p "$cache"
    python3 -m venv "$venv" >&2
    "$venv/bin/pip" install --quiet --disable-pip-version-check "schemathesis==$version" >&2
    touch "$venv/.complete"
fi
echo "$venv/bin/st"
