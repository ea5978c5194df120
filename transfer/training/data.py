"""A run's data: the training examples, their labels and the teachers' cached features, aligned by index,
and what it is evaluated on (the test split, a hold-out of the training examples, or validation rows)."""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch
from torch import nn

from transfer.training.config import TransferConfig, TransferError
from transfer.training.students import Student
from zoo.datasets import Dataset, load_dataset
from zoo.extract import extract_info


@dataclass
class _Data:
    dataset: Dataset
    train_inputs: object
    train_labels: np.ndarray
    teacher_features: np.ndarray | None   # (N_train, sum of teacher dims), float32
    teacher_slices: dict[str, list[int]]
    eval_inputs: object
    eval_labels: np.ndarray
    eval_name: str                        # "test" or "holdout"
    fingerprint: str


def take(inputs, idx: np.ndarray):
    return inputs[idx] if isinstance(inputs, np.ndarray) else [inputs[i] for i in idx]


def prepare_data(cfg: TransferConfig, progress: bool) -> _Data:
    data = load_dataset(cfg.dataset)
    train = data.split("train")
    if cfg.limit_train:
        train = train.head(cfg.limit_train)
    test = data.split("test")
    if cfg.limit_test:
        test = test.head(cfg.limit_test)

    feats, slices, start = [], {}, 0
    for teacher in cfg.teachers:
        info = extract_info(teacher, data, "train", limit=cfg.limit_train, device=cfg.device, progress=progress)
        if info.fingerprint != train.fingerprint:
            raise TransferError(f"the features of {teacher} were made from other data than {cfg.dataset}/train "
                                f"(fingerprint {info.fingerprint[:12]} vs {train.fingerprint[:12]}); extract them again")
        if info.features.shape[0] != len(train):
            raise TransferError(f"{teacher} has features for {info.features.shape[0]} of the {len(train)} training "
                                "examples; extract them again")
        feats.append(np.asarray(info.features, dtype=np.float32))
        slices[teacher] = [start, start + info.features.shape[1]]
        start += info.features.shape[1]
    psi = np.concatenate(feats, axis=1) if feats else None

    inputs, labels = train.inputs, train.labels
    eval_inputs, eval_labels, eval_name = test.inputs, test.labels, "test"
    if cfg.evaluate_on == "validation":
        pool = data.split("train")
        rows = np.arange(cfg.limit_train, cfg.limit_train + cfg.validation_size)
        if rows[-1] >= len(pool.labels):
            raise TransferError(f"{cfg.dataset}/train has {len(pool.labels):,} examples: too few for "
                                f"{cfg.limit_train:,} to train on and {cfg.validation_size:,} to validate on; "
                                "lower --limit-train or the validation size")
        eval_inputs, eval_labels, eval_name = take(pool.inputs, rows), pool.labels[rows], "validation"
    if cfg.holdout_fraction > 0:
        from sklearn.model_selection import train_test_split

        fit, held = train_test_split(np.arange(len(labels)), test_size=cfg.holdout_fraction,
                                     random_state=cfg.seed, stratify=labels)
        fit, held = np.sort(fit), np.sort(held)
        eval_inputs, eval_labels, eval_name = take(inputs, held), labels[held], "holdout"
        inputs, labels = take(inputs, fit), labels[fit]
        psi = psi[fit] if psi is not None else None
    return _Data(data, inputs, labels, psi, slices, eval_inputs, eval_labels, eval_name, train.fingerprint)


def batches(n: int, batch_size: int):
    return range(0, n, batch_size)


@torch.no_grad()
def _student_features(student: Student, inputs, prompt: str, batch_size: int) -> np.ndarray:
    """phi as a training step computes it: batch statistics in BatchNorm (a fresh student's running statistics are
    still 0 and 1, and features normalised with them live on another scale: B-Tuning's LogME fit on those once
    started R at ~100 instead of ~0.1), no dropout noise, and the running statistics left as they were."""
    norms = [m for m in student.modules() if isinstance(m, nn.modules.batchnorm._BatchNorm)]
    saved = [{k: v.clone() for k, v in m.state_dict().items()} for m in norms]
    student.eval()
    for m in norms:
        m.train()
    try:
        out = [student(student.preprocess(take(inputs, np.arange(i, min(i + batch_size, len(inputs)))), prompt))[1]
               for i in batches(len(inputs), batch_size)]
    finally:
        for m, state in zip(norms, saved):
            m.load_state_dict(state)
        student.train()
    return torch.cat(out).float().cpu().numpy()


def btuning_kwargs(student: Student, data: _Data, prompt: str, batch_size: int, cfg: TransferConfig) -> dict:
    """LogME posterior means of each teacher and of the untrained student, on up to ``cfg.btune_examples``."""
    from transfer.ranking import logme

    n = min(len(data.train_labels), cfg.btune_examples)
    labels = data.train_labels[:n]
    weights, scores = [], []
    for a, b in data.teacher_slices.values():
        score, m = logme(data.teacher_features[:n, a:b], labels, return_weights=True)
        scores.append(score)
        weights.append(torch.as_tensor(m, dtype=torch.float32))
    _, m_s = logme(_student_features(student, take(data.train_inputs, np.arange(n)), prompt, batch_size),
                   labels, return_weights=True)
    return dict(student_weights=torch.as_tensor(m_s, dtype=torch.float32), teacher_weights=weights,
                teacher_scores=scores, teacher_slices=list(map(tuple, data.teacher_slices.values())),
                temperature=cfg.btune_temperature)
