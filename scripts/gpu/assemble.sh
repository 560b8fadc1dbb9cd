# Sourced after env.sh once every piece of a model is staged: join, verify, convert once.
# A .gguf with a preset's exact size and sha256 converts into that preset's cache folder, so
# configs can then say `model.name: qwen2.5-coder-1.5b`.   usage: . scripts/gpu/assemble.sh qwen15
tag=$1
gguf="keep/$tag.gguf"
if [ ! -f "keep/$tag.converted" ]; then
  [ -f "$gguf" ] || cat keep/parts/"$tag"-part_* > "$gguf"
  python3 -c "
import sys, time
from tunebench import models
t = time.time()
print('converted:', models.resolve_model_dir(sys.argv[1]), f'{time.time() - t:.0f}s')
" "$gguf" && touch "keep/$tag.converted" && rm -f "$gguf" keep/parts/"$tag"-part_*
fi
