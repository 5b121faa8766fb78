#!/bin/bash
# The GPU checks in one command, for a machine with a GPU and no network: the CUDA tests
# (tests/test_cuda.py), then the benchmark on CUDA. Prints both; writes logs into OUT.
#
#   scripts/device_check.sh DATA_ROOT [OUT] [bench.py options...]
#
# Python packages the machine lacks can travel as wheels in .whl/ (installed here with --target, no
# network): Hydra's, its joblib launcher (the default launcher that conf/ composes: without it every command
# fails with "Could not load 'hydra/launcher/joblib'") and fmnist's own (`pip wheel --no-deps -w .whl .`).
# docs/benchmarks.md says where this repository's benchmark data and wheels come from.
set -euo pipefail
root=${1:?usage: scripts/device_check.sh DATA_ROOT [OUT] [bench.py options...]}
out=${2:-.}
shift $(( $# < 2 ? $# : 2 ))
if compgen -G ".whl/*.whl" > /dev/null; then
    python3 -m pip install -q --no-index --no-deps --no-compile --target /tmp/site .whl/*.whl
    export PYTHONPATH=/tmp/site PATH=/tmp/site/bin:$PATH
fi
# Each CLI test in a fresh process, as on the GPU machine where these tests were run (not from the tests' fork
# server, which a CUDA context must never be forked across).
export PYTHONUNBUFFERED=1 FMNIST_TEST_FORK=0
nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv,noheader || true
python3 -c "import torch; print('torch', torch.__version__, 'cuda', torch.cuda.is_available())"
status=0
python3 -m pytest -q -p no:cacheprovider tests/test_cuda.py 2>&1 | tee "$out/test_cuda.log" || status=1
python3 scripts/bench.py --root "$root" --device cuda --json "$out/bench-cuda.json" "$@" 2>&1 \
    | tee "$out/bench-cuda.md" || status=1
exit $status
