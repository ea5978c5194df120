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
    out["both"] = run(TransferConfig(**BASE, teachers=TEACHERS, method="aft", beta=1.0), progress=False)
    out["lite0"] = run(TransferConfig(**BASE, teachers=TEACHERS[:1], method="aft", beta=1.0), progress=False)
    out["stl"] = run(TransferConfig(**BASE, method="stl"), progress=False)
    return out


def test_runs_table(runs):
    table = views.runs_table("digits").set_index("run")
    row = table.loc[runs["both"].run_id]
    assert row["teachers"] == ", ".join(TEACHERS) and row["steps"] == "6/6" and row["status"] == "completed"
    assert row["accuracy"] == pytest.approx(runs["both"].test_accuracy, abs=1e-4)
    assert table.loc[runs["stl"].run_id, "beta"] == "-"  # STL has no teacher weight


def test_methods_are_compared_only_like_with_like(runs):
    """Runs of other steps or data never share a comparison, seeds only one method ran are left out, and
    each method's accuracy is the mean of exactly its matched runs."""
    longer = run(TransferConfig(**{**BASE, "steps": 9}, method="stl"), progress=False)  # no partner: not shown
    other_seed = run(TransferConfig(**BASE, teachers=TEACHERS[:1], method="aft", beta=1.0, seed=1), progress=False)
    # A beta search's parent records no step total and a build's summary row is no run of its own: neither
    # may break the page (a NULL total once did) and the summary must not be counted as a contender.
    searched = run(TransferConfig(**BASE, teachers=TEACHERS[:1], method="kd", beta="auto"), progress=False)
    from storage.catalog import open_catalog
    with open_catalog() as cat:
        cat.create_run("test-views-build", dataset="digits", student=STUDENT, teachers=[], method="build",
                       config={"kind": "build"}, total_steps=None, status="completed")
        cat.update_run("test-views-build", test_accuracy=0.5)
    table = views.method_comparisons("digits")
    assert not table["method"].str.startswith("build").any()
    table = table[table["comparison"].str.contains(f": {STUDENT},")]  # other modules' runs share the catalog
    assert set(table["comparison"]) == {f"digits: {STUDENT}, 6 steps, 96 train / 64 test"}
    assert by_label(table, "kd ")["runs"].sum() == 1 and searched.run_id
    by = table.set_index("method")
    assert by.loc["stl", "accuracy"] == pytest.approx(runs["stl"].test_accuracy, abs=1e-4)
    lite0 = by.loc[f"aft ({TEACHERS[0]}; beta 1.0)"]
    assert lite0["runs"] == 1 and lite0["seeds"] == "0"  # seed 1 ran for AFT alone: not compared
    assert lite0["accuracy"] == pytest.approx(runs["lite0"].test_accuracy, abs=1e-4)
    assert by.loc[f"aft ({', '.join(TEACHERS)}; beta 1.0)", "runs"] == 1
    assert longer.run_id and other_seed.run_id
    assert views.method_comparisons("no-such-data").empty


def by_label(table: pd.DataFrame, prefix: str) -> pd.DataFrame:
    return table[table["method"].str.startswith(prefix)]


def test_prefilled_teacher_is_the_best_ranked_and_never_the_student():
    ranking = pd.DataFrame({"model": ["minilm-l6", "mpnet-base", "other"], "logme": [0.3, 0.2, 0.1]})
    assert views.best_teacher(ranking, "bert-small", ["mpnet-base", "minilm-l6"]) == "minilm-l6"
    assert views.best_teacher(ranking, "minilm-l6", ["mpnet-base", "minilm-l6"]) == "mpnet-base"
    assert views.best_teacher(ranking.iloc[:0], "x", ["mpnet-base"]) is None


def test_latest_ranking_of_a_data_set_best_first(runs):
    latest = views.latest_ranking("digits")
    assert list(latest["model"]) == sorted(runs["scores"], key=runs["scores"].get, reverse=True)
    assert views.latest_ranking("no-such-data").empty
    text = views.ranking_summary(latest, "digits", latest=True)
    assert f"best: **{latest['model'].iloc[0]}**" in text and "ahead of" in text


