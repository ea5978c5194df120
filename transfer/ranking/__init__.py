"""Ranking a zoo of pre-trained models for a target task: transferability scores."""
from transfer.ranking.scores import (
    InvalidRankingInput,
    check_features_labels,
    hscore,
    leep,
    logme,
    nce,
    probe_accuracy,
)
from transfer.ranking.rank import METRICS, history, rank, source_classifier

__all__ = [
    "InvalidRankingInput",
    "check_features_labels",
    "hscore",
    "leep",
    "logme",
    "nce",
    "probe_accuracy",
    "METRICS",
    "history",
    "rank",
    "source_classifier",
]
