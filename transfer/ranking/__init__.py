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

__all__ = [
    "InvalidRankingInput",
    "check_features_labels",
    "hscore",
    "leep",
    "logme",
    "nce",
    "probe_accuracy",
]
