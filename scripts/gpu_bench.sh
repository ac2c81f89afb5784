#!/usr/bin/env bash
# The GPU benchmark of docs/benchmarks.md, start to end, on a bare NVIDIA machine:
#   build    llama.cpp with CUDA once (shared libraries for llama-cpp-python, plus llama-server,
#            llama-bench), and llama-cpp-python's Python package on top of those libraries
#   model    a Llama-3-8B-shaped Q4_K_M with random weights (scripts/make_bench_model.py)
#   cost     in process, no HTTP: one decode step's sampling cost, host chains vs in-graph
#            (backend) sampling (scripts/sampling_cost.py)
#   sampled  `appliance bench --compare` at temperature 0.8 (the only sampling field sent)
#            against llama-server with its default sampling and with --backend-sampling
#   greedy   the same at temperature 0
#   mixed    16 clients, temperature 0.8, every 4th prompt ~1,370 tokens
#   scenarios json_schema mix, overload and hot swap against the appliance alone
#   profile  py-spy on `appliance serve` under 16 clients at temperature 0.8
#   rpc      (two GPUs) the engine alone, all layers on GPU 0 vs split between GPU 0 and an
#            `appliance worker` serving GPU 1 over loopback RPC (docs/cluster.md)
#   twogpu   two GPUs (not in the default phases: it needs two): `--gpus per-model` (the model
#            once per GPU vs one llama-server per GPU, 16 clients on each copy, against one copy
#            alone) and `--gpus split` (layers over both, 1/4/16 clients), temperature 0.8;
#            $RESULTS/twogpu-per-model.{json,log,md} and twogpu-split.* (md: the docs' table)
#
#   bash scripts/gpu_bench.sh SRC_DIR VOCAB.gguf [CUDA_ARCH]
#     SRC_DIR: an unpacked llama-cpp-python sdist; VOCAB: llama.cpp's models/ggml-vocab-llama-bpe.gguf
#
# PHASES (default "build model cost sampled greedy mixed profile") picks phases; PEERS (default
# llama-server,llama-server-bs) the peers; WORK (default /tmp/gpubench) holds everything, results
# go to $RESULTS (default $WORK/out), each phase logging to $RESULTS/<phase>.log. MODEL, CONC,
# NP, CTX, TOKENS, REPEAT, LONG override the model file and the settings. Without the build
# phase and with no $WORK/build, the installed llama-cpp-python is used (a CPU dry run; twogpu
# then passes --gpus-on-cpu). TWO_CONC (default 1,4,16) and PER_MODEL_CONC (default 16) set the
# twogpu levels.
set -euo pipefail
SRC=$(realpath "$1"); VOCAB=$(realpath "$2"); ARCH=${3:-90}
REPO=$(cd "$(dirname "$0")/.." && pwd)
WORK=${WORK:-/tmp/gpubench}; RESULTS=${RESULTS:-$WORK/out}
PHASES=${PHASES:-build model cost sampled greedy mixed profile}
mkdir -p "$WORK" "$RESULTS"
has() { [[ " $PHASES " == *" $1 "* ]]; }
stamp() { echo "[$(date +%T)] $*"; }
if has build || [[ -d $WORK/build/bin ]]; then
  export LLAMA_CPP_LIB_PATH=$WORK/build/bin MTMD_CPP_LIB=$WORK/build/bin  # libllama, and libmtmd (images)
  LLAMA_SERVER=(--llama-server "$WORK/build/bin/llama-server" --llama-bench "$WORK/build/bin/llama-bench")
  ON_CPU=()
else
  LLAMA_SERVER=(); ON_CPU=(--gpus-on-cpu)
fi
export PYTHONPATH=$WORK/site:$REPO${PYTHONPATH:+:$PYTHONPATH} PYTHONUNBUFFERED=1
PY=${PY:-python3}
MODEL=${MODEL:-$WORK/bench-8b-q4km.gguf}
CONC=${CONC:-1,4,16,32}; NP=${NP:-16}; CTX=${CTX:-2048}; TOKENS=${TOKENS:-128}; REPEAT=${REPEAT:-2}
ONE_GPU=${ONE_GPU:-0}  # the single-GPU phases use this GPU alone, also on a machine with more
LONG=${LONG:-1370}; PEERS=${PEERS-llama-server,llama-server-bs}

if has build; then
  stamp build
  cmake -S "$SRC/vendor/llama.cpp" -B "$WORK/build" -G Ninja -DCMAKE_BUILD_TYPE=Release \
    -DGGML_CUDA=ON -DCMAKE_CUDA_ARCHITECTURES="$ARCH" -DBUILD_SHARED_LIBS=ON \
    -DLLAMA_BUILD_TESTS=OFF -DLLAMA_BUILD_EXAMPLES=OFF -DLLAMA_USE_PREBUILT_UI=OFF \
    -DLLAMA_OPENSSL=OFF -DLLAMA_CURL=OFF -DGGML_RPC=ON > "$RESULTS/build.log" 2>&1
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
nvidia-smi --query-gpu=name,driver_version,memory.total --format=csv,noheader > "$RESULTS/gpu.txt" 2>&1 || true

