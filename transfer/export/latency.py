"""What a student costs at inference against its teacher, measured on the same inputs.

The teacher runs as aftzoo runs it (its zoo feature extractor in PyTorch, preprocessing
included); the student runs exported, in onnxruntime, preprocessing included. Each is
timed best-of-``repeats`` after one warm-up pass, so one slow moment on a busy machine
does not decide the figure.
"""
from __future__ import annotations

import time
from typing import Callable, Sequence


def seconds_per_input(fn: Callable[[Sequence], object], inputs: Sequence, batch: int = 16, repeats: int = 3) -> float:
    """Best-of-``repeats`` wall time of ``fn`` over ``inputs`` in batches, divided by the number of inputs."""
    if len(inputs) == 0:
        raise ValueError("time at least one input")
    if batch < 1 or repeats < 1:
        raise ValueError(f"batch and repeats must be at least 1; got {batch} and {repeats}")

    def once() -> None:
        for i in range(0, len(inputs), batch):
            chunk = inputs[i:i + batch]
            fn(list(chunk) if isinstance(chunk, list) else chunk)

    once()
    best = float("inf")
    for _ in range(repeats):
        start = time.perf_counter()
        once()
        best = min(best, time.perf_counter() - start)
    return best / len(inputs)


def student_vs_teacher(export_dir: str, teacher: str, *, n: int = 32, batch: int = 16) -> dict:
    """Milliseconds per input of the exported student (onnxruntime) and of ``teacher`` (PyTorch), and their ratio."""
    import torch

    from transfer.serving.runtime import load_export
    from zoo.datasets import load_dataset
    from zoo.models import load
    from zoo.prompts import prompt_for

    student = load_export(export_dir)
    data = load_dataset(student.manifest["dataset"])
    inputs = data.split("test").inputs[:n]
    model = load(teacher).eval()
    prompt = prompt_for(data.name) if data.modality == "text" and model.spec.prompt else "{text}"
    with torch.inference_mode():
        t_teacher = seconds_per_input(lambda x: model.forward_features(model.preprocess(x, prompt)), inputs, batch)
    t_student = seconds_per_input(student.logits, inputs, batch)
    return {"teacher": teacher, "student": student.manifest["student"], "inputs": len(inputs), "batch": batch,
            "teacher_ms": 1000 * t_teacher, "student_ms": 1000 * t_student, "ratio": t_student / t_teacher,
            "teacher_params": sum(p.numel() for p in model.parameters())}
