#!/usr/bin/env bash
# The GPU checks of docs/benchmarks.md, on a machine with a GPU (CI never runs this). In one call, the
# steps named as arguments (default: devices explain load):
#   devices         - the same explanations on its CPU and its GPU: the largest difference (target 1e-4)
#   explain         - the seed's approach against Clarion, both on the GPU
#   explain-nospare - Clarion alone with PASS_SPARE_TOKENS=0 (no rows computed past the budget)
#   load            - the engine under load over real HTTP against `clarion serve` on the GPU
#   passes          - pass time by rows and length, up to 1024 rows: what sizes the GPU's passes
#   passes-fast     - the same for precision=fast (bf16 on a GPU)
# That machine has torch but not all of Clarion's packages, and the transfer is capped at 64 MiB, so
# `bench/gpu_check.sh --prepare`, run here first, makes two ignored folders that the call carries:
#   .whl/  wheels (cp312) of what the machine lacks: shap, slicer, flask, gunicorn, pydantic, ...
#   .kit/  models/minilm-sst2 with its weights stored as fp16 (model.fp16.safetensors), data/sst2-dev.tsv
# The fp16 weights are widened back to fp32 there: every run uses the same fp32 weights (the team
# kit's rounded to fp16), on the CPU and on the GPU alike.
set -uo pipefail
if [ "${1:-}" = --prepare ]; then
    set -e
    grep -qx '/.whl/' .git/info/exclude 2>/dev/null || printf '/.whl/\n/.kit/\n' >>.git/info/exclude
    rm -rf .whl .kit && mkdir -p .kit/models/minilm-sst2 .kit/data
    for package in shap==0.51.0 slicer==0.0.8 flask==3.1.3 gunicorn==27.0.1 pydantic==2.14.3 \
        pydantic_core==2.50.4 annotated_types typing_inspection itsdangerous blinker transformers==5.23.0 regex; do
        python3 -m pip download -q --no-deps --only-binary=:all: --python-version 3.12 --implementation cp \
            --platform manylinux_2_28_x86_64 --platform manylinux_2_17_x86_64 --platform manylinux2014_x86_64 \
            -d .whl "$package"
    done
    cp ../shared/data/sst2-dev.tsv .kit/data/
    (cd ../shared/models/minilm-sst2 && cp config.json tokenizer.json tokenizer_config.json vocab.txt \
        "$OLDPWD/.kit/models/minilm-sst2/")
    .venv/bin/python -c '
from safetensors.torch import load_file, save_file
weights = load_file("../shared/models/minilm-sst2/model.safetensors")
save_file({k: v.half() if v.is_floating_point() else v for k, v in weights.items()},
          ".kit/models/minilm-sst2/model.fp16.safetensors", metadata={"format": "pt"})'
    du -sh .whl .kit
    exit 0
fi
export PYTHONUNBUFFERED=1 HF_HUB_OFFLINE=1 TOKENIZERS_PARALLELISM=false
out=bench/results/gpu  # results and logs; the device tool brings back at most 8 files: one archive
rm -rf "$out" && mkdir -p "$out"
python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /tmp/site .whl/*.whl || exit 1
export PYTHONPATH=/tmp/site:$PWD CLARION_TEAM_KIT=/tmp/kit
rm -rf /tmp/kit && cp -r .kit /tmp/kit
python3 - <<'EOF' || exit 1
from safetensors.torch import load_file, save_file
folder = "/tmp/kit/models/minilm-sst2/"
weights = load_file(folder + "model.fp16.safetensors")
save_file({k: v.float() if v.is_floating_point() else v for k, v in weights.items()},
          folder + "model.safetensors", metadata={"format": "pt"})
EOF
rm /tmp/kit/models/minilm-sst2/model.fp16.safetensors
# `clarion serve`, as the installed console script would run it
mkdir -p /tmp/bin && printf '#!/bin/sh\nexec %s -m shared.cli "$@"\n' "$(command -v python3)" >/tmp/bin/clarion
chmod +x /tmp/bin/clarion && export PATH=/tmp/bin:$PATH
nvidia-smi --query-gpu=name,driver_version,memory.total --format=csv,noheader
python3 -c 'import torch, transformers, shap; print("torch", torch.__version__, "transformers", transformers.__version__, "shap", shap.__version__)'

step() {  # name, seconds, command...: one bench, its log beside its results, never past its time
    local name=$1 seconds=$2
    shift 2
    echo "== $name"
    timeout "$seconds" "$@" --out "$out/$name" >"$out/$name.log" 2>&1
    echo "exit $?"
    tail -n 12 "$out/$name.log"
    # after every step, so a call cut short still brings back what finished
    [ -z "${OUT:-}" ] || tar -czf "$OUT/gpu-results.tar.gz" -C bench/results gpu
}
steps=("$@")
[ ${#steps[@]} -gt 0 ] || steps=(devices explain load)
for name in "${steps[@]}"; do
    case $name in
    devices) step devices 150 python3 -m bench devices --threads 8 ;;
    explain) step explain 200 python3 -m bench explain --models minilm ;;
    explain-nospare) step explain-nospare 120 python3 -m bench explain --models minilm --skip-seed --spare-tokens 0 ;;
    # Part 2's oversized request must outlast its deadline on a GPU too: a 2 s timeout.
    load) step load 200 python3 -m bench load --duration 15 --repeats 2 --timeout 2 ;;
    passes | passes-fast)
        precision=exact && [ "$name" = passes ] || precision=fast
        step "$name" 90 python3 -m bench passes --lengths 24,64,270 --rows 1,8,32,64,128,256,512,1024 \
            --max-tokens 65536 --repeats 5 --precision "$precision" ;;
    *) echo "unknown step $name" && exit 2 ;;
    esac
done
