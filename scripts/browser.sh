#!/usr/bin/env bash
# The browser of the console's tests: Debian's Chromium, driven by
# playwright-core (pinned in tests/console/package-lock.json, from npm).
# Installs what is missing and prints the Chromium binary's path.
#
#   BATON_CHROMIUM   a Chromium binary to use instead of looking for one
set -euo pipefail
cd "$(dirname "$0")/.."

die() {
  echo "browser.sh: $*" >&2
  exit 1
}

find_chromium() {
  if [ -n "${BATON_CHROMIUM:-}" ]; then
    [ -x "$BATON_CHROMIUM" ] || die "BATON_CHROMIUM=$BATON_CHROMIUM is not an executable"
    echo "$BATON_CHROMIUM"
    return 0
  fi
  for c in chromium chromium-browser; do
    if command -v "$c" >/dev/null 2>&1; then
      command -v "$c"
      return 0
    fi
  done
  return 1
}

if ! chromium="$(find_chromium)"; then
  if command -v apt-get >/dev/null 2>&1 && [ "$(id -u)" = 0 ]; then
    echo "Installing Chromium (Debian package chromium)" >&2
    DEBIAN_FRONTEND=noninteractive apt-get update -qq >&2
    DEBIAN_FRONTEND=noninteractive apt-get install -y -qq chromium >&2 ||
      die "apt-get could not install chromium"
    chromium="$(find_chromium)" || die "chromium installed, but no chromium binary is on the PATH"
  else
    die "Chromium is needed for the console's browser tests: install it (Debian: apt-get install chromium) or set BATON_CHROMIUM"
  fi
fi

command -v node >/dev/null 2>&1 || die "Node.js 18 or newer is needed for the console's browser tests: install it (Debian: apt-get install nodejs npm)"
command -v npm >/dev/null 2>&1 || die "npm is needed for the console's browser tests: install it (Debian: apt-get install npm)"
# npm ci when the installed playwright-core is not the locked one.
want="$(node -p "require('./tests/console/package-lock.json').packages['node_modules/playwright-core'].version")"
have="$(node -p "try { require('./tests/console/node_modules/playwright-core/package.json').version } catch (e) { '' }")"
if [ "$want" != "$have" ]; then
  (cd tests/console && npm ci --no-audit --no-fund --loglevel=error >&2) ||
    die "npm could not install playwright-core $want (see above)"
fi
echo "$chromium"
