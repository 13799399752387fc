"""Runs: run folders, guards, preflight checks, run setup, caches, the teacher and student pipelines, the visual prior."""
