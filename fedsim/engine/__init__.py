"""The run loop on the virtual clock.

Engine state, sync rounds, async and wall-clock event loops, checkpoints, update
validation and robust aggregation.
"""
