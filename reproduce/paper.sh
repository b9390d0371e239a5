#!/usr/bin/env bash
# Reproduce the paper's Table (J %: DAVIS2016 69.3, SegTrackV2 55.5, FBMS59 57.8) on a GPU machine.
#
#   DATA_ROOT=/data RAFT_WEIGHTS=raft_large_C_T_SKHT_V2-ff5fadd5.pth AUTHORS_CKPT=model.ckpt bash reproduce/paper.sh
#
# Steps (each resumable: a rerun redoes only what is missing; choose with STEPS, drop with SKIP):
#   prepare       flows (RAFT), binary ground truth and DataSplits of the three benchmarks under DATA_ROOT
#   eval_authors  the authors' released checkpoint (trusted-legacy loading) → probabilities → the protocol
#   train         a model with the paper's settings (globalmotionfullquadlight, 128 x 224, the published U-Net)
#   eval_trained  that model's best checkpoint (lowest validation loss) → the protocol
#   table         the Table, published row beside ours, for each model evaluated
#
# Environment (defaults in brackets):
#   DATA_ROOT      folder holding DAVIS/, SegTrackv2/, FBMS59/ in their published layouts (required)
#   RAFT_WEIGHTS   torchvision RAFT-large weights file (required by prepare with FLOW_METHOD=raft)
#   FLOW_METHOD    raft | dis [raft]             DEVICE   [cuda]        GAP [1]
#   AUTHORS_CKPT   the authors' checkpoint (required by eval_authors)
#   OUT            [runs/paper]                   DATASETS [davis2016 segtrackv2 fbms59]
#   STEPS          [prepare eval_authors train eval_trained table]      SKIP [] (steps to leave out)
#   TRAIN_BASE_DIR, TRAIN_DATA_FILE  the training DataSplit [DATA_ROOT, DATA_ROOT/DataSplit/DAVIS16]; the paper
#                  trained on FlyingThings3D flows: give their DataSplit here to train as the paper did
#   MAX_EPOCHS [50]  BATCH_SIZE [10]  NUM_WORKERS [8]  FORCE_EVAL [0] (1: evaluate again even if done)
#   TRAIN_EXTRA, EVAL_EXTRA  more flags for model_train.py / model_eval.py (later flags win), e.g. a small
#                  U-Net for a CPU smoke run: TRAIN_EXTRA="--unet.num_layers 3 --unet.features_start 8"
set -euo pipefail

cd "$(dirname "$0")/.."
: "${DATA_ROOT:?set DATA_ROOT to the folder holding DAVIS/, SegTrackv2/ and FBMS59/}"
OUT=${OUT:-runs/paper}
FLOW_METHOD=${FLOW_METHOD:-raft}
DEVICE=${DEVICE:-cuda}
GAP=${GAP:-1}
DATASETS=${DATASETS:-davis2016 segtrackv2 fbms59}
STEPS=${STEPS:-prepare eval_authors train eval_trained table}
SKIP=${SKIP:-}
TRAIN_BASE_DIR=${TRAIN_BASE_DIR:-$DATA_ROOT}
TRAIN_DATA_FILE=${TRAIN_DATA_FILE:-$DATA_ROOT/DataSplit/DAVIS16}
MAX_EPOCHS=${MAX_EPOCHS:-50}
BATCH_SIZE=${BATCH_SIZE:-10}
NUM_WORKERS=${NUM_WORKERS:-8}
FORCE_EVAL=${FORCE_EVAL:-0}
read -r -a train_extra <<< "${TRAIN_EXTRA:-}"
read -r -a eval_extra <<< "${EVAL_EXTRA:-}"
PY=${PYTHON:-python}

log() { printf '\n== %s\n' "$*" >&2; }
want() { [[ " $STEPS " == *" $1 "* && " $SKIP " != *" $1 "* ]]; }
split_of() {  # the DataSplit prefix prepare writes for a dataset
  local name
  case "$1" in
    davis2016) name=DAVIS16 ;; davis2017) name=DAVIS17 ;; segtrackv2) name=SegTrackV2 ;; fbms59) name=FBMS59 ;;
    *) echo "unknown dataset $1" >&2; exit 2 ;;
  esac
  [[ "$GAP" == 1 ]] || name="${name}_gap${GAP}"
  echo "$DATA_ROOT/DataSplit/$name"
}
accel=(--accelerator gpu --devices 1)
[[ "$DEVICE" == cpu ]] && accel=(--accelerator cpu --devices 1)

