#!/usr/bin/env bash
# Build the separate RecBole 1.2.1 environment used by the side-by-side peer benchmarks.
# RecBole does not import under numpy 2, so it gets its own venv: numpy<2, pandas<3, setuptools<81, and the same
# CPU torch wheel as the zoo. Usage: bash benchmarks/peers/setup_recbole_env.sh [VENV_DIR]
# Prints the venv's python path on its last line.
set -euo pipefail
venv="${1:-$(dirname "$0")/../.cache/recbole-venv}"
if [ ! -x "$venv/bin/python" ] || ! "$venv/bin/python" -c "import recbole" 2>/dev/null; then
  python3 -m venv "$venv"
  "$venv/bin/pip" install -q torch==2.13.0
  "$venv/bin/pip" install -q "numpy<2" "pandas<3" "setuptools<81" "recbole==1.2.1" "scipy<1.14" "ray<2.10" \
    "tensorboard" "thop" "tabulate" "plotly" "texttable" "psutil" "colorlog==4.7.2" "colorama==0.4.4"
fi
"$venv/bin/python" -c "import recbole, numpy; print('recbole', recbole.__version__, 'numpy', numpy.__version__)" >&2
cd "$venv" && pwd -P | sed 's|$|/bin/python|'
