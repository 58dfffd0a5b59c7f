"""What a run leaves behind and what reads it.

Modules: history (the writer), sinks (tracker copies of metrics.jsonl), fairness (metrics),
rundata (run folders), compare (tables) and plots.
"""
