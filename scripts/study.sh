#!/usr/bin/env bash
# The distillation study, end to end and resumable (README "Study"). Every step skips what is done:
#   data/study (generator), teacher_weights/study-prior (visual prior), teacher_weights/study (teacher),
#   runs/study/<variation>__seed<k> (students, in the order below), runs/study-report (notebook 04).
# Usage: bash scripts/study.sh [stage ...]   stages: setup main short sweep rest long converge ablate control report
#   (default: setup main short sweep rest long converge report; `ablate` is the re-made setup's ablation table,
#   `control` its scale control)
# STUDY_DOCS (default docs/study): where the 16-epoch report (runs/study) goes, under the same rule as LONG_DOCS.
# REPORTS (default "study short long"): which batches the `report` stage reports (those whose folder exists).
# LONG_DOCS (default docs/study/long): where the 32-epoch report goes. Its study_runs.csv, when there, is merged
# as the record of runs whose folders are gone; it must come from the same setup (data, prior, teacher): a record
# made with another teacher is refused. A re-made setup (another machine or session) reports to a folder of its own.
set -euo pipefail
cd "$(dirname "$0")/.."
PY=${PY:-.venv/bin/python}
LONG_DOCS=${LONG_DOCS:-docs/study/long}
STUDY_DOCS=${STUDY_DOCS:-docs/study}
REPORTS=${REPORTS:-study short long}
CLI="$PY -m distilvpr_lib.cli"
stages=("$@"); [ ${#stages[@]} -gt 0 ] || stages=(setup main short sweep rest long converge report)
log() { printf '[study %s] %s\n' "$(date +%H:%M:%S)" "$*"; }
# two runs side by side, one core each (the batch runner gives each worker cpu_count // workers threads)
batch() { log "batch: $*"; $CLI batch ablations/study.yaml --workers 2 --only "$@"; }
# report BATCH REPORT_DIR DOCS_DIR: notebook 04 over a batch; the per-run CSV and the tables go to DOCS_DIR
report() {
  log "notebook 04 on $1"; mkdir -p "$2" "$3"
  # the committed per-run CSV is the record: runs whose folders are gone (another machine, an earlier session)
  # keep their rows; a run re-made in the batch folder replaces its row
  local recorded=(); if [ -f "$3/study_runs.csv" ]; then recorded=(-p recorded_runs "$3/study_runs.csv"); fi
  $PY -m papermill notebooks/04_ablation_analysis.ipynb "$2/notebook.ipynb" \
    -p batch "$1" -p teacher teacher_weights/study -p out "$2" --log-level WARNING "${recorded[@]}" \
    -y "relation_variations: [nokd, distilvpr, distilvpr_norm, rkd_norm, cross_E_norm, distilvpr_norm_self1]" \
    -p relation_seeds 0
  cp "$2/study_runs.csv" "$2/study_table.csv" "$3/"
  for f in relation_auc.csv relation_auc_mean.csv validation_choice.csv; do if [ -f "$2/$f" ]; then cp "$2/$f" "$3/"; fi; done
  # the README's tables, as markdown, recomputed from the per-run CSV (anyone can: `distilvpr study-table`);
  # the rows trained with the normalised task also against their matching baseline, when the batch has it
  $CLI study-table "$3/study_runs.csv" > "$3/study_table.md"
  if grep -q '^nokd_norm,' "$3/study_runs.csv"; then
    $CLI study-table "$3/study_runs.csv" --baseline nokd_norm --csv "$3/study_table_vs_nokd_norm.csv" \
      > "$3/study_table_vs_nokd_norm.md"
  fi
  log "$3/: study_runs.csv, study_table.csv, study_table.md (commit them with the README table)"
}

for stage in "${stages[@]}"; do
  case "$stage" in
    setup)
      # the study world and the prior world (generated, then trained on) side by side, one core each
      log "dataset + visual prior"
      $CLI synth --profile study --out data/study --no-progress --workers 1 & synth_pid=$!
      $CLI pretrain-image --profile study --quiet --workers 1
      wait "$synth_pid"
      # the teacher: 10 epochs, LR step after 8 (the students get the profile's 16, LR step after 12)
      log "teacher";  $CLI train-teacher --dataset data/study --profile study --epochs 10 --set train.milestones=8 \
                        --out teacher_weights/study --quiet ;;
    main)   # no-KD and the Oxford preset, paired by seed, seed by seed
      for s in 0 1 2 3 4; do batch "nokd__seed$s" "distilvpr__seed$s"; done ;;
    sweep)  # the weight sweep (3 seeds), read on validation by notebook 04
      for s in 0 1 2; do batch "distilvpr_x0.1__seed$s" "distilvpr_x10__seed$s" "distilvpr_self0.1__seed$s" \
                               "distilvpr_cross10__seed$s"; done ;;
    rest)
      for s in 0 1 2; do batch "self_only_norm__seed$s" "cross_only_norm__seed$s" "nokd_fp32__seed$s" "cloud_self_norm__seed$s"; done
      for s in 0 1 2 3 4; do batch "nokd_norm__seed$s" "distilvpr_norm__seed$s"; done
      for s in 0 1 2; do batch "kd_norm__seed$s" "rkd_norm__seed$s" "pkt_norm__seed$s"; done
      batch rkd_norm__seed3 rkd_norm__seed4   # the best baseline gets 5 seeds
      for s in 0 1 2; do batch "cross_E_norm__seed$s" "cross_S_norm__seed$s" "cross_H_norm__seed$s"; done
      # the same rows with the reference's raw-distance task (not run for the README's tables)
      for s in 0 1 2; do batch "self_only__seed$s" "distilvpr_cloud_self__seed$s" "cross_only__seed$s" \
                               "cross_E__seed$s" "cross_S__seed$s" "cross_H__seed$s" "kd__seed$s" "rkd__seed$s" \
                               "pkt__seed$s"; done ;;
    ablate)  # the ablation rows with >= 3 seeds in a re-made setup (reported with STUDY_DOCS=docs/study/ablation-b):
             # no-KD and DistilVPR's parts and the baselines, all but no-KD on the normalised task, and no-KD on the
             # normalised task (their matching baseline); seed by seed, in the order run, so that a stopped batch
             # leaves every row with the same number of seeds
      for s in 0 1 2; do
        batch "nokd__seed$s" "self_only_norm__seed$s"; batch "cross_only_norm__seed$s" "cross_E_norm__seed$s"
        batch "cross_S_norm__seed$s" "cross_H_norm__seed$s"; batch "kd_norm__seed$s" "pkt_norm__seed$s"
        if [ "$s" = 0 ]; then batch nokd_norm__seed0 nokd_norm__seed1; fi
      done
      batch nokd_norm__seed2 ;;
    control)  # Result 7, reported with `ablate` (STUDY_DOCS=docs/study/ablation-b): no teacher, the normalised task,
              # the embedding norm held by a ring loss at cross_E_norm's training scale (4; weight 1 and 0.1) and
              # at KD's (12)
      for s in 0 1 2; do batch "nokd_ring4_norm__seed$s" "nokd_ring4_w0.1_norm__seed$s"; done
      batch nokd_ring12_norm__seed0 nokd_ring12_norm__seed1; batch nokd_ring12_norm__seed2 ;;
    short)  # the control: the main rows at 6 epochs (ablations/study_short.yaml -> runs/study-short)
      log "batch: study_short"; $CLI batch ablations/study_short.yaml --workers 2 ;;
    long)   # the convergence check: 32 epochs (ablations/study_long.yaml -> runs/study-long): no-KD and distilvpr_norm,
            # the raw-task preset and distillation as a warm start (until epoch 24), then single looks (seed 0)
      for s in 0 1 2 3 4; do log "batch: study_long seed $s"
        $CLI batch ablations/study_long.yaml --workers 2 --only "nokd__seed$s" "distilvpr_norm__seed$s"; done
      for s in 0 1 2 3 4; do log "batch: study_long preset and warm start, seed $s"
        $CLI batch ablations/study_long.yaml --workers 2 --only "distilvpr__seed$s" "distilvpr_norm_until24__seed$s"; done
      $CLI batch ablations/study_long.yaml --workers 2 --only distilvpr_norm_until12__seed0 distilvpr_until4__seed0 nokd_norm__seed0 \
        cross_only_norm__seed0
      # the best 16-epoch baseline at convergence (5 seeds), then single looks: distillation as a late stage
      # (after the LR step), the preset's self-agent term at RKD's weight, the cross-agent Euclidean term alone
      for s in 0 1 2 3 4; do $CLI batch ablations/study_long.yaml --workers 2 --only "rkd_norm__seed$s"; done
      $CLI batch ablations/study_long.yaml --workers 2 --only distilvpr_from25__seed0 distilvpr_norm_self1__seed0 \
        cross_E_norm__seed0 ;;
    converge)  # Result 5 (a re-made setup reports with LONG_DOCS=docs/study/long-b): no-KD, RKD and DistilVPR with
               # RKD-G at weight 1, 32 epochs, paired by seed; the pairs in the order they were run, so that every
               # row has 3 seeds first
      for pair in "nokd__seed0 rkd_norm__seed0" "nokd__seed1 distilvpr_norm_self1__seed0" "nokd__seed2 rkd_norm__seed1" \
                  "distilvpr_norm_self1__seed1 rkd_norm__seed2" "distilvpr_norm_self1__seed2 nokd__seed3" \
                  "rkd_norm__seed3 nokd__seed4" "rkd_norm__seed4 distilvpr_norm_self1__seed3" "distilvpr_norm_self1__seed4"; do
        log "batch: study_long $pair"
        # shellcheck disable=SC2086  # the pair splits into run names
        $CLI batch ablations/study_long.yaml --workers 2 --only $pair
      done ;;
    report)
      for which in $REPORTS; do
        case "$which" in
          study) if [ -d runs/study ]; then report runs/study runs/study-report "$STUDY_DOCS"; fi ;;
          short) if [ -d runs/study-short ]; then report runs/study-short runs/study-short-report docs/study/short; fi ;;
          long)  if [ -d runs/study-long ]; then report runs/study-long runs/study-long-report "$LONG_DOCS"; fi ;;
          *) echo "unknown report $which (study short long)" >&2; exit 2 ;;
        esac
      done ;;
    *) echo "unknown stage $stage (setup main short sweep rest long converge ablate control report)" >&2; exit 2 ;;
  esac
done
