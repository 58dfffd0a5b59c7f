"""What the server cannot see: who is online (participation), how long jobs take (system),
what the channel does to messages (channel) and injected faults (faults)."""