evaluate() {  # evaluate MODEL_NAME CKPT [extra model_eval flags]: predictions + protocol for every dataset
  local model=$1 ckpt=$2; shift 2
  for ds in $DATASETS; do
    local save="$OUT/$model/$ds" result="$OUT/$model/$ds/protocol/paper_protocol.json"
    if [[ -f "$result" && "$FORCE_EVAL" != 1 ]]; then log "$model / $ds: done ($result)"; continue; fi
    log "$model / $ds: probabilities"
    "$PY" model_eval.py --ckpt "$ckpt" "$@" --save_dir "$save" --base_dir "$DATA_ROOT" \
      --data_file "$(split_of "$ds")" --steps test --save_npy --resume --num_workers "$NUM_WORKERS" "${accel[@]}" ${eval_extra[@]+"${eval_extra[@]}"}
    log "$model / $ds: the paper's protocol"
    "$PY" -m evaluationmodule.paper_protocol evaluate --dataset "$ds" --predictions "$save" \
      --data_base_dir "$DATA_ROOT" --data_file "$(split_of "$ds")" --step test --out "$save/protocol" \
      --label "$model" --no_progress
  done
}

if want prepare; then
  for ds in $DATASETS; do
    log "prepare $ds ($FLOW_METHOD, gap $GAP)"
    flow_args=(--method "$FLOW_METHOD" --gap "$GAP" --device "$DEVICE")
    [[ "$FLOW_METHOD" == raft ]] && flow_args+=(--raft_weights "${RAFT_WEIGHTS:?set RAFT_WEIGHTS (RAFT-large weights file)}")
    "$PY" -m csvflowdatamodule.datasets prepare "$ds" --root "$DATA_ROOT" "${flow_args[@]}"
  done
fi

if want eval_authors; then
  : "${AUTHORS_CKPT:?set AUTHORS_CKPT to the released checkpoint of the authors}"
  evaluate authors "$AUTHORS_CKPT" --trust_checkpoint   # their PL 1.2.8 file: loaded as a trusted legacy file
fi

if want train; then
  train_dir="$OUT/trained/train"
  resume=()
  [[ -f "$train_dir/last.ckpt" ]] && resume=(--ckpt_path last) && log "train: resuming $train_dir/last.ckpt"
  log "train: globalmotionfullquadlight, 128 x 224, U-Net 7 levels x 64 features, L = 2"
  "$PY" model_train.py --path_save_model "$train_dir" --base_dir "$TRAIN_BASE_DIR" --data_file "$TRAIN_DATA_FILE" \
    --flow_augmentation globalmotionfullquadlight --img_size 128 224 --inputs Flow -L 2 \
    --unet.num_layers 7 --unet.features_start 64 --param_model Quadratic \
    --batch_size "$BATCH_SIZE" --num_workers "$NUM_WORKERS" --max_epochs "$MAX_EPOCHS" "${accel[@]}" \
    ${resume[@]+"${resume[@]}"} ${train_extra[@]+"${train_extra[@]}"}
fi

if want eval_trained; then
  best=$("$PY" - "$OUT/trained/train" <<'EOF'
import glob, os, re, sys
d = sys.argv[1]
cands = [(float(m.group(1)), p) for p in glob.glob(os.path.join(d, "epoch=*.ckpt"))
         if (m := re.search(r"epoch_val_loss=([-0-9.eE+]+?)\.ckpt$", p))]
print(min(cands)[1] if cands else (os.path.join(d, "last.ckpt") if os.path.isfile(os.path.join(d, "last.ckpt")) else ""))
EOF
)
  [[ -n "$best" ]] || { echo "eval_trained: no checkpoint in $OUT/trained/train (run the train step)" >&2; exit 2; }
  log "eval_trained: $best"
  evaluate trained "$best"
fi

if want table; then
  for model in authors trained; do
    results=()
    for ds in $DATASETS; do
      f="$OUT/$model/$ds/protocol/paper_protocol.json"
      [[ -f "$f" ]] && results+=("$f")
    done
    [[ ${#results[@]} -gt 0 ]] || continue
    log "Table: $model"
    "$PY" -m evaluationmodule.paper_protocol table "${results[@]}" --label "$model"
  done
fi
