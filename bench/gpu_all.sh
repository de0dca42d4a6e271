#!/usr/bin/env bash
# Issue 20's GPU benches in one command, for a session that is lent the H100 (15 minutes of device time in all,
# machine start included): bench/models.py --device cuda and bench/pipeline.py --device cuda, under 9 minutes.
#
# What the device machine has (/work/.library/device/KINDS.md, as sessions saw it in 2026-11): `python3` is
# /opt/torch/.venv/bin/python3, Python 3.12, with torch 2.11.0+cu130, transformers 5.17, aiohttp, yarl, multidict,
# safetensors 0.8, numpy, pillow, networkx, tqdm, tokenizers, huggingface-hub 1.33 and pytest; nothing can be
# downloaded there. It lacks diffusers, diffusers' importlib_metadata, and Loom's jsonschema (with referencing,
# rpds-py and jsonschema-specifications). The repository's .venv cannot be carried: it is 2.1 GB (a call carries
# 64 MiB), built for Python 3.11, and its torch is the CPU wheel.
#
# So, on the session's own machine first (downloads about 5 MB of wheels from PyPI into .whl/, which it adds to
# .git/info/exclude so that they are never committed):
#
#     bash bench/gpu_all.sh prepare
#
# then one device call, nothing else installed:
#
#     run(command="bash bench/gpu_all.sh", carry=[".whl"], timeout_s=600)
#
# There it installs the wheels into /tmp/site (no index, no dependencies), puts /tmp/site and the repository on
# PYTHONPATH (before the image's site-packages: only the missing packages are there, so the image's CUDA torch is
# the one imported), stops with a clear message if torch sees no GPU, and runs, each under its own timeout, with
# what each prints kept under $OUT (7 files; at most 8 come back):
#
#   env.txt             nvidia-smi, python, torch/CUDA/diffusers/transformers versions, the commit
#   checkpoint.txt      the random SDXL file (6.9 GB, /tmp/loom-bench), written in the background from the start
#   models.txt          bench/models.py --device cuda: unet64, sdxl_unet, vae1024, flux, flux_full     (≤ 230 s)
#   pipeline_bf16.txt   bench/pipeline.py --device cuda (1024², 20 steps, bf16)                       (≤ 170 s)
#   pipeline_fp16.txt   bench/pipeline.py --device cuda --dtype fp16, if 150 s are left                (≤ 120 s)
#   pytest_cuda.txt     pytest -m cuda (weight streaming on the GPU, fp8 matmul parity), run first        (≤ 45 s)
#   summary.txt         each step's exit status and seconds
#
# Timeouts can be changed with GPU_ALL_BUDGET (seconds for the whole, default 530). Exit status: 0 when every
# step ran to its end, 1 otherwise (the outputs say which).
set -u
REPO="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
WHEELS="${GPU_ALL_WHEELS:-$REPO/.whl}"
# The versions the repository's tests run with (its .venv), for CPython 3.12 on x86-64 Linux.
PACKAGES=(
    diffusers==0.42.1
    importlib_metadata==10.2.0
    jsonschema==4.26.0
    jsonschema-specifications==2025.9.1
    referencing==0.37.0
    rpds-py==2026.9.1
)

