#!/usr/bin/env bash
# The GPU checks of the engine (see scripts/gpu_check.py); run on a CUDA machine after `make .venv/.installed`.
set -euo pipefail
cd "$(dirname "$0")/.."
.venv/bin/python scripts/gpu_check.py "$@"
