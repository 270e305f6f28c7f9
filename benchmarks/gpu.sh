#!/usr/bin/env bash
# One prepared GPU benchmark run (issue 7): ResNet-50 at 224 px, SimCLR and BYOL, bf16,
# channels-last, torch.compile off and on, in-memory synthetic data and the JPEG folder path;
# images/s and model FLOPs utilisation. See benchmarks/gpu.py for what is timed.
#
# On a GPU machine with internet, in the repository root:
#     pip install -e . && bash benchmarks/gpu.sh
# On an offline GPU machine whose Python has torch but not twinview's small dependencies
# (omegaconf, antlr4), first, on a machine with internet, in the repository root:
#     bash benchmarks/gpu.sh --prepare-wheels      # writes .whl/ (git-ignored)
# then copy the repository (with .whl/) over and run `bash benchmarks/gpu.sh` there.
#
# Results: $OUT/gpu.md (table) and $OUT/gpu.log (OUT defaults to ./gpu-results).
# Takes about 6-8 minutes on an H200 (two torch.compile warm-ups of about a minute each).
set -euo pipefail
cd "$(dirname "$0")/.."

if [[ "${1:-}" == "--prepare-wheels" ]]; then
    rm -rf .whl && mkdir -p .whl
    python3 -m pip wheel -q --no-deps -w .whl "omegaconf==2.3.0" "antlr4-python3-runtime==4.9.3"
    ls -l .whl
    exit 0
fi

PY=${PYTHON:-python3}
OUT=${OUT:-gpu-results}
mkdir -p "$OUT"
export PYTHONUNBUFFERED=1 PYTHONPATH="$PWD${PYTHONPATH:+:$PYTHONPATH}"

if ! "$PY" -c "import omegaconf" 2>/dev/null; then
    if compgen -G ".whl/*.whl" >/dev/null; then
        "$PY" -m pip install -q --no-index --no-deps --no-compile --target /tmp/twinview-site .whl/*.whl
        export PYTHONPATH="$PYTHONPATH:/tmp/twinview-site"
    else
        echo "gpu.sh: omegaconf is not installed and there is no .whl/ folder; run" >&2
        echo "  pip install -e .   (with internet) or  bash benchmarks/gpu.sh --prepare-wheels" >&2
        exit 1
    fi
fi

{
    date -u
    nvidia-smi --query-gpu=name,memory.total,driver_version,clocks.max.sm --format=csv || true
    nproc
    # The bf16 matrix-product ceiling of this card (8192^3, mean of 10 after 3 warm-ups).
    "$PY" - <<'EOF'
import torch
a = torch.randn(8192, 8192, device="cuda", dtype=torch.bfloat16)
b = torch.randn(8192, 8192, device="cuda", dtype=torch.bfloat16)
for _ in range(3):
    a @ b
start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
start.record()
for _ in range(10):
    a @ b
end.record()
torch.cuda.synchronize()
seconds = start.elapsed_time(end) / 1e3 / 10
print(f"bf16 8192^3 matmul: {2 * 8192**3 / seconds / 1e12:.0f} TFLOP/s")
EOF
    "$PY" benchmarks/gpu.py --out "$OUT/gpu.md" "$@"
} 2>&1 | tee "$OUT/gpu.log"
