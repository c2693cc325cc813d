#!/usr/bin/env bash
# GPU truth (issue 22) on the GPU machine: results in $OUT (default /tmp/gpu_truth_out).
#   bash benchmarks/gpu_truth.sh [--dry-run] [--budget SECONDS] [--steps a,b]
# Installs pydantic (a budgetlm dependency) from build/gpu_wheels/ when the machine's python
# lacks it (no registry there), then runs benchmarks/gpu_truth.py, logging to $OUT.
set -uo pipefail
cd "$(dirname "$0")/.." || exit 1
export OUT="${OUT:-/tmp/gpu_truth_out}" PYTHONUNBUFFERED=1
mkdir -p "$OUT"
PY="${PYTHON:-python3}"
SITE=/tmp/gpu_truth_site
if ! "$PY" -c "import pydantic" 2>/dev/null; then
  if ls build/gpu_wheels/*.whl >/dev/null 2>&1; then
    "$PY" -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade \
      --target "$SITE" build/gpu_wheels/*.whl || echo "gpu_truth.sh: wheel install failed"
    export PYTHONPATH="$SITE${PYTHONPATH:+:$PYTHONPATH}"
  else
    echo "gpu_truth.sh: pydantic missing and no build/gpu_wheels/*.whl to install"
  fi
fi
export PYTHONPATH="$PWD${PYTHONPATH:+:$PYTHONPATH}"
"$PY" -c "import budgetlm.config, torch; print('budgetlm imports; torch', torch.__version__)"
"$PY" benchmarks/gpu_truth.py --out "$OUT" "$@" 2>&1 | tee "$OUT/gpu_truth.log"
