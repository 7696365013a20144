#!/usr/bin/env bash
# Create the virtual environment and install recforge into it (editable, with test tools).
# torch: an importable torch >= 2.4 (e.g. a GPU build already on the machine) is kept; otherwise
# torch==2.13.0 is installed, whose CPU wheel pip finds locally here instead of a multi-GB CUDA one.
set -euo pipefail
PYTHON=${PYTHON:-python3}
VENV=${VENV:-.venv}
[ -x "$VENV/bin/python" ] || "$PYTHON" -m venv --system-site-packages "$VENV"
if ! "$VENV/bin/python" - <<'PY' 2>/dev/null
import torch, sys
major, minor = (int(x) for x in torch.__version__.split(".")[:2])
sys.exit(0 if (major, minor) >= (2, 4) else 1)
PY
then
  "$VENV/bin/python" -m pip install -q torch==2.13.0
fi
"$VENV/bin/python" -m pip install -q -e '.[test]'
"$VENV/bin/python" -c "import recforge, torch; print(f'recforge {recforge.__version__} with torch {torch.__version__}')"
