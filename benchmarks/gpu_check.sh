#!/usr/bin/env bash
# The GPU check (issue 23): everything that needs a CUDA GPU, in one run of under 8 minutes on
# one H100, into one report.
#
#   bash benchmarks/gpu_check.sh [--out DIR] [--device cuda|cuda:N] [--steps a,b,...]
#   bash benchmarks/gpu_check.sh --dry-run      # list the steps and check that they exist
#
# Steps (each under its own time limit; a failed or timed-out step is reported, the others run):
#   cuda_tests   the CUDA-only tests (pytest; they skip on a machine without a GPU)
#   calibration  the fast-path calibration on CUDA: a short `spat train` whose env.json records
#                the measured step per setting (fp32/bf16 x NCHW/NHWC) and the choice
#   bench_preact benchmarks/bench.py --device cuda, PreAct ResNet-18, against the reference
#   bench_wrn    the same for WRN-34-10
#   autoattack   AutoAttack equivalence (ours vs the official loop, bit for bit) on CUDA
#   train        a few hundred steps of CIFAR-shaped training (synthetic 32x32x3 npz) with auto
#
# Writes DIR/report.md (one section per step: command, status, seconds, the output's tail and
# the numbers it produced) and DIR/<step>.log, DIR/*.json. Run from the repository root with
# the project importable (pip install -e . or PYTHONPATH=src:.). CI runs --dry-run and the
# argument checks (tests/test_gpu_check.py), so the script cannot rot unseen.
set -uo pipefail

ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
OUT="gpu_check_out"
DEVICE="cuda"
DRY=0
ALL_STEPS="cuda_tests calibration bench_preact bench_wrn autoattack train"
STEPS="$ALL_STEPS"
PY="${PYTHON:-python3}"

die() { echo "gpu_check.sh: error: $*" >&2; exit 2; }

usage() {
    sed -n '2,22p' "${BASH_SOURCE[0]}" | sed 's/^# \{0,1\}//'
}

while [[ $# -gt 0 ]]; do
    case "$1" in
        -h|--help) usage; exit 0 ;;
        --dry-run) DRY=1; shift ;;
        --out) [[ $# -ge 2 && -n "$2" && "$2" != --* ]] || die "--out needs a folder"
               OUT="$2"; shift 2 ;;
        --out=*) OUT="${1#--out=}"; [[ -n "$OUT" ]] || die "--out needs a folder"; shift ;;
        --device) [[ $# -ge 2 && "$2" != --* ]] || die "--device needs a value"
                  DEVICE="$2"; shift 2 ;;
        --device=*) DEVICE="${1#--device=}"; shift ;;
        --steps) [[ $# -ge 2 && "$2" != --* ]] || die "--steps needs a list"
                 STEPS="${2//,/ }"; shift 2 ;;
        --steps=*) STEPS="${1#--steps=}"; STEPS="${STEPS//,/ }"; shift ;;
        *) die "unknown argument '$1' (see --help)" ;;
    esac
done
[[ "$DEVICE" =~ ^cuda(:[0-9]+)?$ ]] || die "--device must be cuda or cuda:N, got '$DEVICE'"
[[ -n "${STEPS// /}" ]] || die "--steps is empty (valid: ${ALL_STEPS// /, })"
for s in $STEPS; do
    [[ " $ALL_STEPS " == *" $s "* ]] || die "unknown step '$s' (valid: ${ALL_STEPS// /, })"
done

NPZ="$OUT/cifar_shaped.npz"
COMMON_TRAIN=(--dataset npz --data-dir "$NPZ" --model preact_resnet18 --method spat
              --device "$DEVICE" --batch-size 128 --val-size 512 --val-steps 5
              --test-subset 512 --test-steps 10 --no-progress --out-dir "$OUT/runs" --overwrite)

# BatchNorm networks: the whole-step loss of ours and the reference differ by up to ~6e-4 and
# 85-90 % of the adversarial pixels agree (benchmarks/RESULTS.md, ResNet-18 on a CPU)
BN_TOL="--rtol-step 1e-3 --min-adv-agreement 0.85"

