#!/usr/bin/env bash
# The GPU measurements of the training path, as one prepared run per part, each sized for a 10-minute command on a
# machine whose python3 already holds torch, Lightning, pytest and pytest-benchmark (pydantic, if missing, travels
# as wheels in .whl/, see below). Results go to $OUT (default reports/gpu), at most 8 files.
#
#   bash benchmarks/gpu_session.sh check    # the gpu-marked tests and the profile of ResNet-20/56/110 (~4 min)
#   bash benchmarks/gpu_session.sh bench    # train_step benchmarks + the projection of cifar10-he2015.yaml (~6 min)
#
# Wheels for a machine without network (run where pip works, then carry .whl):
#   python3 -m pip download --no-deps --only-binary=:all: --python-version 3.12 --implementation cp \
#     --platform manylinux_2_17_x86_64 --platform manylinux2014_x86_64 -d .whl \
#     pydantic pydantic-core annotated-types typing-inspection
set -uo pipefail
part=${1:-check}
out=${OUT:-reports/gpu}
mkdir -p "$out"
if compgen -G ".whl/*.whl" >/dev/null; then
    python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /tmp/site .whl/*.whl
    export PYTHONPATH=/tmp/site
fi
export PYTHONPATH=$PWD${PYTHONPATH:+:$PYTHONPATH} PYTHONUNBUFFERED=1
nvidia-smi --query-gpu=name,driver_version,memory.total,clocks.max.sm --format=csv >"$out/nvidia-smi.csv"
python3 -c "import torch; print('torch', torch.__version__, 'cuda', torch.version.cuda, 'cudnn',
torch.backends.cudnn.version(), torch.cuda.get_device_name(0))" | tee "$out/versions.txt"

case "$part" in
check)
    timeout 200 python3 -m pytest tests/test_gpu.py -q -p no:cacheprovider -rs 2>&1 | tee "$out/gpu-tests.log"
    timeout 300 python3 -m benchmarks.profile_step --steps 30 --no-trace --out "$out" 2>&1 | tee "$out/profile.log"
    ;;
bench)
    # Three parts, each with its own JSON, so a part that runs out of time costs only its own results. The single
    # cells come first: their compilations fill Inductor's cache, which the concurrent cells then read.
    rm -f /tmp/single.json /tmp/shared.json /tmp/pack.json
    timeout 300 python3 -m pytest benchmarks/test_train_step.py -k "not concurrent and not speedup" -q -p no:cacheprovider \
        --benchmark-json=/tmp/single.json 2>&1 | tail -15 | tee "$out/bench.log"
    timeout 200 python3 -m pytest benchmarks/test_train_step.py -k "concurrent or speedup" -q -p no:cacheprovider \
        --benchmark-json=/tmp/shared.json 2>&1 | tail -15 | tee -a "$out/bench.log"
    timeout 90 python3 -m pytest benchmarks/test_pack_step.py -q -p no:cacheprovider \
        --benchmark-json=/tmp/pack.json 2>&1 | tail -15 | tee -a "$out/bench.log"
    python3 -m benchmarks.merge_json "$out/train_step.json" /tmp/single.json /tmp/shared.json /tmp/pack.json
    python3 -m reslab.cli bench-report "$out/train_step.json" --out /tmp/figures \
        --project configs/cifar10-he2015.yaml 2>&1 | tee "$out/projection.txt"
    ;;
*)
    echo "usage: $0 check|bench" >&2
    exit 2
    ;;
esac
