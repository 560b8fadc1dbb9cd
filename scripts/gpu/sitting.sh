# One GPU sitting as background queues that outlive the 10-minute call limit: as run in the
# seventh sitting (2026-12-06; what is owed since is in scripts/gpu/README.md). Source env.sh first, and assemble.sh for the
# models. Never edit this file while a sitting runs: bash reads a script as it goes, and each call
# syncs the working tree to the machine.
#   bash scripts/gpu/sitting.sh "start"       launch the queues (setsid: they survive the call;
#                                             quote "start" so scripts/gpu/stop.sh's pattern
#                                             cannot match the launching call itself)
#   bash scripts/gpu/sitting.sh wait SECONDS  show progress until every queue ends or time is up,
#                                             then pack logs and results into $OUT
# Queues write logs and JSON to keep/out/ (kept between calls; a job gets 9 minutes, so a hang
# cannot eat the sitting); a queue's end leaves
# keep/out/<queue>.done holding its exit codes.
set -u
out=keep/out
mkdir -p "$out"
gpus=$(nvidia-smi -L | wc -l)
py=python3
levers=examples/study_levers_gpu.yaml
queues=(a b c)

job() {  # job NAME GPUS COMMAND...: one step of a queue, its log in keep/out/NAME.log
  local name=$1 devices=$2
  shift 2
  echo "$(date +%T) start $name on GPU $devices" >>"$out/timeline.log"
  CUDA_VISIBLE_DEVICES=$devices OUT="$out/$name" timeout 540 "$@" >"$out/$name.log" 2>&1
  local rc=$?
  echo "$(date +%T) end $name rc=$rc" >>"$out/timeline.log"
  echo "$name=$rc" >>"$out/$queue.done.partial"
}

done_marker() { mv "$out/$1.done.partial" "$out/$1.done" 2>/dev/null || touch "$out/$1.done"; }
wait_marker() { until [ -f "$out/$1.done" ]; do sleep 5; done; }

# One GPU (the seventh sitting was lent nvidia-h100-x1 only, so issue #10's 2-GPU runs wait):
#   a. issue #9: the r=16 all-linear SQL cell with the first vote (never run); meanwhile queue b
#      trains 8-/4-bit bases at batch 64 on the same GPU (issue #5: a correctness check of the
#      var-len path under k-bit, never run on a GPU since its cast fix; its speeds are shared-GPU
#      numbers, and so is the cell's wall time while it runs)
#   then, alone on the GPU, issue #5: eager, compile + liger, and compile + liger with eager's
#      bf16 roundings emulated, back to back (does the compiled loss follow eager's, at what speed?)
#   then issue #9's 16-candidate SQL vote again (it only settles which cell the validation rule
#      picks), with CUDA graphs once more beside it for the stack of their segmentation fault
queue_a() {
  queue=a
  job levers-sql-r16 0 $py -m tunebench run $levers --cells lora-all-linear-r16-vote-sql
  wait_marker b
  job train-emulate 0 $py benchmarks/bench_train.py --model qwen2.5-coder-1.5b --steps 8 --warmup 3 \
    --batch 128 --repeat 2 --variants packed,packed-compile-liger,packed-compile-liger-emulate
  touch "$out/a.phase2"
  job levers-sql-vote16 0 $py -m tunebench run $levers --cells lora-all-linear-vote16-t09-sql
  done_marker a
}
queue_b() {
  queue=b
  python3 -c "import bitsandbytes" 2>/dev/null && job train-kbit 0 $py benchmarks/bench_train.py \
    --model qwen2.5-coder-1.5b --steps 8 --warmup 3 --batch 64 --variants packed,packed-8bit,packed-4bit
  done_marker b
  until [ -f "$out/a.phase2" ]; do sleep 5; done
  queue=c
  job train-graphs 0 $py benchmarks/bench_train.py --model qwen2.5-coder-1.5b --steps 8 --warmup 3 \
    --batch 128 --variants packed-graphs
  done_marker c
}

start() {
  echo "$(date +%T) sitting on $gpus GPUs at $(git rev-parse --short HEAD 2>/dev/null)" >>"$out/timeline.log"
  queue_a &
  queue_b &
  wait
}

pack() {  # at most 8 files come back: logs+JSON, and the lever study's runs without weights
  tar -czf "$OUT/out.tgz" "$out" 2>/dev/null
  [ -d results/qwen15-levers ] && tar -czf "$OUT/levers.tgz" \
    --exclude=adapter --exclude=checkpoints --exclude=merged --exclude=prepared \
    --exclude='*.safetensors' --exclude=tensorboard results/qwen15-levers
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