# name | time limit (s) | command (one string, run with bash -c from the repository root)
step_limit() {
    case "$1" in
        cuda_tests) echo 60 ;; calibration) echo 60 ;; bench_preact) echo 100 ;;
        bench_wrn) echo 130 ;; autoattack) echo 40 ;; train) echo 80 ;;
    esac
}
step_cmd() {
    case "$1" in
        cuda_tests) echo "$PY -m pytest -q -n 0 -p no:randomly -rs tests/test_data.py::test_batches_cuda" ;;
        calibration) echo "$PY -m spat train ${COMMON_TRAIN[*]} --name calibration --train-subset 2048 --epochs 1" ;;
        bench_preact) echo "$PY benchmarks/bench.py --device $DEVICE --model preact_resnet18 --repeats 5 $BN_TOL --no-sweep --no-memory --no-write --json $OUT/bench_preact.json" ;;
        bench_wrn) echo "$PY benchmarks/bench.py --device $DEVICE --model wrn34_10 --repeats 3 --eval-repeats 1 $BN_TOL --no-sweep --no-memory --no-write --json $OUT/bench_wrn.json" ;;
        autoattack) echo "$PY -m pytest -q -n 0 -p no:randomly -rs tests/test_autoattack_official.py -k cuda" ;;
        train) echo "$PY -m spat train ${COMMON_TRAIN[*]} --name train --epochs 2" ;;
    esac
}

# What the steps name must exist: scripts, test files and test functions.
check_references() {
    local bad=0
    for f in benchmarks/bench.py tests/test_data.py tests/test_autoattack_official.py; do
        [[ -f "$ROOT/$f" ]] || { echo "missing: $f" >&2; bad=1; }
    done
    grep -q "^def test_batches_cuda" "$ROOT/tests/test_data.py" \
        || { echo "missing: tests/test_data.py::test_batches_cuda" >&2; bad=1; }
    grep -q '"cuda", marks=' "$ROOT/tests/test_autoattack_official.py" \
        || { echo "missing: the cuda case of tests/test_autoattack_official.py" >&2; bad=1; }
    grep -q '"--no-write"\|"--write"' "$ROOT/benchmarks/bench.py" \
        || { echo "bench.py lost its --write/--no-write flag" >&2; bad=1; }
    return $bad
}

if [[ $DRY -eq 1 ]]; then
    total=0
    echo "gpu_check.sh --dry-run: device $DEVICE, report $OUT/report.md"
    for s in $STEPS; do
        lim=$(step_limit "$s"); total=$((total + lim))
        printf '%-13s %4ss  %s\n' "$s" "$lim" "$(step_cmd "$s")"
    done
    echo "time limits add up to ${total} s (the check must finish in under 480 s)"
    check_references || die "the check refers to things that do not exist (above)"
    [[ $total -le 480 ]] || die "the time limits add up to ${total} s > 480 s"
    exit 0
fi

cd "$ROOT" || exit 2
export PYTHONPATH="$ROOT/src:$ROOT${PYTHONPATH:+:$PYTHONPATH}"
export SPAT_CACHE_DIR="$OUT/cache"  # the calibration's cache: fresh, kept with the report
"$PY" -c "import torch, sys; sys.exit(0 if torch.cuda.is_available() else 1)" \
    || die "no CUDA GPU visible to torch (use --dry-run on a machine without one)"
mkdir -p "$OUT" || die "cannot create $OUT"
REPORT="$OUT/report.md"
START=$(date +%s)

if [[ " $STEPS " == *" calibration "* || " $STEPS " == *" train "* ]]; then
    "$PY" - "$NPZ" <<'EOF' || die "could not write the CIFAR-shaped npz"
import sys
import numpy as np
g = np.random.default_rng(0)
np.savez(sys.argv[1], x_train=g.integers(0, 256, (25600, 32, 32, 3), dtype=np.uint8),
         y_train=g.integers(0, 10, 25600), x_test=g.integers(0, 256, (1024, 32, 32, 3),
         dtype=np.uint8), y_test=g.integers(0, 10, 1024))
