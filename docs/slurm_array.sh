#!/usr/bin/env bash
# Run a DistilVPR grid as a SLURM job array (one array task per run), then notebook 04 on the results.
# No Dask needed; the run folders must be on a filesystem every node sees (the grid's --out).
#
#   bash docs/slurm_array.sh submit ablations/study.yaml /shared/runs     # on the login node, from the project root
#
# `submit` counts the runs (`distilvpr batch GRID --list`), submits this script as an array of that size
# (`sbatch --array=0-(N-1)`, at most $MAX_PARALLEL at once) in mode `run`, and the analysis after it
# (`sbatch --dependency=afterany:<array job>`) in mode `analyse`. Each array task runs
#
#   distilvpr batch GRID --out OUT --index $SLURM_ARRAY_TASK_ID           # the K-th run (0-based) of --list
#
# A run done already is skipped; a run another task or launcher holds is reported "running elsewhere"; a re-submit
# after a crash re-runs only what is unfinished (runs resume from their last checkpoint). OUT/<grid name>/batch.json
# is rebuilt from the runs' status.json by every task. Modes `run` and `analyse` also work by hand, e.g.
#   SLURM_ARRAY_TASK_ID=3 bash docs/slurm_array.sh run GRID OUT
#
# Environment: DISTILVPR (the command, default `distilvpr`), PYTHON (runs papermill, default `python`),
# TEACHER (teacher folder for notebook 04's relation diagnostics; default none), MAX_PARALLEL (default 50),
# SBATCH_RUN / SBATCH_ANALYSE (extra sbatch options, e.g. "--gres=gpu:1 --partition=gpu").
# Threads per run: $SLURM_CPUS_PER_TASK; on a GPU node the run gets the task's GPU (CUDA_VISIBLE_DEVICES).
#
#SBATCH --job-name=distilvpr-grid
#SBATCH --cpus-per-task=4
#SBATCH --mem=8G
#SBATCH --time=02:00:00
#SBATCH --output=slurm-%x-%A_%a.out
set -euo pipefail

mode=${1:?usage: slurm_array.sh submit|run|analyse GRID.yaml [OUT]}
grid=${2:?usage: slurm_array.sh submit|run|analyse GRID.yaml [OUT]}
out=${3:-runs}
DISTILVPR=${DISTILVPR:-distilvpr}
PYTHON=${PYTHON:-python}

case "$mode" in
  submit)
    n=$($DISTILVPR batch "$grid" --list | wc -l)
    [ "$n" -gt 0 ] || { echo "error: $grid: the grid has no runs" >&2; exit 2; }
    script=$(realpath "$0")
    array=$(sbatch --parsable --array=0-$((n - 1))%"${MAX_PARALLEL:-50}" ${SBATCH_RUN:-} "$script" run "$grid" "$out")
    array=${array%%;*}
    analysis=$(sbatch --parsable --dependency=afterany:"$array" --job-name=distilvpr-analysis ${SBATCH_ANALYSE:-} \
               "$script" analyse "$grid" "$out")
    echo "submitted $n runs as array job $array; notebook 04 as job ${analysis%%;*} after it"
    ;;
  run)
    index=${SLURM_ARRAY_TASK_ID:?run: set SLURM_ARRAY_TASK_ID (sbatch --array sets it)}
    export DISTILVPR_RUN_THREADS=${SLURM_CPUS_PER_TASK:-${DISTILVPR_RUN_THREADS:-1}}
    $DISTILVPR batch "$grid" --out "$out" --index "$index"
    ;;
  analyse)
    name=$($PYTHON -c 'import sys; from distilvpr_lib.batch import Grid; print(Grid.load(sys.argv[1]).name)' "$grid")
    batch_dir=$(cd "$out" && pwd)/$name
    teacher_args=()
    [ -n "${TEACHER:-}" ] && teacher_args=(-p teacher "$(realpath "$TEACHER")")
    $PYTHON -m papermill notebooks/04_ablation_analysis.ipynb "$batch_dir/04_ablation_analysis.ipynb" \
      -p batch "$batch_dir" -p out "$batch_dir/analysis" "${teacher_args[@]}" \
      --cwd notebooks --no-progress-bar --log-level WARNING
    echo "analysis: $batch_dir/analysis (executed notebook: $batch_dir/04_ablation_analysis.ipynb)"
    ;;
  *)
    echo "error: mode $mode: expected submit, run or analyse" >&2
    exit 2
    ;;
esac
