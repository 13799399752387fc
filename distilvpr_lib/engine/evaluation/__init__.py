"""Evaluation: the retrieval protocol, nearest-neighbour search, embedding, result records."""
