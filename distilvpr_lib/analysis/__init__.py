"""Analysis of finished runs: study statistics, relation information, run records, retrieval queries and the
benchmark's records (used by the notebooks and viz). The notebooks import all of it from one module,
:mod:`distilvpr_lib.analysis.workbook`."""
