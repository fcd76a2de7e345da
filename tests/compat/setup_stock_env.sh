#!/usr/bin/env bash
# Create a virtualenv holding the STOCK FMA Django service (fma-django 0.0.1[api] +
# fma-core 0.0.1) for the compatibility tests.
#
# Usage: tests/compat/setup_stock_env.sh [VENV_DIR]      (default: .tox-stock)
# Env:   PYTHON  interpreter to build the venv with (default: python3.11; must be 3.11)
#
# Every package is pinned in stock-requirements.txt and installed with --no-deps: the stock
# wheels pin numpy==1.22.2 and psycopg2-binary==2.9.3, which have no Python 3.11 wheels, and
# pip cannot override a dependency's pin otherwise. Idempotent: a marker file in the venv
# records the hash of the requirements and of this script; when it matches, nothing is done.
# When it does not, the venv is rebuilt from scratch.
set -euo pipefail

here="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
venv="${1:-.tox-stock}"
python="${PYTHON:-python3.11}"
reqs="$here/stock-requirements.txt"
marker="$venv/.fma-stock-env-complete"

want="$(cat "$reqs" "${BASH_SOURCE[0]}" | sha256sum | cut -d' ' -f1)"
if [[ -f "$marker" && "$(cat "$marker")" == "$want" && -x "$venv/bin/python" ]]; then
    echo "stock env up to date: $venv"
    exit 0
fi

"$python" -c 'import sys; sys.exit(sys.version_info[:2] != (3, 11))' || {
    echo "error: $python is not Python 3.11 (set PYTHON=...)" >&2
    exit 1
}

rm -f "$marker"
"$python" -m venv --clear "$venv"
# (the filter drops a warning this machine's pip config prints for each package)
"$venv/bin/python" -m pip install --quiet --no-deps --disable-pip-version-check -r "$reqs" \
    2> >(grep -v 'is ignored: it is neither a file nor a directory' >&2)

# The only broken requirements allowed are the two pins replaced on purpose.
check="$("$venv/bin/python" -m pip check 2>&1 || true)"
unexpected="$(grep -v -E 'numpy==1\.22\.2|psycopg2-binary==2\.9\.3|^No broken requirements' <<<"$check" || true)"
if [[ -n "$unexpected" ]]; then
    echo "error: unexpected dependency problems in $venv:" >&2
    echo "$unexpected" >&2
    exit 1
fi
# fma_django's own modules need Django settings; these imports need none.
"$venv/bin/python" -c 'import django, mptt, rest_framework, django_filters, numpy, fma_core.algorithms.aggregators.common, fma_django.version'

echo "$want" >"$marker"
echo "stock env ready: $venv"
