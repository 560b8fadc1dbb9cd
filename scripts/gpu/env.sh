# Sourced at the start of every shell on an air-gapped GPU host (see scripts/gpu/README.md).
# keep/ survives updates of the checkout because .git/info/exclude lists it; so must the study
# runs that background jobs (queue.sh) write.
for pattern in /keep/ adapter/ checkpoints/ tensorboard/ /results/qwen15-levers/ /results/qwen15-replicate/ /results/qwen15-full/; do
  grep -qx "$pattern" .git/info/exclude 2>/dev/null || echo "$pattern" >> .git/info/exclude
done
mkdir -p keep/parts keep/site keep/cache
# Data and wheels are copied in once (.stage/data, .whl) and stay in keep/.
[ -f .stage/data/README.md ] && { rm -rf keep/data; mv .stage/data keep/data; }
if [ -d .whl ] && [ ! -f keep/site/.done ]; then
  python3 -m pip install -q --no-index --no-deps --no-compile --target keep/site .whl/*.whl && touch keep/site/.done
fi
# Small folders for timing runs (a model's config and tokenizer, another commit's package).
for folder in shape15 old; do
  [ -d .stage/$folder ] && { rm -rf keep/$folder; mv .stage/$folder keep/$folder; }
done
# bitsandbytes (8-/4-bit loading) is optional and large, so it comes apart from the other
# wheels, in .stage/bnb.
if ls .stage/bnb/*.whl >/dev/null 2>&1; then
  python3 -m pip install -q --no-index --no-deps --no-compile --target keep/site .stage/bnb/*.whl && rm -rf .stage/bnb
fi
# Model pieces may arrive one transfer at a time; they wait in keep/parts for assemble.sh.
for piece in .stage/qwen15/part_* .stage/qwen05/part_*; do
  [ -f "$piece" ] && mv "$piece" "keep/parts/$(basename "$(dirname "$piece")")-$(basename "$piece")"
done
export PYTHONPATH="$PWD:$PWD/keep/site${PYTHONPATH:+:$PYTHONPATH}"
export TUNEBENCH_DATA_DIR="$PWD/keep/data" TUNEBENCH_CACHE="$PWD/keep/cache"
export HF_HUB_OFFLINE=1 PYTHONUNBUFFERED=1 TOKENIZERS_PARALLELISM=false
export NCCL_NVLS_ENABLE=0 TORCH_SYMM_MEM_DISABLE_MULTICAST=1 NVSHMEM_DISABLE_NVLS=1
ls keep/parts | wc -l | xargs echo "pieces staged:"
