"""What a run leaves behind and what reads it: the history writer, fairness metrics, run
folders (rundata), comparison tables and plots."""
