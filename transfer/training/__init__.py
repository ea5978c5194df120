"""Training a student: the trainer loop, the transfer objectives (AFT and baselines), students, process groups."""
