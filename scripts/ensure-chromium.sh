#!/usr/bin/env bash
# `make test` needs a browser for the Label Studio test: Debian's Chromium, driven by Playwright
# (browser downloads do not work offline).  As root we install it; otherwise we say exactly what
# to run and fail, so a missing browser is never a skipped or a confusing failed test.
set -euo pipefail
CHROMIUM=${LOOKFIRST_CHROMIUM:-$(command -v chromium || echo /usr/bin/chromium)}
if [ -x "$CHROMIUM" ]; then
  exit 0
fi
if [ "$(id -u)" = "0" ] && command -v apt-get >/dev/null 2>&1; then
  echo "make test: installing Debian's chromium for the browser test (about 20 s, 480 MB)"
  apt-get update -qq
  DEBIAN_FRONTEND=noninteractive apt-get install -y -qq chromium >/dev/null
  [ -x "$CHROMIUM" ] && exit 0
fi
cat >&2 <<MSG
make test: the browser test needs Chromium at $CHROMIUM, and it is not there.
  Debian/Ubuntu:  sudo apt-get install -y chromium
  elsewhere:      install Chromium and set LOOKFIRST_CHROMIUM=/path/to/chromium
MSG
exit 1
