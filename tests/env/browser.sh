#!/usr/bin/env bash
# Component: a headless browser for the web page's tests (tests/web.rs, tests/bench's web part).
#
#   bash tests/env/browser.sh up|down
#
# Installs Debian's `chromium` from apt when it is missing, and Playwright (`playwright-core`
# from npm, as pinned by tests/web/package-lock.json) with `npm ci` into
# $DEVSET_CACHE/web-npm-<hash of the lock file>, once per lock file. Playwright never downloads
# a browser: the scripts launch the system Chromium (executablePath). Nothing runs in the
# background, so `down` has nothing to stop.
# Appends to the env file:
#   CHROMIUM                 the browser's path (/usr/bin/chromium)
#   DEVSET_WEB_NODE_MODULES  the node_modules folder of tests/web (NODE_PATH for the scripts)
set -euo pipefail
# shellcheck source-path=SCRIPTDIR source=lib.sh
source "$(dirname "$0")/lib.sh"

WEB_DIR="$DEVSET_REPO/tests/web"

# chromium_path: prints the installed browser, or nothing.
chromium_path() {
  local p
  for p in /usr/bin/chromium /usr/lib/chromium/chromium; do
    [ -x "$p" ] && { echo "$p"; return 0; }
  done
  return 0
}

install_chromium() {
  [ -n "$(chromium_path)" ] && return 0
  # A lock keeps two environments from running apt-get at once.
  (
    flock 9
    [ -n "$(chromium_path)" ] && exit 0
    apt_install chromium
  ) 9>"$DEVSET_CACHE/.apt.lock"
  [ -n "$(chromium_path)" ] || die "browser: apt-get install chromium gave no /usr/bin/chromium"
}

# install_playwright: prints the node_modules folder, installing it the first time.
install_playwright() {
  local hash dir
  hash=$(cat "$WEB_DIR/package.json" "$WEB_DIR/package-lock.json" | sha256sum | cut -c1-16)
  dir="$DEVSET_CACHE/web-npm-$hash"
  if [ ! -f "$dir/.done" ]; then
    (
      flock 9
      [ -f "$dir/.done" ] && exit 0
      log "npm ci (tests/web: playwright-core) into $dir"
      rm -rf "$dir" && mkdir -p "$dir"
      cp "$WEB_DIR/package.json" "$WEB_DIR/package-lock.json" "$WEB_DIR/.npmrc" "$dir/"
      # playwright-core has no install script and downloads nothing; the variable is a fence.
      (cd "$dir" && PLAYWRIGHT_SKIP_BROWSER_DOWNLOAD=1 npm ci --no-audit --no-fund --loglevel=error) >&2 ||
        die "browser: npm ci failed in $dir"
      touch "$dir/.done"
    ) 9>"$DEVSET_CACHE/.web-npm.lock"
  fi
  echo "$dir/node_modules"
}

up() {
  command -v node >/dev/null || die "browser: node is not installed (Node.js 18+ runs the Playwright scripts)"
  install_chromium
  local chromium modules version
  chromium=$(chromium_path)
  modules=$(install_playwright)
  version=$("$chromium" --headless --no-sandbox --version 2>/dev/null || true)
  log "browser: ${version:-$chromium}; playwright-core in $modules"
  # Replaces its own lines (an `up` appending to a running environment may repeat).
  [ ! -f "$DEVSET_ENV_FILE" ] ||
    sed -i -e '/^export CHROMIUM=/d' -e '/^export DEVSET_WEB_NODE_MODULES=/d' "$DEVSET_ENV_FILE"
  env_line CHROMIUM "$chromium"
  env_line DEVSET_WEB_NODE_MODULES "$modules"
}

case "${1:-}" in
  up) up ;;
  down) : ;;
  *) die "usage: browser.sh up|down" ;;
esac
