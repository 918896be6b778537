#!/usr/bin/env bash
# grpo_speed.py on a lent GPU machine (the workplace's `device` tool), in one call.
#
# That machine has Python 3.12, CUDA PyTorch, transformers and accelerate, but no network: what it lacks travels
# as wheels in .whl/, and qwen05's tokenizer (SmolLM2's, whose GGUF is too big to travel) in .gpu/tokenizer/
# (both ignored through .git/info/exclude; name them in the call's `carry`). Made here with:
#   python3 -m pip download --no-deps --only-binary=:all: --python-version 3.12 --implementation cp \
#     --platform manylinux_2_17_x86_64 -d .whl trl==1.16.0 datasets==5.2.0 dill==0.4.1 multiprocess==0.70.19 \
#     pydantic==2.14.4 pydantic_core==2.50.5 annotated-types==0.8.0 typing-inspection==0.4.5 \
#     typing_extensions transformers==5.24.0 regex
#   mkdir -p .gpu/tokenizer && cp ~/.cache/aha/models/smollm2-135m/{tokenizer.json,tokenizer_config.json,chat_template.jinja} .gpu/tokenizer/
# Then: bash benchmarks/gpu_run.sh   (writes its tables and the workers' logs under $OUT)
set -uo pipefail
OUT=${OUT:-/tmp/gpu_run}
mkdir -p "$OUT/logs"
python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /tmp/site .whl/*.whl || exit 1
export PYTHONPATH=/tmp/site:$PWD/src PYTHONUNBUFFERED=1
nvidia-smi --query-gpu=name,memory.total,driver_version,clocks.sm --format=csv
python3 -c "import torch, transformers, trl, datasets, pydantic; print('torch', torch.__version__, '| transformers', \
transformers.__version__, '| trl', trl.__version__, '|', torch.cuda.get_device_name())" || exit 1

DEADLINE=${DEADLINE:-420}  # seconds for the whole script: each run gets at most what is left
bench() {  # name, seconds, grpo_speed args...
  local name=$1 secs=$2; shift 2
  local left=$((DEADLINE - SECONDS))
  [ "$left" -lt 30 ] && { echo "=== $name: skipped (${left}s left)"; return; }
  [ "$secs" -gt "$left" ] && secs=$left
  echo "=== $name (${secs}s at most): grpo_speed.py $*"
  timeout "$secs" python3 benchmarks/grpo_speed.py --models qwen05 --tokenizer .gpu/tokenizer --log-dir "$OUT/logs/$name" \
    "$@" >"$OUT/$name.txt" 2>&1
  echo "exit $? after ${SECONDS}s"
  grep -E '^\||^  \{|×|failed|Error' "$OUT/$name.txt" | head -40
}
echo "=== the compiled sampler on CUDA (CUDA graphs) decodes like the eager one"
timeout 90 python3 -m pytest -q -p no:cacheprovider tests/test_engine.py -k compiled 2>&1 | tail -3
# a batch closer to GPU practice (64 × 256 tokens); TRL first, so its numbers stand if aha's compile overruns
bench big 220 -P 8 -G 8 -L 256 --steps 4 --frameworks trl,aha --aha-set rollout.compile=true
# the CPU benchmark's settings (4 prompts × 4 × 64 tokens): TRL against aha's eager sampler, then the compiled one
bench small 130 --steps 4 --aha-set rollout.compile=false
bench small-compiled 150 --steps 4 --frameworks aha --aha-set rollout.compile=true
