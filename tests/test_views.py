"""What the app's pages show, read back from real runs and rankings in the catalog."""
import pandas as pd
import pytest

import zoo
from app import views
from transfer.ranking import rank
from transfer.training.trainer import TransferConfig, run
from zoo.models import random_spec

STUDENT = "test-views-resnet"
TEACHERS = ["efficientnet-lite0", "efficientnet-lite2"]
BASE = dict(dataset="digits", student=STUDENT, steps=6, lr=1e-2, batch_size=32, limit_train=96, limit_test=64,
            log_every=2, eval_every=3, checkpoint_every=3)


@pytest.fixture(scope="module")
def runs():
    zoo.register(random_spec("resnet", name=STUDENT, hub_id="test_resnet", image_size=32), overwrite=True)
    scores = rank("digits", TEACHERS, ["logme"], limit=96, progress=False)
    out = {"scores": dict(zip(scores["model"], scores["logme"]))}
    out["both"] = run(TransferConfig(**BASE, teachers=TEACHERS, method="aft"), progress=False)
    out["lite0"] = run(TransferConfig(**BASE, teachers=TEACHERS[:1], method="aft"), progress=False)
    out["stl"] = run(TransferConfig(**BASE, method="stl"), progress=False)
    return out


def test_runs_table_and_accuracy_by_method(runs):
    table = views.runs_table("digits").set_index("run")
    row = table.loc[runs["both"].run_id]
    assert row["teachers"] == ", ".join(TEACHERS) and row["steps"] == "6/6" and row["status"] == "completed"
    assert row["accuracy"] == pytest.approx(runs["both"].test_accuracy, abs=1e-4)
    by_method = views.accuracy_by_method("digits").set_index("method")
    assert by_method.loc["stl", "runs"] >= 1 and 0 <= by_method.loc["aft", "accuracy"] <= 1


def test_learned_weights_per_teacher(runs):
    weights = views.teacher_weights(runs["both"].run_id)
    assert list(weights["teacher"]) == TEACHERS
    assert ((weights["mean weight"] > 0) & (weights["mean weight"] < 1)).all()
    single = views.teacher_weights(runs["lite0"].run_id)
    assert list(single["teacher"]) == TEACHERS[:1]
    assert views.teacher_weights(runs["stl"].run_id).empty


def test_teacher_score_against_transfer_accuracy(runs):
    points = views.score_vs_accuracy("digits")
    mine = points[points["teacher"] == "efficientnet-lite0"]
    assert not mine.empty  # the two-teacher run is left out: one score per point
    assert mine["score"].iloc[0] == pytest.approx(runs["scores"]["efficientnet-lite0"])


def test_curves_are_numeric_for_the_plots(runs):
    loss, acc = views.curves(runs["both"].run_id)
    assert set(loss["series"]) == {"total loss", "cross-entropy", "teacher term"}
    assert set(acc["series"]) == {"train accuracy", "test set accuracy"}
    assert loss["step"].dtype.kind == "i" and acc["value"].dtype.kind == "f"  # else the plot draws categories
    assert views.curves(None)[0].dtypes.to_dict() == loss.dtypes.to_dict()


def test_jobs_table_shows_progress_and_the_active_trial_of_a_beta_search(runs):
    from transfer.jobs.queue import Job

    search = run(TransferConfig(**{**BASE, "steps": 3}, teachers=TEACHERS[:1], method="aft", beta="auto",
                                beta_grid=(0.1, 1.0)), progress=False)
    parent = search.config["beta_auto_run"]
    jobs = [Job("j1", "transfer", runs["both"].run_id, {}, state="completed"),
            Job("j2", "transfer", parent, {}, state="completed"),
            Job("j3", "transfer", "not-started-yet", {}, state="queued")]
    table = views.jobs_table(jobs).set_index("job")
    assert table.loc["j1", "steps"] == "6/6" and table.loc["j1", "accuracy"] == round(runs["both"].test_accuracy, 4)
    assert table.loc["j2", "steps"].endswith("(beta search)")  # the final retraining, the search's newest child
    assert table.loc["j2", "accuracy"] == pytest.approx(search.test_accuracy, abs=1e-4)
    assert table.loc["j3", "steps"] == "-" and pd.isna(table.loc["j3", "accuracy"])
