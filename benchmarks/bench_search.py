"""Time the exact search backends of ``distilvpr_lib.engine.evaluation.search`` on a retrieval of
3,000 queries x 25,000 database items x 384 dimensions (the student embedding size), k = 25.

Queries are noisy copies of random database items (a place-recognition-like set-up). For every
backend it prints the wall time of the backend's own candidate search and of the full exact
``search`` (candidates + float64 re-ranking), and checks that all backends return identical results.

Usage::

    OMP_NUM_THREADS=2 .venv/bin/python benchmarks/bench_search.py
    .venv/bin/python benchmarks/bench_search.py --n-db 5000 --n-queries 500 --backends torch faiss
"""

from __future__ import annotations

import argparse
import importlib.util
import time

import numpy as np


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--n-db", type=int, default=25_000)
    parser.add_argument("--n-queries", type=int, default=3_000)
    parser.add_argument("--dim", type=int, default=384)
    parser.add_argument("-k", type=int, default=25)
    parser.add_argument("--metric", choices=["cosine", "euclidean"], default="cosine")
    parser.add_argument("--backends", nargs="+", default=None, help="default: torch sklearn faiss (if installed)")
    parser.add_argument("--threads", type=int, default=2, help="torch / faiss threads")
    parser.add_argument("--noise", type=float, default=0.5, help="query noise relative to the unit signal")
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args()

    import torch

    from distilvpr_lib.engine.evaluation.search import SEARCH_BACKENDS, search

    torch.set_num_threads(args.threads)
    backends = args.backends or ["torch", "sklearn"] + (["faiss"] if importlib.util.find_spec("faiss") else [])
    if "faiss" in backends and importlib.util.find_spec("faiss"):
        import faiss

        faiss.omp_set_num_threads(args.threads)

    rng = np.random.default_rng(args.seed)
    database = rng.normal(size=(args.n_db, args.dim)).astype(np.float32)
    database /= np.linalg.norm(database, axis=1, keepdims=True)
    source = rng.integers(0, args.n_db, size=args.n_queries)
    queries = database[source] + args.noise / np.sqrt(args.dim) * rng.normal(size=(args.n_queries, args.dim)).astype(np.float32)
    print(f"retrieval: {args.n_queries:,} queries x {args.n_db:,} database x D={args.dim}, k={args.k}, "
          f"metric={args.metric}, threads={args.threads}, torch {torch.__version__}")

    kc = min(args.n_db, args.k + max(8, args.k))
    results: dict[str, np.ndarray] = {}
    print(f"{'backend':>8} | {'candidates (k=' + str(kc) + ') s':>20} | {'exact search s':>14} | {'queries/s':>9} | top-1 = source")
    for name in backends:
        fn = SEARCH_BACKENDS[name]
        db_in = database if args.metric == "euclidean" else database / np.linalg.norm(database, axis=1, keepdims=True)
        q_in = queries if args.metric == "euclidean" else queries / np.linalg.norm(queries, axis=1, keepdims=True)
        start = time.perf_counter()
        fn(db_in.astype(np.float32), q_in.astype(np.float32), kc, args.metric)
        t_candidates = time.perf_counter() - start
        start = time.perf_counter()
        idx, _ = search(database, queries, args.k, metric=args.metric, backend=name)
        t_total = time.perf_counter() - start
        results[name] = idx
        top1 = float((idx[:, 0] == source).mean())
        print(f"{name:>8} | {t_candidates:>20.2f} | {t_total:>14.2f} | {args.n_queries / t_total:>9.0f} | {top1:.3f}")
    names = list(results)
    agree = all(np.array_equal(results[names[0]], results[n]) for n in names[1:])
    print(f"all backends return identical indices: {agree}")


if __name__ == "__main__":
    main()
