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
queues=(a)

job() {  # job NAME GPUS COMMAND...: one step of a queue, its log in keep/out/NAME.log
  local name=$1 devices=$2
  shift 2
  echo "$(date +%T) start $name on GPU $devices" >>"$out/timeline.log"
  CUDA_VISIBLE_DEVICES=$devices OUT="$out/$name" timeout 780 "$@" >"$out/$name.log" 2>&1
  local rc=$?
  echo "$(date +%T) end $name rc=$rc" >>"$out/timeline.log"
  echo "$name=$rc" >>"$out/$queue.done.partial"
}

done_marker() { mv "$out/$1.done.partial" "$out/$1.done" 2>/dev/null || touch "$out/$1.done"; }
wait_marker() { until [ -f "$out/$1.done" ]; do sleep 5; done; }

# The queue as last used (one GPU, issue #10): how a step's time scales with its batch (the bound
# on 2 GPUs' speed-up) and where the GPU waits, for the training loop at an older commit
# (keep/old: its package, copied in as .stage/old) and at this tree. The model is
# Qwen2.5-Coder-1.5B's architecture with random weights (keep/shape15: its config and tokenizer,
# copied in as .stage/shape15): step times do not depend on the weights' values, so no model
# weights are needed.
model=keep/qwen15-rand
scaling() {  # scaling NAME ARGS...: one bench_step_scaling.py run
  local name=$1
  shift
  job "$name" 0 $py benchmarks/bench_step_scaling.py --model $model --batches 64,128 \
    --steps 4 --warmup 2 --profile-batch 64 --label "$name" --out "$out/$name.json" "$@"
}
queue_a() {
  queue=a
  job make-model 0 $py scripts/gpu/random_model.py keep/shape15 $model
  scaling new-compile-liger --variant packed-compile-liger
  scaling old-compile-liger --code keep/old --variant packed-compile-liger
  done_marker a
}

start() {
  echo "$(date +%T) queue on $gpus GPUs at $(git rev-parse --short HEAD 2>/dev/null)" >>"$out/timeline.log"
  queue_a &
  wait
}

pack() {  # logs and JSON in one archive, to copy back
  tar -czf "$OUT/out.tgz" "$out" 2>/dev/null
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
