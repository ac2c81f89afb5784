#!/usr/bin/env bash
# The GPU benchmark of docs/benchmarks.md, start to end, on a bare NVIDIA machine:
#   build   llama.cpp with CUDA once (shared libraries for llama-cpp-python, plus llama-server,
#           llama-bench), and llama-cpp-python's Python package on top of those libraries
#   model   a Llama-3-8B-shaped Q4_K_M with random weights (scripts/make_bench_model.py)
#   bench   `appliance bench --compare` against llama-server (-np N and -np 1) and
#           llama-cpp-python's server, with the json_schema, overload and hot-swap scenarios
#   profile py-spy on `appliance serve` under 4 and 16 clients (where the time goes)
#
#   bash scripts/gpu_bench.sh SRC_DIR VOCAB.gguf [CUDA_ARCH]
#     SRC_DIR: an unpacked llama-cpp-python sdist; VOCAB: llama.cpp's models/ggml-vocab-llama-bpe.gguf
#
# PEERS (default llama-server,llama-server-np1,llama-cpp-python; empty: the appliance alone) and
# SCEN (default schema,overload,swap) pick the peers and scenarios.
# PHASES (default "build model bench profile") picks phases; WORK (default /tmp/gpubench) holds
# everything, results go to $RESULTS (default $WORK/out). Each phase logs to $RESULTS/<phase>.log.
set -euo pipefail
SRC=$(realpath "$1"); VOCAB=$(realpath "$2"); ARCH=${3:-90}
REPO=$(cd "$(dirname "$0")/.." && pwd)
WORK=${WORK:-/tmp/gpubench}; RESULTS=${RESULTS:-$WORK/out}; PHASES=${PHASES:-build model bench profile}
mkdir -p "$WORK" "$RESULTS"
export LLAMA_CPP_LIB_PATH=$WORK/build/bin PYTHONPATH=$WORK/site:$REPO${PYTHONPATH:+:$PYTHONPATH}
PY=${PY:-python3}
MODEL=$WORK/bench-8b-q4km.gguf
CONC=${CONC:-1,4,16,32}; NP=${NP:-16}; CTX=${CTX:-2048}; TOKENS=${TOKENS:-128}
has() { [[ " $PHASES " == *" $1 "* ]]; }
stamp() { echo "[$(date +%T)] $*"; }

if has build; then
  stamp build
  cmake -S "$SRC/vendor/llama.cpp" -B "$WORK/build" -G Ninja -DCMAKE_BUILD_TYPE=Release \
    -DGGML_CUDA=ON -DCMAKE_CUDA_ARCHITECTURES="$ARCH" -DBUILD_SHARED_LIBS=ON \
    -DLLAMA_BUILD_TESTS=OFF -DLLAMA_BUILD_EXAMPLES=OFF -DLLAMA_USE_PREBUILT_UI=OFF \
    -DLLAMA_OPENSSL=OFF -DLLAMA_CURL=OFF > "$RESULTS/build.log" 2>&1
  cmake --build "$WORK/build" -j"$(nproc)" --target llama llama-server llama-bench mtmd >> "$RESULTS/build.log" 2>&1
  # The Python package only (LLAMA_BUILD=OFF): it loads the libraries above via LLAMA_CPP_LIB_PATH.
  CMAKE_ARGS="-DLLAMA_BUILD=OFF" $PY -m pip install -q --no-deps --no-build-isolation \
    --target "$WORK/site" "$SRC" >> "$RESULTS/build.log" 2>&1
  $PY -c "import llama_cpp; print('gpu offload:', llama_cpp.llama_supports_gpu_offload())"
fi

if has model && [[ ! -f $MODEL ]]; then
  stamp model
  $PY "$REPO/scripts/make_bench_model.py" "$MODEL.tmp" --shape 8b --vocab "$VOCAB" > "$RESULTS/model.log" 2>&1
  mv "$MODEL.tmp" "$MODEL"
  ls -la "$MODEL"
fi
if has model; then  # random weights must still give finite logits on this GPU (f16 paths)
  $PY "$REPO/scripts/check_logits.py" "$MODEL" 2>/dev/null | tee "$RESULTS/logits.txt" || true
fi

if has bench; then
  stamp bench
  nvidia-smi --query-gpu=name,driver_version,memory.total --format=csv,noheader > "$RESULTS/gpu.txt" 2>&1 || true
  set -o pipefail
  $PY -m appliance bench --compare "${PEERS-llama-server,llama-server-np1,llama-cpp-python}" --model-file "$MODEL" \
    --llama-server "$WORK/build/bin/llama-server" --llama-bench "$WORK/build/bin/llama-bench" \
    --context "$CTX" --parallel "$NP" --concurrency "$CONC" --max-tokens "$TOKENS" --repeat "${REPEAT:-2}" \
    --scenarios "${SCEN:-schema,overload,swap}" --workdir "$WORK/run" \
    --json-out "$RESULTS/gpu.json" --plot "$RESULTS/gpu.png" 2>&1 | tee "$RESULTS/bench.log"
fi

if has profile; then
  stamp profile
  D=$WORK/run/appliance
  $PY -m appliance serve --config "$D/appliance.toml" --models "$D/models.toml" > "$RESULTS/profile-serve.log" 2>&1 &
  APID=$!
  trap 'kill $APID 2>/dev/null || true' EXIT
  KEY=$(cat "$WORK/run/appliance/key" 2>/dev/null || true)
  for _ in $(seq 240); do curl -sf http://127.0.0.1:$(grep -o 'port = [0-9]*' "$D/appliance.toml" | cut -d' ' -f3)/ready >/dev/null && break; sleep 0.5; done
  URL=http://127.0.0.1:$(grep -o 'port = [0-9]*' "$D/appliance.toml" | cut -d' ' -f3)
  for c in 4 16; do
    n=$(( c == 4 ? 12 : 6 ))
    py-spy record --pid "$APID" --rate 500 --native --threads --format raw --duration 12 \
      -o "$RESULTS/profile-c$c.txt" > /dev/null 2>&1 &
    SPY=$!
    $PY -m appliance bench --url "$URL" --api-key "$KEY" --model bench --concurrency "$c" \
      --requests-per-client "$n" --max-tokens "$TOKENS" --model-file "$MODEL" 2>&1 | tee -a "$RESULTS/profile.log"
    wait $SPY || true
  done
  # one json_schema stream among 16: where the cost to the plain streams goes
  py-spy record --pid "$APID" --rate 500 --native --threads --format raw --duration 15 \
    -o "$RESULTS/profile-schema.txt" > /dev/null 2>&1 &
  SPY=$!
  $PY -m appliance bench --url "$URL" --api-key "$KEY" --model bench --concurrency 16 --requests-per-client 1 \
    --max-tokens "$TOKENS" --model-file "$MODEL" --scenarios schema --schema-concurrency 16 2>&1 | tee -a "$RESULTS/profile.log"
  wait $SPY || true
  kill $APID; wait $APID || true
fi
stamp done
