#!/usr/bin/env bash
# Build llama.cpp with CUDA once (shared libraries for llama-cpp-python plus llama-server and
# llama-quantize), run the GPU-relevant tests, then benchmark `appliance serve` against
# llama-server with the same flags on a synthetic Q4_K_M model.
#
#   bash scripts/gpu_bench.sh SRC_DIR [CUDA_ARCH]      # SRC_DIR: an unpacked llama-cpp-python sdist
#
# Phases can be run separately: PHASE=build|test|bench (default: all). Work lands in $WORK
# (default /tmp/gpubench); results in $OUT (default $WORK/out).
set -euo pipefail
SRC=$(realpath "$1"); ARCH=${2:-90}
REPO=$(cd "$(dirname "$0")/.." && pwd)
WORK=${WORK:-/tmp/gpubench}; OUT=${OUT:-$WORK/out}; PHASE=${PHASE:-all}
mkdir -p "$WORK" "$OUT"
export LLAMA_CPP_LIB_PATH=$WORK/build/bin PYTHONPATH=$WORK/site:$REPO${PYTHONPATH:+:$PYTHONPATH}
PY=${PY:-python3}

if [[ $PHASE == all || $PHASE == build ]]; then
  cmake -S "$SRC/vendor/llama.cpp" -B "$WORK/build" -G Ninja -DCMAKE_BUILD_TYPE=Release \
    -DGGML_CUDA=ON -DCMAKE_CUDA_ARCHITECTURES="$ARCH" -DBUILD_SHARED_LIBS=ON \
    -DLLAMA_BUILD_TESTS=OFF -DLLAMA_BUILD_EXAMPLES=OFF -DLLAMA_USE_PREBUILT_UI=OFF \
    -DLLAMA_OPENSSL=OFF -DLLAMA_CURL=OFF > "$OUT/cmake.log" 2>&1
  cmake --build "$WORK/build" -j"$(nproc)" --target llama llama-server llama-quantize mtmd > "$OUT/build.log" 2>&1
  # The Python package only (LLAMA_BUILD=OFF): it loads the libraries above via LLAMA_CPP_LIB_PATH.
  CMAKE_ARGS="-DLLAMA_BUILD=OFF" $PY -m pip install -q --no-deps --no-build-isolation \
    --target "$WORK/site" "$SRC" > "$OUT/pip.log" 2>&1
  $PY -c "import llama_cpp; print('gpu offload:', llama_cpp.llama_supports_gpu_offload())"
fi

if [[ $PHASE == all || $PHASE == test ]]; then
  (cd "$REPO" && $PY -m pytest -q -p no:cacheprovider -m "not gemma" tests/test_engine.py \
     tests/test_scheduler_real.py tests/test_estimate.py tests/test_hardware.py tests/test_api_engine.py \
     2>&1 | tee "$OUT/tests.log" | tail -25) || true
fi

if [[ $PHASE == all || $PHASE == bench ]]; then
  MODEL=$WORK/bench-q4km.gguf
  if [[ ! -f $MODEL ]]; then
    $PY "$REPO/scripts/make_bench_model.py" "$WORK/bench-f32.gguf"
    "$WORK/build/bin/llama-quantize" "$WORK/bench-f32.gguf" "$MODEL" Q4_K_M > "$OUT/quantize.log" 2>&1
    rm -f "$WORK/bench-f32.gguf"
  fi
  CTX=${CTX:-2048}; NP=${NP:-16}
  cat > "$WORK/models.toml" <<TOML
[bench]
source = "file://$MODEL"
context = $CTX
parallel = $NP
keep_alive = "forever"
TOML
  printf '[server]\nport = 8090\n[store]\npath = "%s/store"\n[memory]\nreserve = "2GiB"\n' "$WORK" > "$WORK/appliance.toml"
  $PY -m appliance pull bench --config "$WORK/appliance.toml" --models "$WORK/models.toml"
  $PY -m appliance serve --config "$WORK/appliance.toml" --models "$WORK/models.toml" > "$OUT/appliance.log" 2>&1 &
  APID=$!
  # llama-server pinned to our settings: per-slot KV (no unified), same total context, slots,
  # flash attention, batch sizes, no prompt cache in RAM, no automatic fitting.
  "$WORK/build/bin/llama-server" -m "$MODEL" --port 8091 -c $((CTX * NP)) -np "$NP" --no-kv-unified \
    -fa auto -b 512 -ub 512 --swa-full -ngl 999 -ctk f16 -ctv f16 --cache-ram 0 --fit off -t "$(nproc)" -a bench > "$OUT/llama-server.log" 2>&1 &
  LPID=$!
  trap 'kill $APID $LPID 2>/dev/null || true' EXIT
  for url in http://127.0.0.1:8090/ready http://127.0.0.1:8091/health; do
    for _ in $(seq 120); do curl -sf "$url" >/dev/null && break; sleep 1; done
  done
  $PY -m appliance bench --url http://127.0.0.1:8090 --model bench --peer http://127.0.0.1:8091 \
    --peer-model bench --concurrency 1,4,16 --max-tokens ${TOKENS:-128} --model-file "$MODEL" \
    2>&1 | tee "$OUT/bench.txt"
  nvidia-smi --query-gpu=name,memory.used,memory.total --format=csv | tee -a "$OUT/bench.txt"
fi
