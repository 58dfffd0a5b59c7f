"""What the server cannot see: who is online, how long jobs take, the channel and faults.

Modules: participation (who is online when), system (job durations and dropouts), channel
(what the links do to messages) and faults (injected crashes, NaNs, stragglers, Byzantine).
"""
