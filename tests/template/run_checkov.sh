#!/usr/bin/env bash
# checkov on template.yaml, in its own venv: checkov pins boto3/botocore/networkx versions that
# conflict with the dev venv. Skipped checks and their reasons live in .checkov.yaml (and README).
#   tests/template/run_checkov.sh            # uses/creates .venv-checkov
#   CHECKOV_VENV=/path tests/template/run_checkov.sh
set -euo pipefail
cd "$(dirname "$0")/../.."

CHECKOV_VERSION=3.3.30
VENV=${CHECKOV_VENV:-.venv-checkov}
PYTHON=${PYTHON:-python3}
STAMP="$VENV/.checkov-$CHECKOV_VERSION"

if [ ! -f "$STAMP" ]; then
    rm -rf "$VENV"
    "$PYTHON" -m venv "$VENV"
    "$VENV/bin/pip" install --quiet --disable-pip-version-check "checkov==$CHECKOV_VERSION" 2>&1 \
        | grep -v '^WARNING: Location' || true
    "$VENV/bin/checkov" --version >/dev/null
    touch "$STAMP"
fi

# --skip-download: no Prisma Cloud guideline download (no network needed, no traceback).
exec "$VENV/bin/checkov" --config-file .checkov.yaml -f template.yaml --framework cloudformation \
    --compact --quiet --skip-download "$@"