if has cost; then
  stamp cost
  $PY "$REPO/scripts/sampling_cost.py" "$MODEL" --streams 1,16 2>/dev/null | tee "$RESULTS/cost.txt" || true
fi

bench() {  # NAME, then extra flags for `appliance bench --compare`
  local name=$1; shift
  stamp "$name"
  CUDA_VISIBLE_DEVICES=${VISIBLE-$ONE_GPU} $PY -m appliance bench --compare "$PEERS" --model-file "$MODEL" "${LLAMA_SERVER[@]}" \
    --context "$CTX" --parallel "$NP" --max-tokens "$TOKENS" --repeat "$REPEAT" \
    --workdir "$WORK/${RUN:-run}" --json-out "$RESULTS/$name.json" "$@" 2>&1 | tee "$RESULTS/$name.log" \
    || echo "bench $name failed (the next phases run anyway)"
}
has sampled && bench sampled --temperature 0.8 --concurrency "$CONC"
has mixed && bench mixed --temperature 0.8 --concurrency "${MIXED_CONC:-16}" --mixed-prompts "$LONG" \
  --requests-per-client "${MIXED_PER_CLIENT:-4}"
has scenarios && PEERS='' bench scenarios --temperature 0.8 --concurrency 16 --scenarios schema,overload,swap

if has twogpu; then  # its own work directory: the profile phase serves $WORK/run's one-model catalog
  GPUS=$(nvidia-smi -L 2>/dev/null | grep -c '^GPU ' || true)
  if [[ ${#ON_CPU[@]} -eq 0 && $GPUS -lt 2 ]]; then
    echo "twogpu: needs two GPUs, nvidia-smi lists $GPUS (skipped)" | tee "$RESULTS/twogpu.log"
  else
    VISIBLE=0,1 RUN=run-twogpu bench twogpu-per-model --gpus per-model "${ON_CPU[@]}" --temperature 0.8 \
      --concurrency "${PER_MODEL_CONC:-16}"
    VISIBLE=0,1 RUN=run-twogpu bench twogpu-split --gpus split "${ON_CPU[@]}" --temperature 0.8 --concurrency "${TWO_CONC:-1,4,16}"
    for name in twogpu-per-model twogpu-split; do  # the tables of docs/benchmarks.md
      $PY -m appliance.bench.markdown "$RESULTS/$name.json" | tee "$RESULTS/$name.md" || true
    done
  fi
fi

if has profile; then
  stamp profile
  D=$WORK/run/appliance
  CUDA_VISIBLE_DEVICES=$ONE_GPU $PY -m appliance serve --config "$D/appliance.toml" --models "$D/models.toml" > "$RESULTS/profile-serve.log" 2>&1 &
  APID=$!
  trap 'kill $APID 2>/dev/null || true' EXIT
  PORT=$(grep -o 'port = [0-9]*' "$D/appliance.toml" | cut -d' ' -f3)
  URL=http://127.0.0.1:$PORT
  for _ in $(seq 240); do curl -sf "$URL/ready" >/dev/null && break; sleep 0.5; done
  py-spy record --pid "$APID" --rate 500 --native --threads --format raw --duration 12 \
    -o "$RESULTS/profile-t08-c16.txt" > /dev/null 2>&1 &
  SPY=$!
  $PY -m appliance bench --url "$URL" --api-key "$(cat "$D/key")" --model bench --concurrency 16 \
    --requests-per-client 8 --max-tokens "$TOKENS" --temperature 0.8 --model-file "$MODEL" 2>&1 | tee "$RESULTS/profile.log"
  wait $SPY || true
  kill $APID; wait $APID || true
fi
if has rpc && (( $(nvidia-smi -L 2>/dev/null | grep -c '^GPU ' || true) < 2 )); then
  echo "rpc: needs two GPUs (skipped)" | tee "$RESULTS/rpc.log"
elif has rpc; then
  stamp rpc
  RPC_PORT=${RPC_PORT:-50052}
  CUDA_VISIBLE_DEVICES=1 $PY -m appliance worker --port "$RPC_PORT" > "$RESULTS/rpc-worker.log" 2>&1 &
  WPID=$!
  for _ in $(seq 120); do (echo > /dev/tcp/127.0.0.1/$RPC_PORT) 2>/dev/null && break; sleep 0.5; done
  ENGINE_BENCH=($PY -m appliance.engine.bench --model "$MODEL" --skip-llama --streams 1,16
                --tokens "$TOKENS" --context "$CTX" --threads "$(nproc)")
  { CUDA_VISIBLE_DEVICES=0 "${ENGINE_BENCH[@]}"
    CUDA_VISIBLE_DEVICES=0 "${ENGINE_BENCH[@]}" --rpc "127.0.0.1:$RPC_PORT"
    CUDA_VISIBLE_DEVICES=0 "${ENGINE_BENCH[@]}"
    CUDA_VISIBLE_DEVICES=0 "${ENGINE_BENCH[@]}" --rpc "127.0.0.1:$RPC_PORT"; } 2>&1 | grep -v '^llama\|^load\|^print_info' | tee "$RESULTS/rpc.log" || true
  kill $WPID 2>/dev/null || true; wait $WPID 2>/dev/null || true  # a worker that died already: go on
fi

has greedy && bench greedy --temperature 0 --concurrency "$CONC"
stamp done
