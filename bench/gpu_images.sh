#!/usr/bin/env bash
# One GPU check of train_images (issue #17): the best variant on CamVid at 192x256, trained for a
# fixed wall time, scored by FID and KID on the held-out split, with its training img/s. About
# 7 minutes on one H100/H200 once .venv exists (`make venv` adds its install the first time).
#
#   bash bench/gpu_images.sh                                    # VARIANT's default, 5 minutes
#   bash bench/gpu_images.sh "discriminator=pretrained d_encoder=finetune diffaug=true"
#   DEVICE=cpu SIZE=64x64 MINUTES=0.2 FID_IMAGES=16 BASE="g_ch=4 spade_hidden=8 batch_size=4" \
#       bash bench/gpu_images.sh                                # plumbing check without a GPU
#
# The run is bench.oasis_ablation with one --with variant and --minutes: a short throughput probe
# gives img/s, then the variant trains from scratch on MINUTES' worth of images (train_images
# stops by images, not by time). Results: $OUT/gpu_images.json (+ the log and the sample grid)
# when OUT is set, else bench/results/gpu_images.json.
#
# Environment (defaults in brackets):
#   VARIANT     train_images overrides of the variant, KEY=VALUE separated by spaces; the first
#               argument wins over it [discriminator=pretrained diffaug=true]
#   BASE        overrides of every run: network sizes for a GPU
#               [preset=paper g_ch=32 spade_hidden=128 batch_size=32]
#   PARAMS      base params file [docs/params_camvid96.yaml]
#   MINUTES     training wall time [5]       SIZE   working size HxW [192x256]
#   DEVICE      cuda | cpu [cuda]            FID_IMAGES  held-out images scored [500: all 101]
#   CAMVID      SegNet-layout CamVid [../shared/datasets/camvid]
#   DATA        prepared output [data/camvidH]   PROBE_STEPS  timed probe steps [20]
set -euo pipefail
cd "$(dirname "$0")/.."

VARIANT=${1:-${VARIANT:-discriminator=pretrained diffaug=true}}
BASE=${BASE:-preset=paper g_ch=32 spade_hidden=128 batch_size=32}
PARAMS=${PARAMS:-docs/params_camvid96.yaml}
MINUTES=${MINUTES:-5}
SIZE=${SIZE:-192x256}
DEVICE=${DEVICE:-cuda}
FID_IMAGES=${FID_IMAGES:-500}
PROBE_STEPS=${PROBE_STEPS:-20}
CAMVID=${CAMVID:-../shared/datasets/camvid}
H=${SIZE%x*}
W=${SIZE#*x}
DATA=${DATA:-data/camvid$H}
PY=.venv/bin/python

die() {
    echo "gpu_images: $*" >&2
    exit 1
}

[[ $H =~ ^[0-9]+$ && $W =~ ^[0-9]+$ ]] || die "SIZE must look like 192x256, got '$SIZE'"
# Fail before minutes of installing when there is no GPU at all.
if [[ $DEVICE == cuda* ]] && ! nvidia-smi -L >/dev/null 2>&1; then
    die "no CUDA device (nvidia-smi finds none); run on a GPU machine, or DEVICE=cpu for a plumbing check"
fi
[[ -x $PY ]] || make venv
if [[ $DEVICE == cuda* ]]; then
    $PY -c "import torch, sys; sys.exit(0 if torch.cuda.is_available() else 1)" ||
        die "torch sees no CUDA device (a CPU-only torch build, or the driver is not loaded)"
fi

[[ -z ${OUT:-} ]] || mkdir -p "$OUT"
work=$(mktemp -d)
trap 'rm -rf "$work"' EXIT

if [[ ! -f $DATA/classes.json ]]; then
    [[ -d $CAMVID ]] || die "CamVid not found at $CAMVID (set CAMVID=PATH)"
    .venv/bin/semsynth prepare -q --out "$DATA" \
        --set prepare.dataset=paired_folders \
        --set prepare.options.root="$CAMVID" \
        --set prepare.options.class_table=datasets/camvid.yaml \
        --set "prepare.size=[$H, $W]" \
        --set prepare.metrics="$work/prepare.json"
fi

args=(--data "$DATA" --params "$PARAMS" --minutes "$MINUTES" --probe-steps "$PROBE_STEPS"
    --name gpu_images --keep "$work" --label "$VARIANT"
    --base "device=$DEVICE" --base "fid_images=$FID_IMAGES")
for kv in $BASE; do args+=(--base "$kv"); done
for kv in $VARIANT; do args+=(--with "$kv"); done

start=$(date +%s)
$PY -m bench.oasis_ablation "${args[@]}" 2>&1 | tee "$work/gpu_images.log"
echo "gpu_images: $(($(date +%s) - start)) s for the bench (prepare and install before it)"

if [[ -n ${OUT:-} ]]; then
    cp bench/results/gpu_images.json "$work/gpu_images.log" "$OUT/"
    cp "$work"/*/run/grid.png "$OUT/gpu_images_grid.png" 2>/dev/null || true
fi
