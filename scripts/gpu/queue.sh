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
}

done_marker() { mv "$out/$1.done.partial" "$out/$1.done" 2>/dev/null || touch "$out/$1.done"; }
wait_marker() { until [ -f "$out/$1.done" ]; do sleep 5; done; }

# The queue as last used (one GPU). Queue a, on timing: LoRA against full
# fine-tuning on Qwen2.5-Coder-1.5B's architecture with random weights (keep/shape15), Code Llama
# 34B's shape at 8-, 4-bit and bf16, then a 7B-class QLoRA run through the whole pipeline
# (keep/shape7: Qwen2.5-Coder-7B's config beside the 1.5B tokenizer). Queue s, the study: once
# the 1.5B GGUF's pieces are all staged it assembles the model and runs the full fine-tuning
# cells one after another.
pieces=18
study=examples/study_full_gpu.yaml
cell() {  # cell NAME: one study cell (training, checkpoint choice and predictions: 25 minutes)
  JOB_TIMEOUT=1500 job "$1" 0 $py -m tunebench run $study --cells "$1"
  # its weights are not kept (6 GB of model, up to 21 GB of checkpoints): the disk is shared
  local run=results/qwen15-full/runs/$1
  du -sb $run/checkpoints/* $run/model >>"$out/cell-sizes.txt" 2>&1
  rm -rf $run/checkpoints $run/model
}
queue_a() {
  queue=a
  job make-1.5b 0 $py scripts/gpu/random_model.py keep/shape15 keep/qwen15-rand
  job train-full-vs-lora-sql 0 $py benchmarks/bench_train.py --model keep/qwen15-rand --task sql \
    --batch 32 --steps 12 --warmup 2 --variants lora-all-linear-r16,full,full-8bit-adamw,full-ckpt
  cp "$out"/train-full-vs-lora-sql/train.json "$out"/train-full-vs-lora-sql.json 2>/dev/null
  job train-full-vs-lora-viggo 0 $py benchmarks/bench_train.py --model keep/qwen15-rand --task viggo \
    --batch 32 --steps 12 --warmup 2 --variants lora-all-linear-r16,full,full-8bit-adamw,full-ckpt
  cp "$out"/train-full-vs-lora-viggo/train.json "$out"/train-full-vs-lora-viggo.json 2>/dev/null
  rm -rf keep/qwen15-rand
  until [ -d keep/site/bitsandbytes ]; do sleep 5; done
  local quants=8bit,4bit
  [ "$gpu_mib" -gt 120000 ] && quants=8bit,4bit,bf16
  job scale-34b 0 $py benchmarks/bench_scale.py --models 34b --quant $quants --tokens 4096 --steps 3 \
    --warmup 1 --compare-estimate --point-timeout 400 --out "$out/scale-34b.json"
  job scale-34b-16k 0 $py benchmarks/bench_scale.py --models 34b --quant 8bit --tokens 16384 \
    --grad-ckpt on --steps 3 --warmup 1 --compare-estimate --point-timeout 400 --out "$out/scale-34b-16k.json"
  touch "$out/a.timing-done"
  mkdir -p keep/shape7 && cp keep/shape15/* keep/shape7/ && cp keep/shape7-config.json keep/shape7/config.json
  job make-7b 0 $py scripts/gpu/random_model.py keep/shape7 keep/qwen7-rand
  job qlora-7b 0 $py -m tunebench run scripts/gpu/qlora_7b.yaml
  du -sb keep/qwen7-rand keep/runs/qlora-7b/adapter keep/runs/qlora-7b/checkpoints/* \
    >"$out/qlora-7b-sizes.txt" 2>&1
  rm -rf keep/qwen7-rand  # 15 GB; the merge of a 4-bit run's adapter is tested on CPU
  done_marker a
}
queue_s() {
  queue=s
  until [ "$(ls keep/parts/qwen15-part_* 2>/dev/null | wc -l)" -ge $pieces ] || [ -f keep/qwen15.converted ]; do
    sleep 3
  done
  job assemble 0 bash -c ". scripts/gpu/assemble.sh qwen15"
  # timings alone on the GPU, but the study waits for them at most 2 minutes after assembling
  local waited=0
  until [ -f "$out/a.timing-done" ] || [ $waited -ge 120 ]; do sleep 5; waited=$((waited + 5)); done
  echo "$(date +%T) study starts (timings done: $([ -f "$out/a.timing-done" ] && echo yes || echo no))" >>"$out/timeline.log"
  # one cell at a time: each needs up to 34.5 GiB of checkpoints (tunebench estimate) and the
  # host's disk holds 64 GB
  cell full-sql
  cell full-viggo
  cell full-seed7-sql
  cell full-seed7-viggo
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
