"""Online monitors: drift statistics per event-time window, ADWIN, accuracy, latency, traffic."""
