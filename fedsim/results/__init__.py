"""What a run leaves behind and what reads it.

Modules: history (the writer), fairness (metrics), rundata (run folders), compare (tables) and
plots.
"""
