"""The product's promise: a transferred student costs a fraction of its teacher at inference.

    python -m benchmarks.bench_student_teacher [--n 256] [--batch 32]

For each pair, in one run on the same inputs: the teacher's forward pass in PyTorch (its
zoo feature extractor, as aftzoo runs it) against the exported student in onnxruntime
(``transfer.serving.runtime``, preprocessing included), and the student in PyTorch too. The
students are trained for a few steps only: speed does not depend on accuracy.
"""
from __future__ import annotations

import argparse
import tempfile

import numpy as np
import torch


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--n", type=int, default=256, help="inputs timed per model")
    ap.add_argument("--batch", type=int, default=32)
    args = ap.parse_args()

    import os

    os.environ.setdefault("AFTZOO_HOME", tempfile.mkdtemp(prefix="aftzoo-bench-"))
    from transfer.export.onnx import export_run
    from transfer.export.latency import seconds_per_input
    from transfer.serving.runtime import load_export
    from transfer.training.students import build_student
    from transfer.training.trainer import TransferConfig, run
    from zoo.datasets import load_dataset
    from zoo.models import load
    from zoo.prompts import prompt_for

    pairs = [("rotten_tomatoes", "mpnet-base", "minilm-l6"), ("digits", "efficientnet-lite2", "resnet18-small")]
    print(f"torch {torch.__version__}, {torch.get_num_threads()} threads; {args.n} inputs, batch {args.batch}")
    for dataset, teacher_name, student_name in pairs:
        data = load_dataset(dataset)
        inputs = data.split("test").inputs[:args.n]
        cfg = TransferConfig(dataset=dataset, student=student_name, method="stl", steps=2, batch_size=16,
                             limit_train=64, limit_test=32, lr=1e-3)
        result = run(cfg, progress=False)
        exported = load_export(export_run(result.run_id, parity_examples=16, eval_limit=32)["path"])
        prompt = prompt_for(dataset) if data.modality == "text" else "{text}"
        teacher = load(teacher_name).eval()
        student = build_student(student_name, data.num_classes).eval()

        def time_of(fn):
            return seconds_per_input(fn, inputs, args.batch) * args.n

        with torch.inference_mode():
            t_teacher = time_of(lambda x: teacher.forward_features(teacher.preprocess(x, prompt)))
            t_student = time_of(lambda x: student(student.preprocess(x, prompt)))
        t_onnx = time_of(exported.logits)
        p_t = sum(p.numel() for p in teacher.parameters())
        p_s = sum(p.numel() for p in student.parameters())
        print(f"\n{dataset}: teacher {teacher_name} ({p_t / 1e6:.1f}M params) vs student {student_name} "
              f"({p_s / 1e6:.1f}M params)")
        print(f"  teacher, PyTorch:       {t_teacher / args.n * 1000:8.2f} ms/input")
        print(f"  student, PyTorch:       {t_student / args.n * 1000:8.2f} ms/input   "
              f"student/teacher time {t_student / t_teacher:.3f}")
        print(f"  student, onnxruntime:   {t_onnx / args.n * 1000:8.2f} ms/input   "
              f"student/teacher time {t_onnx / t_teacher:.3f}  (preprocessing included)")


if __name__ == "__main__":
    np.set_printoptions(precision=3)
    main()
