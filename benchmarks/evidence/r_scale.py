"""Each regulariser's scale at initialisation, on real data: what each method's beta grid must span.

    python -m benchmarks.evidence.r_scale --dataset rotten_tomatoes --student minilm-l6 --teacher mpnet-base
    python -m benchmarks.evidence.r_scale --dataset fashion_mnist --student tiny-cnn --teacher efficientnet-lite2

For every method the fresh objective's R is averaged over a few batches of the student's first
features (the student as built, before any step), next to the cross-entropy of the fresh head. The
ratio CE / R is the beta at which the regulariser starts as large as the task loss; a grid that spans
beta * R from ~1% to a few times CE is the one ``transfer.training.objectives.BETA_GRIDS`` holds. The
last column compares the pulls on the student's features (|dR/dphi| over |dCE/dphi|): a regulariser
whose gradient is large next to its value (AFT's, through centred rows) needs a smaller beta still.
"""
from __future__ import annotations

import argparse
import json
import math

import numpy as np
import torch
import torch.nn.functional as F


def measure(dataset: str, student_name: str, teacher: str, n: int, batch: int, batches: int) -> dict:
    from transfer.training.objectives import METHODS, make_objective
    from transfer.training.students import build_student
    from zoo.datasets import load_dataset
    from zoo.extract import extract_info

    data = load_dataset(dataset)
    train = data.split("train").head(n)
    psi_all = torch.from_numpy(np.asarray(extract_info(teacher, data, "train", limit=n).features, np.float32))
    student = build_student(student_name, data.num_classes, seed=0).eval()
    for m in student.modules():  # BatchNorm on batch statistics, as in a training step (a fresh student's running
        if isinstance(m, torch.nn.modules.batchnorm._BatchNorm):  # statistics would put phi on another scale)
            m.train()
    rows = np.random.default_rng(0).permutation(n)[:batch * batches].reshape(batches, batch)
    feats, ces = [], []
    with torch.no_grad():
        for idx in rows:
            inputs = train.inputs[idx] if isinstance(train.inputs, np.ndarray) else [train.inputs[i] for i in idx]
            logits, phi = student(student.preprocess(inputs, "{text}"))
            feats.append(phi.float())
            ces.append(float(F.cross_entropy(logits, torch.from_numpy(train.labels[idx]))))
    out = {"dataset": dataset, "student": student_name, "teacher": teacher, "n": n, "batch": batch,
           "ce_init": float(np.mean(ces)), "log_classes": math.log(data.num_classes),
           "phi_row_norm": float(torch.cat(feats).norm(dim=1).mean()),
           "psi_row_norm": float(psi_all.norm(dim=1).mean()), "methods": {}}
    ce_grad = _grad_norm(lambda phi, idx: F.cross_entropy(student.head(phi), torch.from_numpy(train.labels[idx])),
                         feats, rows)
    for method in METHODS:
        if method == "stl":
            continue
        torch.manual_seed(0)
        objective = make_objective(method, student.feature_dim, psi_all.shape[1],
                                   **(_btuning(student, feats, psi_all, rows, train.labels) if method == "btune" else {}))
        with torch.no_grad():
            r = float(np.mean([float(objective(phi, psi_all[idx])) for phi, idx in zip(feats, rows)]))
        grad = _grad_norm(lambda phi, idx: objective(phi, psi_all[idx]), feats, rows)
        out["methods"][method] = {"R_init": r, "ce_over_R": out["ce_init"] / r if r > 0 else float("inf"),
                                  "grad_over_ce_grad": grad / ce_grad}
    return out


def _grad_norm(loss, feats, rows) -> float:
    """Mean |d loss / d phi| over the batches: how hard a loss pulls on the student's features at init."""
    norms = []
    for phi, idx in zip(feats, rows):
        phi = phi.detach().clone().requires_grad_(True)
        (grad,) = torch.autograd.grad(loss(phi, idx), phi)
        norms.append(float(grad.norm()))
    return float(np.mean(norms))


def _btuning(student, feats, psi_all, rows, labels) -> dict:
    """B-Tuning's LogME fits, as the trainer makes them, on the measured rows."""
    from transfer.ranking import logme

    idx, y = rows.reshape(-1), labels[rows.reshape(-1)]
    score, m_t = logme(psi_all[idx].numpy(), y, return_weights=True)
    _, m_s = logme(torch.cat(feats).numpy(), y, return_weights=True)
    return dict(student_weights=torch.as_tensor(m_s, dtype=torch.float32),
                teacher_weights=[torch.as_tensor(m_t, dtype=torch.float32)], teacher_scores=[score],
                teacher_slices=[(0, psi_all.shape[1])])


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--dataset", default="rotten_tomatoes")
    ap.add_argument("--student", default="minilm-l6")
    ap.add_argument("--teacher", default="mpnet-base")
    ap.add_argument("--n", type=int, default=1000, help="training examples (teacher features extracted or cached)")
    ap.add_argument("--batch", type=int, default=64)
    ap.add_argument("--batches", type=int, default=8)
    ap.add_argument("--json", action="store_true", help="print one JSON object instead of the table")
    args = ap.parse_args()
    torch.set_num_threads(1)
    out = measure(args.dataset, args.student, args.teacher, args.n, args.batch, args.batches)
    if args.json:
        print(json.dumps(out))
        return
    print(f"{out['dataset']}: student {out['student']} (|phi| {out['phi_row_norm']:.3g}), teacher {out['teacher']} "
          f"(|psi| {out['psi_row_norm']:.3g}); CE at init {out['ce_init']:.3f}")
    print("| method | R at init | CE / R | pull on phi / CE's |\n|---|---|---|---|")
    for method, m in out["methods"].items():
        print(f"| {method} | {m['R_init']:.3g} | {m['ce_over_R']:.3g} | {m['grad_over_ce_grad']:.3g} |")


if __name__ == "__main__":
    main()
