# One GPU sitting as background queues that outlive the 10-minute call limit: as run in the
# eighth sitting (2026-12-06; what is owed since is in scripts/gpu/README.md). Source env.sh first, and assemble.sh for the
# models. Never edit this file while a sitting runs: bash reads a script as it goes, and each call
# syncs the working tree to the machine.
#   bash scripts/gpu/sitting.sh "start"       launch the queues (setsid: they survive the call;
#                                             quote "start" so scripts/gpu/stop.sh's pattern
#                                             cannot match the launching call itself)
#   bash scripts/gpu/sitting.sh wait SECONDS  show progress until every queue ends or time is up,
#                                             then pack logs and results into $OUT
# Queues write logs and JSON to keep/out/ (kept between calls; a job gets 13 minutes, so a hang
# cannot eat the sitting); a queue's end leaves
# keep/out/<queue>.done holding its exit codes.
set -u
out=keep/out
mkdir -p "$out"
gpus=$(nvidia-smi -L | wc -l)
py=python3
study=examples/study_replicate_gpu.yaml
queues=(a b1 b)

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

# One GPU (eighth sitting, 2026-12-06; only one-GPU kinds are lent, so issue #10 still waits):
# issue #9, examples/study_replicate_gpu.yaml:
#   a. the r=16 vote member, then (once b's member is done) the ensemble over both, then (once
#      every queue is done) the whole study again: every cell finished, so it writes the report
#   b. the 16-candidate member beside a's on the same GPU, then the four base cells (zero-shot in
#      the chat format, 3-shot), both tasks
queue_a() {
  queue=a
  job replicate-r16 0 $py -m tunebench run $study --cells lora-all-linear-r16-vote-sql
  wait_marker b1
  job replicate-ensemble 0 $py -m tunebench run $study --cells ensemble-sql
  wait_marker b
  job replicate-report 0 $py -m tunebench run $study
  done_marker a
}
queue_b() {
  queue=b1
  job replicate-vote16 0 $py -m tunebench run $study --cells lora-all-linear-vote16-t09-sql
  done_marker b1
  queue=b
  job replicate-base 0 $py -m tunebench run $study --cells 'base-*'
  done_marker b
}

start() {
  echo "$(date +%T) sitting on $gpus GPUs at $(git rev-parse --short HEAD 2>/dev/null)" >>"$out/timeline.log"
  queue_a &
  queue_b &
  wait
}

pack() {  # at most 8 files come back: logs+JSON, and the study's runs without weights
  tar -czf "$OUT/out.tgz" "$out" 2>/dev/null
  [ -d results/qwen15-replicate ] && tar -czf "$OUT/replicate.tgz" \
    --exclude=adapter --exclude=checkpoints --exclude=merged --exclude=prepared \
    --exclude='*.safetensors' --exclude=tensorboard results/qwen15-replicate
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
  *) echo "usage: sitting.sh start | wait SECONDS | pack" >&2 ;;
esac
