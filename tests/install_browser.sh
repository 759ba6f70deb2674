#!/usr/bin/env bash
# Installs Debian's Chromium for the browser tests (tests/browser) when it is missing.
# Part of the README's test command; it never fails that command: without a way to
# install, it says so, and the browser tests skip (or fail, under CI=true).
set -uo pipefail
for name in chromium chromium-browser google-chrome; do
    command -v "$name" >/dev/null 2>&1 && exit 0
done
if ! command -v apt-get >/dev/null 2>&1; then
    echo "install_browser: no Chromium, and no apt-get to install Debian's chromium package" >&2
    exit 0
fi
if [ "$(id -u)" = 0 ]; then
    sudo=""
elif command -v sudo >/dev/null 2>&1 && sudo -n true 2>/dev/null; then
    sudo="sudo -n"
else
    echo "install_browser: no Chromium, and no root or sudo to install it" >&2
    exit 0
fi
echo "install_browser: installing Debian's chromium package for the browser tests" >&2
$sudo apt-get update -qq >/dev/null 2>&1
DEBIAN_FRONTEND=noninteractive $sudo apt-get install -y -qq chromium >/dev/null 2>&1 \
    || echo "install_browser: apt-get install chromium failed" >&2
exit 0
