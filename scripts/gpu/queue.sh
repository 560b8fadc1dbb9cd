# Jobs as background queues that outlive the shell (and any time limit on its commands) that
# starts them; see scripts/gpu/README.md. Source env.sh first, and put your jobs in queue_a (more
# queues: add a queue_X function and its name to `queues`). Never edit this file while its
# queues run: bash reads a running script as it goes.
#   bash scripts/gpu/queue.sh "start"       launch the queues (setsid: they survive the shell;
#                                             quote "start" so scripts/gpu/stop.sh's pattern
#                                             cannot match the launching command itself)
#   bash scripts/gpu/queue.sh wait SECONDS  show progress until every queue ends or time is up,
#                                             then pack logs and results into $OUT
# Queues write logs and JSON to keep/out/ (a job gets 13 minutes, so a hang cannot hold up the
# rest); a queue's end leaves keep/out/<queue>.done holding its exit codes.
set -u
out=keep/out
mkdir -p "$out"
gpus=$(nvidia-smi -L | wc -l)
py=python3
queues=(a s)
gpu_mib=$(nvidia-smi --query-gpu=memory.total --format=csv,noheader,nounits | head -1)

job() {  # job NAME GPUS COMMAND...: one step of a queue, its log in keep/out/NAME.log
  local name=$1 devices=$2
  shift 2
  echo "$(date +%T) start $name on GPU $devices" >>"$out/timeline.log"
  mkdir -p "$out/$name"
  CUDA_VISIBLE_DEVICES=$devices OUT="$out/$name" timeout "${JOB_TIMEOUT:-780}" "$@" >"$out/$name.log" 2>&1
  local rc=$?
  echo "$(date +%T) end $name rc=$rc" >>"$out/timeline.log"
  echo "$name=$rc" >>"$out/$queue.done.partial"
  return $rc
}

done_marker() { mv "$out/$1.done.partial" "$out/$1.done" 2>/dev/null || touch "$out/$1.done"; }
wait_marker() { until [ -f "$out/$1.done" ]; do sleep 5; done; }