EOF
fi

{
    echo "# GPU check ($(date -u '+%Y-%m-%d %H:%M UTC'))"
    echo
    echo "- commit: \`$(git -C "$ROOT" rev-parse --short HEAD 2>/dev/null || echo unknown)\`"
    echo "- GPU: \`$(nvidia-smi --query-gpu=name,driver_version,memory.total --format=csv,noheader 2>/dev/null || echo 'nvidia-smi not found')\`"
    echo "- torch: \`$("$PY" -c 'import torch; print(torch.__version__, "CUDA", torch.version.cuda)')\`"
    echo "- CPU: \`$("$PY" -c 'from spat.utils.hardware import cpu_model; print(cpu_model())')\`"
    echo
    echo "| step | status | seconds | limit |"
    echo "| --- | --- | --- | --- |"
} > "$REPORT"
FAILED=0
DETAILS="$OUT/.details.md"
: > "$DETAILS"

for s in $STEPS; do
    lim=$(step_limit "$s"); cmd=$(step_cmd "$s")
    echo "== $s (limit ${lim}s): $cmd"
    t0=$(date +%s)
    timeout --kill-after=10 "$lim" bash -c "$cmd" > "$OUT/$s.log" 2>&1
    rc=$?
    dt=$(( $(date +%s) - t0 ))
    case $rc in 0) status="ok" ;; 124|137) status="TIMEOUT" ;; *) status="FAILED (rc $rc)" ;; esac
    [[ $rc -eq 0 ]] || FAILED=1
    echo "   $status in ${dt}s"
    echo "| $s | $status | $dt | $lim |" >> "$REPORT"
    {
        echo; echo "## $s: $status (${dt} s of ${lim} s)"; echo
        echo "\`$cmd\`"; echo
        case "$s" in
            bench_preact|bench_wrn)  # bench.py's own report: from its '## GPU' heading on
                sed -n '/^## GPU/,$p' "$OUT/$s.log" ;;
            calibration|train)
                "$PY" - "$OUT/runs/$s" <<'EOF'
import json, sys
from pathlib import Path
run = Path(sys.argv[1])
try:
    env = json.loads((run / "env.json").read_text())
except (OSError, ValueError) as e:
    print(f"(no env.json: {e})")
    raise SystemExit(0)
fp, m = env.get("fast_path", {}), env.get("machine", {})
print(f"- machine: {m.get('gpu')} (capability {m.get('gpu_capability')}), CPU {m.get('cpu_model')}")
print(f"- fast path: amp {fp.get('amp')}, channels_last {fp.get('channels_last')}, "
      f"compile {fp.get('compile')}; reason: {fp.get('reasons', {}).get('amp')}")
cal = fp.get("calibration") or {}
for k in ("source", "chosen", "times_s", "first_step_s", "k", "steps_run", "seconds", "notes"):
    if k in cal:
        print(f"- calibration {k}: {cal[k]}")
for line in (run / "metrics.jsonl").read_text().splitlines() if (run / "metrics.jsonl").is_file() else []:
    r = json.loads(line)
    print(f"- epoch {r['epoch']}: {r['train_images_per_s']:.0f} img/s, loss {r['train_loss']:.3f}")
s = run / "summary.json"
if s.is_file():
    d = json.loads(s.read_text())
    print(f"- test: clean {d['test_clean_acc']:.3f}, {d['test_attack']} {d['test_robust_acc']:.3f}")
EOF
                ;;
        esac
        echo; echo '```'; tail -n 25 "$OUT/$s.log"; echo '```'
    } >> "$DETAILS"
done

{
    echo
    echo "Total: $(( $(date +%s) - START )) s (budget 480 s)."
    cat "$DETAILS"
} >> "$REPORT"
rm -f "$DETAILS"
echo "report: $REPORT"
exit $FAILED