def test_ranking_chart_draws_the_better_teacher_longer_when_scores_are_negative():
    from app.charts import score_chart

    fig = score_chart(pd.DataFrame({"model": ["good", "bad"], "logme": [-0.4, -0.9]}), "logme")
    widths = {t.get_text(): p.get_width() for p, t in zip(fig.axes[0].patches, fig.axes[0].get_yticklabels())}
    assert widths["good"] > widths["bad"] > 0


def test_steps_say_when_the_trainer_ran_other_than_asked():
    assert views.steps_text(32, 32, 30) == "32/32 (asked 30: whole epochs)"
    assert views.steps_text(30, 30, 30) == "30/30" and views.steps_text(None, None) == "-"


def test_app_defaults_are_the_trainer_config_defaults_and_nothing_is_recommended():
    import dataclasses

    fields = {f.name: f.default for f in dataclasses.fields(TransferConfig)}
    defaults = views.transfer_defaults()
    assert {k: defaults[k] for k in ("method", "beta", "steps", "lr")} == {k: fields[k] for k in
                                                                          ("method", "beta", "steps", "lr")}
    assert not any("recommended" in label.lower() for label in views.METHOD_LABELS.values())


def test_threads_share_one_catalog_connection():
    """Many threads reading at once (the app's handlers) never open the file twice in one process."""
    import threading

    from storage.catalog import open_catalog

    errors = []

    def read():
        try:
            for _ in range(15):
                with open_catalog() as cat:
                    cat.query("SELECT count(*) AS n FROM runs")
                views.runs_table("digits")
        except Exception as exc:  # noqa: BLE001 - any failure of a thread fails the test
            errors.append(exc)

    threads = [threading.Thread(target=read) for _ in range(8)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert not errors, errors[:3]
    with open_catalog() as a, open_catalog() as b:
        assert a is b
    with open_catalog() as c:  # the last user closed it; a new one opens
        assert c.query("SELECT 1 AS one") == [{"one": 1}]


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
    jobs.append(Job("j0", "transfer", runs["stl"].run_id, {"steps": 6}, state="cancelled", submitted_at=1.0))
    jobs.append(Job("j4", "resume", runs["stl"].run_id, {"steps": 6}, state="completed", submitted_at=2.0))
    table = views.jobs_table(jobs).set_index("job")
    assert table.loc["j1", "steps"] == "6/6" and table.loc["j1", "accuracy"] == round(runs["both"].test_accuracy, 4)
    # A cancelled job whose run went on in a later job does not claim that job's steps and accuracy.
    assert table.loc["j0", "message"] == "resumed in job j4" and table.loc["j0", "steps"] == "-"
    assert table.loc["j4", "steps"] == "6/6" and table.loc["j4", "message"] == ""
    assert table.loc["j2", "steps"].endswith("(beta search)")  # the final retraining, the search's newest child
    assert table.loc["j2", "accuracy"] == pytest.approx(search.test_accuracy, abs=1e-4)
    assert table.loc["j3", "steps"] == "-" and pd.isna(table.loc["j3", "accuracy"])


def test_ranking_progress_moves_with_extraction_batches():
    # Last in the module: it records newer scores (80 examples) than the fixture's.
    seen = []
    rank("digits", TEACHERS, ["logme"], limit=80, progress=False, on_progress=lambda f, what: seen.append((f, what)))
    fractions = [f for f, _ in seen]
    assert fractions == sorted(fractions) and fractions[0] == 0 and fractions[-1] == 1
    batches = [w for _, w in seen if "features of" in w]
    assert len(batches) >= 2 * 2  # 80 examples take two batches or more, per teacher
    assert any(0 < f < 0.4 for f, w in seen if "features of" in w)  # the bar moves during the first extraction


def test_messages_keep_their_quotes_and_name_the_page_fields_not_cli_flags():
    from app.actions import problem

    assert problem("start", ValueError("got 'lots'")) == "**Could not start:** got 'lots'"
    assert problem("cancel", KeyError("no job 'x' here")) == "**Could not cancel:** no job 'x' here"
    text = problem("start", ValueError("method 'aft' needs at least one teacher (--teachers); choose another "
                                       "--batch-size"))
    assert "--" not in text and "(the Teachers boxes)" in text and "choose another the batch size" in text