# The queue as last used (one GPU). Queue a, on timing: Code Llama 34B's shape in 8-bit at
# several tokens per micro-batch, with and without gradient checkpointing, on one build. Queue s
# then runs the jobs listed in keep/plan one after another, reading the file again before each
# job, so the jobs still to come can be changed while it runs; meanwhile, on the CPU, the 1.5B
# model is assembled and converted once its GGUF's pieces are all staged (the study's cells wait
# for that), and the 7B random model is built when the plan holds the 7B run.
pieces=18
study=examples/study_full_gpu.yaml
cell() {  # cell NAME: one study cell (training, checkpoint choice and predictions: 25 minutes)
  local run=results/qwen15-full/runs/$1 shm=/dev/shm/checkpoints-$1
  # checkpoints in memory (tmpfs) where it has room: a full fine-tune of 1.5B keeps two 9 GB
  # checkpoints, and the disk is shared with the model, the candidates' copies and the
  # published model
  if [ "$(df --output=avail -BG /dev/shm | tail -1 | tr -dc 0-9)" -lt 40 ]; then shm=keep/ckpt-$1; fi
  mkdir -p "$run" "$shm" && { [ -e "$run/checkpoints" ] || ln -s "$(realpath "$shm")" "$run/checkpoints"; }
  until [ -f keep/qwen15.converted ] || grep -q "end assemble" "$out/timeline.log"; do sleep 3; done
  JOB_TIMEOUT=1500 job "$1" 0 $py -m tunebench run $study --cells "$1"
  du -sb "$shm"/* "$run"/model "$run"/checkpoint_choice/*/model >>"$out/cell-sizes.txt" 2>&1
  rm -rf "$run/checkpoints" "$shm" "$run/model" "$run"/checkpoint_choice/*/model
}
planned() {  # planned NAME: one job that keep/plan may name
  case "$1" in
    full-*) cell "$1" ;;
    scale-34b-4bit | scale-34b-bf16)  # bf16: 68 GB of weights, for a card of more than 80 GB
      job "$1" 0 $py benchmarks/bench_scale.py --models 34b --quant "${1#scale-34b-}" --tokens 4096,16384 \
        --grad-ckpt both --steps 3 --warmup 1 --compare-estimate --point-timeout 700 --out "$out/$1.json" ;;
    qlora-7b)
      wait_marker make-7b  # built on the CPU from the start (prebuild_7b); else here, on the GPU
      make_7b 0
      job qlora-7b 0 $py -m tunebench run scripts/gpu/qlora_7b.yaml
      job export-7b 0 $py -m tunebench export keep/runs/qlora-7b
      du -sb keep/qwen7-rand keep/runs/qlora-7b/adapter keep/runs/qlora-7b/checkpoints/* keep/runs/qlora-7b/merged \
        >"$out/qlora-7b-sizes.txt" 2>&1
      rm -rf keep/qwen7-rand keep/runs/qlora-7b/merged ;;  # 15 GB each
    *) echo "$(date +%T) unknown planned job $1" >>"$out/timeline.log" ;;
  esac
}
make_7b() {  # make_7b GPUS: Qwen2.5-7B's shape with random weights (15 GB), once
  mkdir -p keep/shape7 && cp keep/shape15/* keep/shape7/ && cp keep/shape7-config.json keep/shape7/config.json
  # built aside and moved, so a build that fails halfway never looks like a model
  [ -f keep/qwen7-rand/model.safetensors ] ||
    { job make-7b "$1" $py scripts/gpu/random_model.py keep/shape7 keep/qwen7-tmp && mv keep/qwen7-tmp keep/qwen7-rand; }
  touch "$out/make-7b.done"
}
prebuild_7b() {  # on the CPU while queue a times 34B, when the plan holds the 7B run
  if grep -qx qlora-7b keep/plan; then make_7b ""; else touch "$out/make-7b.done"; fi
}
next_planned() {  # the first job of keep/plan not yet run
  local name
  while read -r name; do
    [ -n "$name" ] && ! grep -qx "$name" "$out/plan.ran" 2>/dev/null && { echo "$name"; return; }
  done <keep/plan
}
queue_a() {
  queue=a
  until [ -d keep/site/bitsandbytes ]; do sleep 3; done
  job scale-34b-8bit 0 $py benchmarks/bench_scale.py --models 34b --quant 8bit --tokens 2048,4096,8192,16384 \
    --grad-ckpt both --steps 3 --warmup 1 --compare-estimate --point-timeout 700 --out "$out/scale-34b-8bit.json"
  touch "$out/a.timing-done"
  done_marker a
}
assemble_when_staged() {
  until [ "$(ls keep/parts/qwen15-part_* 2>/dev/null | wc -l)" -ge $pieces ] || [ -f keep/qwen15.converted ]; do
    sleep 3
  done
  job assemble 0 bash -c ". scripts/gpu/assemble.sh qwen15"
}
queue_s() {
  queue=s
  [ -f keep/plan ] || printf '%s\n' scale-34b-4bit qlora-7b full-sql full-viggo >keep/plan
  assemble_when_staged &
  prebuild_7b &
  until [ -f "$out/a.timing-done" ]; do sleep 3; done  # the GPU to one job at a time
  echo "$(date +%T) plan starts" >>"$out/timeline.log"
  local name
  while name=$(next_planned) && [ -n "$name" ]; do  # "NAME &" runs beside the next; "wait" waits
    echo "$name" >>"$out/plan.ran"
    case "$name" in
      wait) wait ;;
      *' &') planned "${name% &}" & ;;
      *) planned "$name" ;;
    esac
  done
  wait
  done_marker s
}

start() {
  echo "$(date +%T) queue on $gpus GPUs ($gpu_mib MiB) at $(git rev-parse --short HEAD 2>/dev/null)" >>"$out/timeline.log"
  queue_a &
  queue_s &
  wait
}

pack() {  # logs, JSON and the study's run folders (no weights) in one archive, to copy back
  tar -czf "$OUT/out.tgz" --exclude=model --exclude=checkpoints --exclude=adapter --exclude=merged \
    "$out" results/qwen15-full/runs keep/runs 2>/dev/null
  ls -la "$OUT"
}

wait_for() {
  local deadline=$((SECONDS + $1))
  while [ $SECONDS -lt $deadline ]; do
    local open=0
    for q in "${queues[@]}"; do [ -f "$out/$q.done" ] || open=1; done
    [ $open = 0 ] && break
    local left=$((deadline - SECONDS))
    sleep $((left < 20 ? (left > 0 ? left : 1) : 20))  # never past the deadline: packing follows
  done
  cat "$out/timeline.log"
  nvidia-smi --query-gpu=index,utilization.gpu,memory.used --format=csv,noheader
  for log in "$out"/*.log; do
    [ "$(basename "$log")" = timeline.log ] && continue
    echo "== $log"
    tail -c 600 "$log" | tr '\r' '\n' | tail -4
  done
  pack
}

case "${1:-}" in
  start) start ;;
  wait) wait_for "${2:-500}" ;;
  pack) pack ;;
  *) echo "usage: queue.sh start | wait SECONDS | pack" >&2 ;;
esac
