"""Background work: a queue of transfer jobs, each in its own process, and parallel sweeps."""