prepare() {
    local exclude
    exclude="$(git -C "$REPO" rev-parse --git-path info/exclude)"
    case "$exclude" in /*) ;; *) exclude="$REPO/$exclude" ;; esac
    if [ "$WHEELS" = "$REPO/.whl" ]; then
        mkdir -p "$(dirname "$exclude")"
        grep -qxF '/.whl/' "$exclude" 2>/dev/null || echo '/.whl/' >>"$exclude"
    fi
    local python="$REPO/.venv/bin/python"
    [ -x "$python" ] || python=python3
    "$python" -m pip download --no-deps --only-binary=:all: --python-version 3.12 --implementation cp \
        --platform manylinux_2_28_x86_64 --platform manylinux_2_27_x86_64 --platform manylinux_2_17_x86_64 \
        --platform manylinux2014_x86_64 --platform manylinux1_x86_64 -d "$WHEELS" "${PACKAGES[@]}" || exit 1
    ls -la "$WHEELS"
    echo "now: run(command=\"bash bench/gpu_all.sh\", carry=[\".whl\"], timeout_s=600)"
}

if [ "${1:-}" = "prepare" ]; then
    prepare
    exit 0
fi

OUT="${OUT:-/tmp/gpu_all_out}"
mkdir -p "$OUT"
cd "$REPO" || exit 1
START=$SECONDS
BUDGET="${GPU_ALL_BUDGET:-530}"
STATUS=0
export PYTHONUNBUFFERED=1 HF_HUB_OFFLINE=1 TRANSFORMERS_OFFLINE=1 HF_HUB_DISABLE_TELEMETRY=1
PYTHON="${GPU_ALL_PYTHON:-python3}"

summary() { echo "$*" | tee -a "$OUT/summary.txt"; }

# step NAME SECONDS OUTFILE COMMAND...: run under a timeout (SIGTERM, then SIGKILL 10 s later), record how it ended.
step() {
    local name="$1" limit="$2" file="$3" began=$SECONDS code
    shift 3
    summary "== $name: $* (limit ${limit} s, $((SECONDS - START)) s in)"
    timeout -k 10 "$limit" "$@" >"$file" 2>&1
    code=$?
    [ "$code" -eq 0 ] || STATUS=1
    case "$code" in 124 | 137) summary "   $name: TIMED OUT after $((SECONDS - began)) s (partial output kept)" ;;
    *) summary "   $name: exit $code after $((SECONDS - began)) s" ;; esac
}

left() { echo $((BUDGET - (SECONDS - START))); }

if [ -d "$WHEELS" ] && ls "$WHEELS"/*.whl >/dev/null 2>&1; then
    "$PYTHON" -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /tmp/site \
        "$WHEELS"/*.whl >"$OUT/pip.txt" 2>&1 || { cat "$OUT/pip.txt"; exit 1; }
    rm -f "$OUT/pip.txt"
else
    echo "no wheels in $WHEELS: diffusers and jsonschema must already be importable (see this script's header)"
fi
export PYTHONPATH="/tmp/site:$REPO${PYTHONPATH:+:$PYTHONPATH}"

{
    echo "commit $(git -C "$REPO" rev-parse --short HEAD 2>/dev/null || echo unknown)"
    nvidia-smi 2>&1 || echo "nvidia-smi: not found"
    "$PYTHON" - <<'EOF'
import sys
import torch
print("python", sys.version.split()[0], sys.executable)
print("torch", torch.__version__, "CUDA", torch.version.cuda, "cuDNN", torch.backends.cudnn.version())
print("cuda available:", torch.cuda.is_available())
if torch.cuda.is_available():
    print("device:", torch.cuda.get_device_name(0))
for name in ("diffusers", "transformers", "huggingface_hub", "safetensors", "numpy", "aiohttp", "jsonschema"):
    try:
        module = __import__(name)
        print(name, getattr(module, "__version__", "?"), module.__file__)
    except Exception as error:
        print(name, "NOT IMPORTABLE:", type(error).__name__, error)
import server.app, nodes, diffusion.unet, diffusion.flux  # noqa: E401  Loom imports under this torch
print("loom imports: ok")
EOF
} >"$OUT/env.txt" 2>&1
cat "$OUT/env.txt"
if ! "$PYTHON" -c "import torch, sys; sys.exit(0 if torch.cuda.is_available() else 1)"; then
    echo "STOP: $PYTHON's torch sees no CUDA device (a CPU torch, e.g. the repository's .venv, or no GPU here)." \
        "Run this on the lent GPU machine with its own python3 (torch+CUDA); see this script's header." | tee -a "$OUT/summary.txt"
    exit 2
fi
if ! grep -q "loom imports: ok" "$OUT/env.txt"; then
    echo "STOP: Loom or a package it needs does not import here (env.txt); were the wheels carried (.whl)?" | tee -a "$OUT/summary.txt"
    exit 2
fi

# The SDXL file takes a minute or two of CPU to write: do it while the GPU runs the tests and models.py.
timeout -k 10 300 "$PYTHON" bench/pipeline.py --write-checkpoint >"$OUT/checkpoint.txt" 2>&1 &
WRITER=$!

# The correctness checks first (weight streaming really moving blocks, fp8 matmul parity): cheap, and the
# numbers after them mean little if they fail.
mapfile -t MARKED < <(grep -rlE "pytest\.mark\.cuda|mark\.cuda\b" tests --include='*.py' 2>/dev/null)
if [ "${#MARKED[@]}" -gt 0 ]; then
    step pytest_cuda 45 "$OUT/pytest_cuda.txt" "$PYTHON" -m pytest -q -p no:cacheprovider -m cuda "${MARKED[@]}"
else
    echo "no test in tests/ is marked cuda" >"$OUT/pytest_cuda.txt"
    summary "== pytest_cuda: no test in tests/ is marked cuda"
fi

step models 230 "$OUT/models.txt" "$PYTHON" bench/models.py --device cuda
wait "$WRITER"
summary "   checkpoint writer: exit $? ($((SECONDS - START)) s in)"
LIMIT=$(($(left) - 35))
[ "$LIMIT" -gt 170 ] && LIMIT=170
# A side that hangs must leave time for the other: each child gets about half of its step.
step pipeline_bf16 "$LIMIT" "$OUT/pipeline_bf16.txt" "$PYTHON" bench/pipeline.py --device cuda --dtype bf16 \
    --child-timeout $((LIMIT / 2))
if [ "$(left)" -ge 150 ]; then
    step pipeline_fp16 120 "$OUT/pipeline_fp16.txt" "$PYTHON" bench/pipeline.py --device cuda --dtype fp16 \
        --child-timeout 60
else
    summary "== pipeline_fp16: skipped, $(left) s left"
fi
summary "== done in $((SECONDS - START)) s, status $STATUS"
exit "$STATUS"
