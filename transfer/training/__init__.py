"""Training a student: ``config`` (every hyper-parameter), ``data``, ``steps`` (one step, evaluation, schedule),
``trainer`` (the loop and the ways to start a run), ``recorder`` (catalog rows, checkpoints, stops), the transfer
``objectives`` (AFT and baselines), ``students``, and the training side of process groups (``distributed``)."""
