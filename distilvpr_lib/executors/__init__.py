"""Where the runs of a grid execute: a local thread pool, a Dask cluster, or one run per job-array task.

:func:`distilvpr_lib.batch.run_batch` turns every run of a grid into a
:class:`~distilvpr_lib.executors.claims.RunTask` and hands the list to an executor
(:mod:`distilvpr_lib.executors.backends`):

* :class:`LocalExecutor` (``--executor local``, the default): ``workers`` threads in this process, each
  starting one papermill subprocess at a time;
* :class:`DaskExecutor` (``--executor dask --scheduler tcp://HOST:PORT``: any running ``dask.distributed``
  scheduler, e.g. a dask-jobqueue ``SLURMCluster``; ``--executor dask-local --workers N``: a ``LocalCluster``
  of N worker processes with one thread each). Every run is one task that needs one unit of the worker
  resource :data:`RUN_RESOURCE` (``dask worker --resources run=K`` runs at most K runs at once), so a
  worker never runs more runs than it has slots, whatever its thread count. A worker lost mid-run (killed,
  out of memory, pre-empted) makes the scheduler resubmit the task elsewhere; the run then resumes from its
  last checkpoint (the training pipelines resume by default). A launcher stopped by SIGINT or SIGTERM cancels the
  queued tasks and tells the executing ones (a Dask ``Variable``), which stop their runs on the workers
  (:func:`~distilvpr_lib.executors.backends.dask_task`); what does not report back in time is ``cancelled``, and
  :func:`distilvpr_lib.batch_ledger.settle_cancelled` reads from its run folder what became of it.

Wherever a task executes, :func:`~distilvpr_lib.executors.claims.run_claimed` runs it:

1. **claim** the run folder: an exclusive ``flock`` on ``<run>/.distilvpr-batch.lock``
   (:class:`~distilvpr_lib.engine.runs.run_guard.RunFolderLock`, released by the OS when the process dies,
   even by ``kill -9``). A run claimed by another launcher or worker is *running elsewhere*: it is skipped
   and never reported as failed. (The training pipeline inside the notebook takes its own lock,
   ``<run>/.distilvpr.lock``; the claim waits up to :data:`WRITER_WAIT_S` for a previous writer — the
   orphaned kernel of a lost worker — to let go of it.)
2. under the claim, skip a run that another launcher completed meanwhile (``task.done``);
3. take a **slot**: a thread budget (``OMP_NUM_THREADS`` ...) and, on a GPU node, one device
   (``CUDA_VISIBLE_DEVICES``), see :class:`~distilvpr_lib.executors.claims.SlotPool`;
4. run ``task.call(*task.args, **task.kwargs, threads=..., extra_env=...)``.

Environment variables read where the runs execute: :data:`THREADS_ENV` (threads per run; default the
usable cores divided by the slots), :data:`GPUS_ENV` (comma-separated device ids to share out; default
``CUDA_VISIBLE_DEVICES`` or every ``/dev/nvidiaN``) and :data:`SLOT_BASE_ENV` (the first global slot index of
this worker; default ``int(worker name) * slots`` for workers named by an integer, as a ``LocalCluster``
names them, else 0).

Modules: :mod:`~distilvpr_lib.executors.claims` (slots, claims, the task body, a child that dies with its parent)
and :mod:`~distilvpr_lib.executors.backends` (the executors). They know nothing about notebooks:
:mod:`distilvpr_lib.batch` supplies the call. Importing them has no side effects and does not import
``distributed`` (only ``DaskExecutor`` does).
"""
