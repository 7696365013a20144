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
"$VENV/bin/python" -m pip install -q -e '.[test,serve,experiments]'

# TorchRec, for embedding tables sharded across processes (--embedding-sharding), with FBGEMM's CPU
# kernels: the release pair built against the installed torch (FBGEMM's compiled ops must match its
# ABI). torchrec's metadata asks for fbgemm-gpu, the CUDA package, so it is installed with --no-deps
# beside fbgemm-gpu-cpu (a GPU machine takes fbgemm-gpu from PyTorch's CUDA index instead: README).
# Optional: without it, everything but sharding works, and a failed install is undone.
TORCH_MINOR=$("$VENV/bin/python" -c "import torch; print('.'.join(torch.__version__.split('+')[0].split('.')[:2]))")
case "$TORCH_MINOR" in
  2.13) PAIR=1.8.0 ;;  # verified here: torchrec 1.8.0 + fbgemm-gpu-cpu 1.8.0 with torch 2.13.0
  *) PAIR=${TORCHREC_VERSION:-} ;;
esac
if [ -n "$PAIR" ] && ! "$VENV/bin/python" -c "import torchrec, fbgemm_gpu" 2>/dev/null; then
  TORCH_PIN="torch==$("$VENV/bin/python" -c "import torch; print(torch.__version__.split('+')[0])")"
  if "$VENV/bin/python" -m pip install -q "fbgemm-gpu-cpu==${FBGEMM_VERSION:-$PAIR}" "$TORCH_PIN" \
    && "$VENV/bin/python" -m pip install -q --no-deps "torchrec==$PAIR" \
    && "$VENV/bin/python" -m pip install -q --no-warn-conflicts tensordict 'torchmetrics==1.0.3' tqdm pyre-extensions "$TORCH_PIN" \
    && "$VENV/bin/python" -c "import torchrec.distributed, fbgemm_gpu" 2>/dev/null; then
    echo "TorchRec $PAIR with fbgemm-gpu-cpu ${FBGEMM_VERSION:-$PAIR} installed"
  else
    "$VENV/bin/python" -m pip uninstall -q -y torchrec fbgemm-gpu-cpu >/dev/null 2>&1 || true
    echo "TorchRec $PAIR did not install with torch $TORCH_MINOR: sharding is off (everything else works)"
  fi
elif [ -z "$PAIR" ]; then
  echo "no TorchRec release pair known for torch $TORCH_MINOR (set TORCHREC_VERSION=...): sharding is off"
fi
"$VENV/bin/python" -c "import recforge, torch; print(f'recforge {recforge.__version__} with torch {torch.__version__}')"
