# One GPU sitting, every measurement still owed (scripts/gpu/README.md), as background queues
# that outlive the 10-minute call limit. Source env.sh first, and assemble.sh for the models.
#   bash scripts/gpu/sitting.sh start        launch the queues (setsid: they survive the call)
#   bash scripts/gpu/sitting.sh wait SECONDS  show progress until every queue ends or time is up,
#                                             then pack logs and results into $OUT
# Queues write logs and JSON to keep/out/ (kept between calls); a queue's end leaves
# keep/out/<queue>.done holding its exit codes.
set -u
out=keep/out
mkdir -p "$out"
gpus=$(nvidia-smi -L | wc -l)
py=python3

job() {  # job NAME GPUS COMMAND...: one step of a queue, its log in keep/out/NAME.log
  local name=$1 devices=$2
  shift 2
  echo "$(date +%T) start $name on GPU $devices" >>"$out/timeline.log"
  CUDA_VISIBLE_DEVICES=$devices OUT="$out/$name" timeout 1500 "$@" >"$out/$name.log" 2>&1
  local rc=$?
  echo "$(date +%T) end $name rc=$rc" >>"$out/timeline.log"
  echo "$name=$rc" >>"$out/$queue.done.partial"
}

levers=examples/study_levers_gpu.yaml
queue_multi() {  # both halves of #10, then #5's table and #8's predictions on the freed GPUs
  queue=multi
  job multi-ddp 0,1 $py benchmarks/bench_multi_gpu.py --model qwen2.5-coder-1.5b --gpus 2 --keep keep/trained-sql
  job multi-fsdp 0,1 $py benchmarks/bench_multi_gpu.py --model qwen2.5-coder-1.5b --gpus 2 --fsdp
  (
    queue=train
    job train 0 $py benchmarks/bench_train.py --model qwen2.5-coder-1.5b --steps 12 --warmup 2 --batch 128 \
      --variants hf-b8,hf-b32,packed,packed-4k,packed-liger,packed-compile
    mv "$out/train.done.partial" "$out/train.done"
  ) &
  job predict 1 $py benchmarks/bench_predict.py --model qwen2.5-coder-1.5b --adapter keep/trained-sql/adapter \
    --batch-sizes 568,284 --baseline-limit 16 --profile
  job predict-static 1 $py benchmarks/bench_predict.py --model qwen2.5-coder-1.5b --adapter keep/trained-sql/adapter \
    --batch-sizes 568 --baseline-limit 16 --cache static
  wait
  if [ -f keep/qwen05.converted ]; then  # the size comparison, if its pieces came in time
    job levers-05b 1 $py -m tunebench run $levers --cells 'lora-0.5b-*'
  fi
}
queue_sql() { queue=sql; job levers-sql "$1" $py -m tunebench run $levers --cells 'lora-all-linear-vote*-sql'; }
queue_viggo() { queue=viggo; job levers-viggo "$1" $py -m tunebench run $levers --cells 'lora-all-linear-r16*-viggo'; }

run_queue() {  # run_queue NAME ARGS...: a queue function, then its .done marker
  local name=$1
  shift
  "queue_$name" "$@"
  mv "$out/$name.done.partial" "$out/$name.done" 2>/dev/null || touch "$out/$name.done"
}

start() {
  echo "$(date +%T) sitting on $gpus GPUs at $(git rev-parse --short HEAD 2>/dev/null)" >>"$out/timeline.log"
  if [ "$gpus" -ge 4 ]; then
    run_queue sql 2 &
    run_queue viggo 3 &
    run_queue multi &
  else  # two GPUs: the DDP benchmark first, then one study half per GPU, benchmarks after
    queue=multi
    job multi-ddp 0,1 $py benchmarks/bench_multi_gpu.py --model qwen2.5-coder-1.5b --gpus 2 --keep keep/trained-sql
    mv "$out/multi.done.partial" "$out/multi.done"
    (
      queue=train
      job train 0 $py benchmarks/bench_train.py --model qwen2.5-coder-1.5b --steps 12 --warmup 2 --batch 128 \
        --variants hf-b8,hf-b32,packed,packed-4k,packed-liger,packed-compile
      mv "$out/train.done.partial" "$out/train.done"
      run_queue sql 0
    ) &
    (
      run_queue viggo 1
      queue=predict
      job predict 1 $py benchmarks/bench_predict.py --model qwen2.5-coder-1.5b --adapter keep/trained-sql/adapter \
        --batch-sizes 568,284 --baseline-limit 16 --profile
      job predict-static 1 $py benchmarks/bench_predict.py --model qwen2.5-coder-1.5b \
        --adapter keep/trained-sql/adapter --batch-sizes 568 --baseline-limit 16 --cache static
      mv "$out/predict.done.partial" "$out/predict.done"
    ) &
  fi
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
  local deadline=$((SECONDS + $1)) queues=(multi sql viggo)
  [ "$gpus" -ge 4 ] || queues=(multi train sql viggo predict)
  while [ $SECONDS -lt $deadline ]; do
    local open=0
    for q in "${queues[@]}"; do [ -f "$out/$q.done" ] || open=1; done
    [ $open = 0 ] && break
    sleep 20
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
