# 8-/4-bit LoRA training and prediction on a GPU with the tiny test model (plumbing, minutes):
# bitsandbytes loading, peft's k-bit preparation, the var-len kernel under bf16 autocast.
# Needs env.sh sourced with .stage/data, .whl and .stage/bnb copied in.  Logs and JSON in $OUT.
set -e
python3 -c "import bitsandbytes, torch; print('bitsandbytes', bitsandbytes.__version__, 'torch', torch.__version__)"
python3 -c "
import sys; sys.path.insert(0, '.')
from pathlib import Path
from tests.tiny import build_tiny_model
build_tiny_model(Path('keep/tiny'), Path('keep/data'))"
for q in 8bit 4bit none; do
  cat > "keep/kbit-$q.yaml" <<EOF
name: kbit-$q
runs_dir: keep/runs
model: {name: keep/tiny, quantization: $q}
task: {name: sql, max_train_examples: 512, max_eval_examples: 64, validation: held_out}
training: {max_steps: 30, batch_size: 16, eval_every: 10, learning_rate: 2.0e-3, early_stopping_patience: null}
generation: {max_new_tokens: 16}
EOF
  python3 -m tunebench train "keep/kbit-$q.yaml" > "$OUT/train-$q.log" 2>&1 || echo "train $q failed"
  python3 -m tunebench predict --run-dir "keep/runs/kbit-$q" --split test > "$OUT/predict-$q.log" 2>&1 || echo "predict $q failed"
  mkdir -p "$OUT/kbit-$q"
  cp keep/runs/kbit-$q/{train_summary.json,metrics.jsonl,manifest.json} "$OUT/kbit-$q/" 2>/dev/null || true
  tail -c 400 "$OUT/train-$q.log"; echo
done
