#!/usr/bin/env bash
# The device command of benchmarks/gpu.py: one run on a lent GPU (about 8 minutes of its 15).
#
# Before, here (once): download the wheels the machine lacks into the repository's ignored .whl/
#   echo /.whl/ >> .git/info/exclude
#   python3 -m pip download --no-deps --only-binary=:all: --python-version 3.12 --implementation cp \
#     --platform manylinux_2_28_x86_64 --platform manylinux_2_17_x86_64 --platform manylinux2014_x86_64 \
#     -d .whl fla-core==0.6.0 flash-linear-attention==0.6.0 rwkv==0.8.32 isal
# (safetensors, tokenizers, tqdm, xxhash, ninja, einops and transformers are on the machine already.)
# Then: run with carry [".whl"] and command `bash benchmarks/gpu_run.sh`; the results come back
# from $OUT (gpu-<date>.jsonl, gpu-<date>.md, gpu-run.log): copy them into benchmarks/results/ and commit.
set -o pipefail
OUT=${OUT:-benchmarks/results}
mkdir -p "$OUT"
if ls .whl/*.whl >/dev/null 2>&1; then
  python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /tmp/site .whl/*.whl || exit
  export PYTHONPATH=/tmp/site${PYTHONPATH:+:$PYTHONPATH}
fi
export PYTHONPATH=$PWD/src${PYTHONPATH:+:$PYTHONPATH}
export TRITON_CACHE_DIR=/tmp/rwkvkit-gpu-bench/triton-cache  # one cache for every phase of the run
export PYTHONUNBUFFERED=1
python3 benchmarks/gpu.py --out "$OUT" --budget "${BUDGET:-480}" "$@" 2>&1 | tee "$OUT/gpu-run.log"
