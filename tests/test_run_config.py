"""Reproducible runs: a TOML config with every TransferConfig field, CLI overrides, a past run's config
printed and run again, per-step metrics from the CLI, and TensorBoard event files next to the run."""
from __future__ import annotations

import inspect
import json
import struct
import tomllib

import pytest

from tests.helpers import run_cli
from transfer.training import config_file as cf
from transfer.training.trainer import TransferConfig, TransferError


def test_the_cli_takes_its_defaults_from_transfer_config():
    from app.transfer_cli import transfer_cmd

    params = inspect.signature(transfer_cmd).parameters
    for name in ("steps", "lr", "objective_lr", "method", "beta", "seed", "eval_every", "checkpoint_every"):
        assert params[name].default.default is None, name  # unset unless given: the config's default applies
    config = cf.merge({}, {"dataset": "digits", "student": "resnet18-small", "steps": None, "lr": None})
    assert config.steps == TransferConfig.steps and config.lr == TransferConfig.lr
    assert cf.defaults()["teachers"] == [] and "dataset" not in cf.defaults()


def test_a_config_round_trips_through_toml(tmp_path):
    config = TransferConfig(dataset="digits", student="resnet18-small", teachers=["a", "hf:org/b"], beta="auto",
                            steps=7, lr=3e-5, batch_size=None, device="cpu", pretrained=False)
    text = cf.dumps(config.to_dict(), "a header\nover two lines")
    assert text.startswith("# a header\n# over two lines\n") and "# batch_size = (unset)" in text
    path = tmp_path / "run.toml"
    path.write_text(text)
    assert cf.merge(cf.read(path), {}) == config
    assert cf.merge(cf.read(path), {"steps": 9, "lr": None}).steps == 9  # an option given overrides the file
    (tmp_path / "nested.toml").write_text("[transfer]\n" + text)
    assert cf.merge(cf.read(tmp_path / "nested.toml"), {}) == config


def test_bad_config_files_say_what_is_wrong(tmp_path):
    path = tmp_path / "bad.toml"
    path.write_text('dataset = "digits"\nstudent = "x"\nlearning_rate = 0.1\nsteps = "many"\n')
    with pytest.raises(TransferError) as info:
        cf.read(path)
    message = str(info.value)
    assert "unknown field 'learning_rate'" in message and "steps = 'many' should be int" in message
    path.write_text("steps = [")
    with pytest.raises(TransferError, match="not valid TOML"):
        cf.read(path)
    with pytest.raises(TransferError, match="give --dataset and --student"):
        cf.merge({"steps": 3}, {})


def _events(folder) -> dict[str, list[tuple[int, float]]]:
    """Scalars of the TensorBoard event files in ``folder``, read with the record framing and protos they use."""
    from tensorboardX.proto import event_pb2

    out: dict[str, list[tuple[int, float]]] = {}
    for path in sorted(folder.glob("events.out.tfevents.*")):
        data = path.read_bytes()
        pos = 0
        while pos < len(data):
            (length,) = struct.unpack("<Q", data[pos:pos + 8])
            event = event_pb2.Event.FromString(data[pos + 12:pos + 12 + length])
            pos += 12 + length + 4
            for value in event.summary.value:
                out.setdefault(value.tag, []).append((event.step, value.simple_value))
    return out


def test_a_run_repeats_from_its_printed_config(home, tmp_path, clean_registry):
    import zoo
    from zoo.models import random_spec

    zoo.register(random_spec("resnet", name="cfg-tiny-resnet", hub_id="test_resnet", image_size=32),
                 overwrite=True, persist=True)
    (tmp_path / "run.toml").write_text('dataset = "digits"\nstudent = "cfg-tiny-resnet"\nmethod = "stl"\n'
                                       "steps = 50\nlr = 0.01\nbatch_size = 32\nlimit_train = 96\nlimit_test = 48\n"
                                       "log_every = 1\n")
    first = run_cli("transfer", "--config", str(tmp_path / "run.toml"), "--steps", "6", "--set", "seed=3",
                    "--json")
    assert first.returncode == 0, first.stderr
    result = json.loads(first.stdout)
    assert result["steps"] == 6 and result["config"]["seed"] == 3 and result["config"]["lr"] == 0.01
    run_id = result["run_id"]

    printed = run_cli("runs", run_id, "--config")
    assert printed.returncode == 0, printed.stderr
    values = tomllib.loads(printed.stdout)
    assert values["steps"] == 6 and values["seed"] == 3 and values["student"] == "cfg-tiny-resnet"
    (tmp_path / "again.toml").write_text(printed.stdout)
    again = run_cli("transfer", "--config", str(tmp_path / "again.toml"), "--json")
    assert again.returncode == 0, again.stderr
    repeat = json.loads(again.stdout)
    assert {k: v for k, v in repeat["config"].items() if k in cf.fields()} == \
        {k: v for k, v in result["config"].items() if k in cf.fields()}
    assert repeat["test_accuracy"] == result["test_accuracy"]  # same config, same seed: the same run

    metrics = run_cli("runs", run_id, "--metrics", "--json")
    assert metrics.returncode == 0, metrics.stderr
    rows = json.loads(metrics.stdout)
    assert [r["step"] for r in rows] == list(range(1, 7)) and all(r["loss"] > 0 for r in rows)
    from typer.testing import CliRunner

    from app.cli import app

    table = CliRunner().invoke(app, ["runs", run_id, "--metrics"], env={"COLUMNS": "200"})
    assert table.exit_code == 0 and "loss" in table.output and f"metrics of {run_id}" in table.output

    pytest.importorskip("tensorboardX")
    folder = home / "runs" / run_id / "tensorboard"
    if not folder.is_dir():  # the CLI's environment lacked tensorboardX: export here
        from transfer.training.tracker import export_tensorboard

        export_tensorboard(run_id)
    scalars = _events(folder)
    assert [step for step, _ in scalars["loss"]] == list(range(1, 7))
    assert scalars["loss"][0][1] == pytest.approx(rows[0]["loss"], rel=1e-6)


def test_runs_errors_are_one_line(home):
    missing = run_cli("runs", "no-such-run", "--config")
    assert missing.returncode == 1 and "no run 'no-such-run'" in missing.stderr and "Traceback" not in missing.stderr
    bare = run_cli("runs", "--metrics")
    assert bare.returncode == 2 and "need a RUN" in bare.stderr
