#!/usr/bin/env bash
# Everything a fresh machine needs for rtxpack's demo and tests: nginx (for the download tests)
# and the package with its extras. Safe to run twice.
set -euo pipefail
cd "$(dirname "$0")/.."
if ! command -v nginx >/dev/null 2>&1 && [ ! -x /usr/sbin/nginx ]; then
  SUDO=""; [ "$(id -u)" = 0 ] || SUDO="sudo"
  if command -v apt-get >/dev/null 2>&1; then
    $SUDO apt-get update -qq >/dev/null
    DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -qq nginx-light >/dev/null 2>&1 \
      || DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -qq nginx >/dev/null
  else
    echo "setup: install nginx with your package manager (the download tests serve a repository with it)" >&2
  fi
fi
PY=${PYTHON:-python3}
$PY -m pip install -q --disable-pip-version-check -e '.[rtx,gpu,test]'
echo "setup: rtxpack $($PY -c 'import rtxpack; print(rtxpack.__version__)') installed"
