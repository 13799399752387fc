"""Analysis of finished runs: study statistics, relation information, run records, retrieval queries (used by notebooks and viz)."""
