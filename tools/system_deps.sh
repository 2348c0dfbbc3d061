#!/bin/sh
# Debian packages the integration tests need, installed only when missing (fast when present):
#   prometheus-alertmanager  real Alertmanager for `predaudit alerts forward` tests
#   chromium                 headless browser that renders `predaudit report` pages
# Idempotent: `apt-get update` runs only if something has to be installed.
set -eu

missing=""
command -v prometheus-alertmanager >/dev/null 2>&1 || missing="$missing prometheus-alertmanager"
command -v chromium >/dev/null 2>&1 || missing="$missing chromium"

if [ -z "$missing" ]; then
    exit 0
fi

if [ "$(id -u)" -eq 0 ]; then
    SUDO=""
elif command -v sudo >/dev/null 2>&1; then
    SUDO="sudo"
else
    echo "system_deps: need root (or sudo) to install:$missing" >&2
    exit 1
fi

echo "system_deps: installing$missing" >&2
$SUDO apt-get update -q
# shellcheck disable=SC2086  # word splitting of the package list is intended
DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -q --no-install-recommends $missing
