"""A run's per-step metrics in the trackers people already use: TensorBoard event files.

Written with ``tensorboardX``: one small pure-Python package over protobuf and numpy (both
here already), where ``torch.utils.tensorboard`` needs the whole ``tensorboard`` package
(grpcio, Werkzeug, Markdown, absl-py) only to write the same files. The events go next to the
run, in ``$AFTZOO_HOME/runs/<run>/tensorboard``; ``tensorboard --logdir $AFTZOO_HOME/runs``
compares every run.
"""
from __future__ import annotations

import math
from pathlib import Path

from storage.catalog import open_catalog
from storage.errors import AftzooError
from storage.settings import get_settings


class TrackerUnavailable(AftzooError, RuntimeError):
    """The tracker's package is not installed."""


def tensorboard_dir(run_id: str) -> Path:
    return get_settings().home / "runs" / run_id / "tensorboard"


def export_tensorboard(run_id: str, folder: str | Path | None = None) -> Path:
    """Write ``run_id``'s metric history as TensorBoard scalars (one tag per metric); returns the folder.

    Exporting again replaces the earlier event files, so a resumed run is never shown twice.
    """
    try:
        from tensorboardX import SummaryWriter
    except ImportError:
        raise TrackerUnavailable("TensorBoard export needs tensorboardX: pip install tensorboardX==2.6.5") from None
    with open_catalog(read_only=True) as cat:
        if cat.get_run(run_id) is None:
            raise ValueError(f"no run {run_id!r} in the catalog; list the runs with `aftzoo runs`")
        frame = cat.metrics(run_id)
    out = Path(folder) if folder is not None else tensorboard_dir(run_id)
    out.mkdir(parents=True, exist_ok=True)
    for old in out.glob("events.out.tfevents.*"):
        old.unlink()
    writer = SummaryWriter(logdir=str(out), flush_secs=3600)
    try:
        for row in frame.to_dict(orient="records"):
            step = int(row.pop("step"))
            for name, value in row.items():
                if value is not None and not (isinstance(value, float) and math.isnan(value)):
                    writer.add_scalar(str(name), float(value), step)
    finally:
        writer.close()
    return out
