"""Export a run's student to a self-contained ONNX folder, checked against PyTorch.

``export_run(run_id)`` rebuilds the run's student from its checkpoint and writes::

    $AFTZOO_HOME/exports/<run_id>[-opset<N>][-int8]/
        model.onnx         the graph (torch.onnx.export, the dynamo exporter; onnxscript)
        model.onnx.data    its weights: always external (every tensor of 1 KiB or more), so
                           models past protobuf's 2 GB limit export the same way as small ones
        preprocess.json    modality, image size / mean / std / interpolation / channel handling,
                           or max length, prompt, padding of the tokenizer
        tokenizer.json     text students: the tokenizer, loadable with ``tokenizers`` alone
        classes.json       class names in logit order
        manifest.json      sha256 and size of each file above, versions, run, data set, opset,
                           parity (and int8 accuracy) figures

Inputs: images ``pixel_values`` float32 ``(N, 3, S, S)``, normalised; texts ``input_ids`` and
``attention_mask`` int64 ``(N, L)``; N and L dynamic. Outputs: ``logits`` and
``probabilities`` float32 ``(N, C)``.

Parity is measured on the first ``parity_examples`` (64) examples of the data set's test
split, twice: the model alone (the same preprocessed tensors into PyTorch and onnxruntime),
and end to end (``transfer.serving.runtime``'s numpy/tokenizers preprocessing + onnxruntime against
the student's own PyTorch preprocessing + PyTorch). Both are stored in the manifest and in
the catalog's ``exports`` row. ``quantize="int8"`` applies onnxruntime's dynamic
quantisation (int8 weights; activations quantised at run time) and reports the test
accuracy of the float32 and int8 models, end to end, on the first ``eval_limit`` (512) test
examples.
"""
from __future__ import annotations

import errno
import json
import logging
import os
import platform
import shutil
import time
import warnings
from importlib import metadata
from pathlib import Path
from typing import Any

import numpy as np

from storage.catalog import open_catalog
from storage.errors import AftzooError
from storage.settings import get_settings
from transfer.serving import runtime

FP32_TOLERANCE = 1e-3       # max |logit difference| accepted for a float32 export
QUANTIZE = ("int8",)


class ExportFailed(AftzooError, RuntimeError):
    """A run that cannot be exported; the message says why and what to do."""


_FULL = (errno.ENOSPC, errno.EDQUOT, errno.EFBIG)


def _disk_full(exc: BaseException, folder: Path) -> OSError | None:
    """The full-disk error somewhere in ``exc``'s chain (exporters wrap it in their own), if any.

    numpy's writer (under onnx's) raises ``OSError("problem writing element ...")`` with no errno:
    an OSError while the disk has under 1 MiB free counts as a full disk too.
    """
    seen = set()
    while exc is not None and id(exc) not in seen:
        seen.add(id(exc))
        if isinstance(exc, OSError) and exc.errno in _FULL:
            return exc
        if "No space left on device" in str(exc) or "File too large" in str(exc):
            return OSError(errno.ENOSPC, "No space left on device")
        if isinstance(exc, OSError):
            try:
                if shutil.disk_usage(folder).free < (1 << 20):
                    return OSError(errno.ENOSPC, "No space left on device")
            except OSError:
                pass
        exc = exc.__cause__ or exc.__context__
    return None


def _no_space(out: Path, error: OSError) -> ExportFailed:
    try:
        free = f"{shutil.disk_usage(out.parent).free:,} bytes free"
    except OSError:
        free = "free space unknown"
    why = "the file size limit (RLIMIT_FSIZE)" if error.errno == errno.EFBIG else free
    return ExportFailed(f"no space left on the disk of {out.parent} ({why}) while writing the export; nothing was "
                        "kept: free disk space, or export elsewhere with --out")


def _readable(folder: Path) -> None:
    """Files and folder as a fresh file would be (0644 with umask 022): the onnx writers leave some 0600."""
    mask = os.umask(0)
    os.umask(mask)
    for path in folder.iterdir():
        path.chmod(0o666 & ~mask)
    folder.chmod(0o777 & ~mask)


def _version(dist: str) -> str | None:
    try:
        return metadata.version(dist)
    except metadata.PackageNotFoundError:
        return None


def versions() -> dict[str, str | None]:
    import onnxruntime

    ort_dist = "onnxruntime-gpu" if _version("onnxruntime-gpu") else "onnxruntime"
    return {"aftzoo": _version("aftzoo"), "torch": _version("torch"), "onnx": _version("onnx"),
            "onnxscript": _version("onnxscript"), ort_dist: onnxruntime.__version__,
            "tokenizers": _version("tokenizers"), "numpy": np.__version__, "python": platform.python_version()}


def default_out(run_id: str, opset: int | None = None, quantize: str | None = None) -> Path:
    name = run_id + (f"-opset{opset}" if opset else "") + (f"-{quantize}" if quantize else "")
    return get_settings().home / "exports" / name


# ---------------------------------------------------------------------------------------------
# The run and its student
# ---------------------------------------------------------------------------------------------
def _load_run(run_id: str) -> dict:
    with open_catalog() as cat:
        row = cat.get_run(run_id)
        if row is not None and row["config"].get("kind") == "beta-auto":
            final = row["config"].get("final_run")
            if not final:
                raise ExportFailed(f"run {run_id} is a beta search that has not finished; export its final run "
                                   "when it completes")
            row = cat.get_run(final)
    if row is None:
        raise ExportFailed(f"no run {run_id!r} in the catalog ({get_settings().catalog_path}); list runs with "
                           "`aftzoo runs`")
    ckpt = row.get("checkpoint")
    if not ckpt or not Path(ckpt).is_file():
        raise ExportFailed(f"run {row['id']} has no checkpoint on disk (status {row['status']}); only runs that "
                           "saved a checkpoint can be exported")
    return row


def _build(row: dict):
    from transfer.training.students import build_student
    from zoo.datasets import load_dataset
    from zoo.registry import UnknownModel, resolve

    cfg = row["config"]
    data = load_dataset(row["dataset"])
    try:
        spec = resolve(row["student"], persist=False)
    except UnknownModel:
        raise ExportFailed(f"the student {row['student']!r} of run {row['id']} is not registered here: register it "
                           "again (zoo.register(..., persist=True) records it in the catalog for other processes)"
                           ) from None
    from transfer.training.trainer import TransferError, load_checkpoint

    try:
        state = load_checkpoint(row["checkpoint"], "cpu")  # weights_only=True: no pickled code runs
    except TransferError as exc:
        raise ExportFailed(f"run {row['id']}: {exc}") from None
    student = build_student(spec, data.num_classes, pretrained=bool(cfg.get("pretrained", True)), device="cpu",
                            seed=int(cfg.get("seed", 0)))
    try:
        student.load_state_dict(state["student"])
    except (RuntimeError, KeyError) as exc:
        raise ExportFailed(" ".join(f"the checkpoint of run {row['id']} does not fit the student "
                                    f"{spec.name!r} as registered now: {exc}".split())[:600]) from None
    student.eval()
    return student, spec, data


def _prompt(spec, dataset: str) -> str:
    from zoo.prompts import DEFAULT_PROMPT, prompt_for

    return prompt_for(dataset) if spec.modality == "text" and spec.prompt else DEFAULT_PROMPT


def _wrapper(student):
    import torch

    class ImageClassifier(torch.nn.Module):
        def __init__(self, s):
            super().__init__()
            self.student = s

        def forward(self, pixel_values):
            logits = self.student(pixel_values)[0].float()
            return logits, torch.softmax(logits, dim=-1)

    class TextClassifier(torch.nn.Module):
        def __init__(self, s):
            super().__init__()
            self.student = s

        def forward(self, input_ids, attention_mask):
            logits = self.student({"input_ids": input_ids, "attention_mask": attention_mask})[0].float()
            return logits, torch.softmax(logits, dim=-1)

    cls = ImageClassifier if student.spec.modality == "image" else TextClassifier
    return cls(student).eval()


def _torch_batch(student, inputs, prompt: str) -> dict[str, np.ndarray]:
    import torch

    with torch.no_grad():
        batch = student.preprocess(inputs, prompt)
    if isinstance(batch, dict):
        return {k: v.cpu().numpy().astype(np.int64) for k, v in batch.items()}
    return {"pixel_values": batch.contiguous().cpu().numpy().astype(np.float32)}


def _torch_logits(model, feeds: dict[str, np.ndarray]) -> np.ndarray:
    import torch

    with torch.no_grad():
        args = [torch.from_numpy(feeds[k]) for k in ("pixel_values",)] if "pixel_values" in feeds else \
            [torch.from_numpy(feeds["input_ids"]), torch.from_numpy(feeds["attention_mask"])]
        return model(*args)[0].float().numpy()


# ---------------------------------------------------------------------------------------------
# Writing the folder
# ---------------------------------------------------------------------------------------------
def _save_onnx(model, path: Path) -> None:
    """Save ``model`` as ``path`` + ``model.onnx.data`` (every tensor of 1 KiB or more external).

    onnx's own ``save_as_external_data`` looks for an existing data file relative to the current
    directory, not the model's, so the tensors are marked here and written by ``save_model``.
    """
    import onnx
    from onnx.external_data_helper import set_external_data

    try:
        from onnx.external_data_helper import _get_initializer_tensors as tensors_of
    except ImportError:  # pragma: no cover - older onnx
        def tensors_of(m):
            return iter(m.graph.initializer)
    data = path.with_name(runtime.DATA_FILE)
    if data.exists():
        data.unlink()
    for tensor in tensors_of(model):
        if tensor.HasField("raw_data") and len(tensor.raw_data) >= 1024:
            set_external_data(tensor, runtime.DATA_FILE)
    onnx.save_model(model, str(path))


def _export_onnx(student, example: dict[str, np.ndarray], path: Path, opset: int | None) -> int:
    import onnx
    import torch

    model = _wrapper(student)
    if "pixel_values" in example:
        args = (torch.from_numpy(example["pixel_values"]),)
        dynamic = {"pixel_values": {0: torch.export.Dim("batch")}}
    else:
        args = (torch.from_numpy(example["input_ids"]), torch.from_numpy(example["attention_mask"]))
        batch, length = torch.export.Dim("batch"), torch.export.Dim("length")
        dynamic = {"input_ids": {0: batch, 1: length}, "attention_mask": {0: batch, 1: length}}
    raw = path.with_name("raw")
    raw.mkdir()
    # The exporter and onnxscript log progress and version-conversion tracebacks; failures are reported below.
    loggers = [logging.getLogger(n) for n in ("torch.onnx", "onnxscript")]
    levels = [lg.level for lg in loggers]
    for lg in loggers:
        lg.setLevel(logging.ERROR + 10)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        try:
            torch.onnx.export(model, args, str(raw / "model.onnx"), input_names=list(dynamic),
                              output_names=["logits", "probabilities"], dynamic_shapes=dynamic, opset_version=opset,
                              external_data=True, dynamo=True, verbose=False)
        except Exception as exc:
            raise ExportFailed(" ".join(f"torch.onnx.export failed for {student.spec.name!r}: "
                                        f"{type(exc).__name__}: {exc}".split())[:800]) from exc
        finally:
            for lg, level in zip(loggers, levels):
                lg.setLevel(level)
    proto = onnx.load(str(raw / "model.onnx"))
    actual = max((o.version for o in proto.opset_import if o.domain in ("", "ai.onnx")), default=0)
    if opset is not None and actual != opset:
        raise ExportFailed(f"torch.onnx.export could not convert {student.spec.name!r} to opset {opset} (it stayed at "
                           f"{actual}); leave --opset out or ask for {actual} or more")
    # Stored shapes of intermediate values add nothing at run time, and onnxruntime's quantiser
    # re-infers them and trips over the exporter's own.
    del proto.graph.value_info[:]
    _save_onnx(proto, path)
    shutil.rmtree(raw)
    return actual


def _preprocess_config(student, spec, prompt: str, folder: Path) -> dict:
    backbone = student.backbone
    if spec.modality == "image":
        return {"modality": "image", "input": "pixel_values", "image_size": int(spec.image_size),
                "mean": list(spec.mean), "std": list(spec.std), "interpolation": spec.interpolation,
                "antialias": True, "layout": "NCHW", "dtype": "float32",
                "channels": "grey images stay one channel (broadcast to 3 by the normalisation); RGBA drops alpha; "
                            "palette/CMYK -> RGB; 1-bit/16-bit -> grey; EXIF orientation applied",
                "scaling": "pixel / 255, minus mean, divided by std"}
    tokenizer = getattr(backbone, "tokenizer", None)
    fast = getattr(tokenizer, "backend_tokenizer", None) if tokenizer is not None else None
    if fast is None or not hasattr(backbone, "max_length"):
        raise ExportFailed(f"the student {spec.name!r} has no fast (tokenizers) tokenizer; only students with one "
                           "can be served without PyTorch")
    fast.save(str(folder / runtime.TOKENIZER_FILE))
    clean_up = bool(getattr(tokenizer, "clean_up_tokenization_spaces", False))
    if clean_up and type(fast.model).__name__ == "BPE" and not getattr(
            tokenizer, "clean_up_tokenization_spaces_for_bpe_even_though_it_will_corrupt_output", False):
        clean_up = False  # transformers skips it for BPE tokenizers
    return {"modality": "text", "inputs": ["input_ids", "attention_mask"], "dtype": "int64",
            "tokenizer": runtime.TOKENIZER_FILE, "max_length": int(backbone.max_length), "prompt": prompt,
            "lowercase": bool(getattr(backbone, "lowercase", False)), "pad_token_id": int(tokenizer.pad_token_id),
            "padding_side": tokenizer.padding_side, "truncation_side": getattr(tokenizer, "truncation_side", "right"),
            "clean_up_tokenization_spaces": clean_up, "add_special_tokens": True}


def _files(folder: Path) -> dict[str, dict]:
    return {p.name: {"sha256": runtime.sha256_file(p), "bytes": p.stat().st_size}
            for p in sorted(folder.iterdir()) if p.is_file() and p.name != runtime.MANIFEST_FILE}


def _write_manifest(folder: Path, manifest: dict) -> dict:
    manifest = {**manifest, "files": _files(folder)}
    tmp = folder / f".{runtime.MANIFEST_FILE}.tmp"
    tmp.write_text(json.dumps(manifest, indent=2, default=str) + "\n")
    os.replace(tmp, folder / runtime.MANIFEST_FILE)
    return manifest


# ---------------------------------------------------------------------------------------------
# Parity and accuracy
# ---------------------------------------------------------------------------------------------
def _take(inputs, start: int, stop: int):
    return inputs[start:stop]


def _parity(student, wrapper, exported: runtime.ExportedModel, inputs, prompt: str, batch_size: int) -> dict:
    n = len(inputs)
    # Batches of several sizes, so the dynamic batch (and text length) axes are exercised.
    bounds, start = [], 0
    for size in [1, *([batch_size] * (n // max(batch_size, 1) + 1))]:
        if start >= n:
            break
        bounds.append((start, min(start + size, n)))
        start += size
    alone_diff, e2e_diff, prep_diff = [], [], []
    ref_top, alone_top, e2e_top = [], [], []
    token_rows = token_equal = 0
    for a, b in bounds:
        chunk = _take(inputs, a, b)
        feeds = _torch_batch(student, chunk, prompt)
        ref = _torch_logits(wrapper, feeds)
        alone = exported.run(feeds)
        mine = exported.prepare(list(chunk) if not isinstance(chunk, np.ndarray) else chunk)
        e2e = exported.run(mine)
        alone_diff.append(np.abs(alone - ref).max())
        e2e_diff.append(np.abs(e2e - ref).max())
        ref_top.append(ref.argmax(1))
        alone_top.append(alone.argmax(1))
        e2e_top.append(e2e.argmax(1))
        if "input_ids" in feeds:
            same = feeds["input_ids"].shape == mine["input_ids"].shape
            rows = (feeds["input_ids"] == mine["input_ids"]).all(1) & (
                feeds["attention_mask"] == mine["attention_mask"]).all(1) if same else np.zeros(len(chunk), bool)
            token_rows += len(chunk)
            token_equal += int(rows.sum())
        else:
            prep_diff.append(np.abs(mine["pixel_values"] - feeds["pixel_values"]).max())
    ref_top, alone_top, e2e_top = map(np.concatenate, (ref_top, alone_top, e2e_top))
    out = {
        "examples": int(n), "batches": [b - a for a, b in bounds],
        "model": {"max_abs_logit_diff": float(max(alone_diff)), "top1_agreement": float((alone_top == ref_top).mean())},
        "end_to_end": {"max_abs_logit_diff": float(max(e2e_diff)), "top1_agreement": float((e2e_top == ref_top).mean())},
    }
    if token_rows:
        out["end_to_end"]["token_match"] = token_equal / token_rows
    if prep_diff:
        out["end_to_end"]["max_abs_input_diff"] = float(max(prep_diff))
    return out


def _accuracy(exported: runtime.ExportedModel, inputs, labels: np.ndarray, batch_size: int) -> float:
    correct = 0
    for a in range(0, len(labels), batch_size):
        chunk = _take(inputs, a, a + batch_size)
        logits = exported.logits(chunk if isinstance(chunk, np.ndarray) else list(chunk))
        correct += int((logits.argmax(1) == labels[a:a + batch_size]).sum())
    return correct / len(labels)


def _quantize(fp32: Path, out: Path) -> list[str]:
    import onnx
    from onnxruntime.quantization import QuantType, quantize_dynamic

    work = out.with_name("int8-work")
    work.mkdir()
    root = logging.getLogger()
    level = root.level
    root.setLevel(max(level, logging.ERROR))  # the quantiser logs advice on the root logger
    try:
        quantize_dynamic(str(fp32), str(work / "model.onnx"), weight_type=QuantType.QInt8,
                         use_external_data_format=True)
    finally:
        root.setLevel(level)
    proto = onnx.load(str(work / "model.onnx"))
    quantized = sorted({n.op_type for n in proto.graph.node if n.op_type.endswith("Integer")})
    _save_onnx(proto, out)
    shutil.rmtree(work)
    return quantized


def _quantize_and_measure(student, wrapper, fp32: runtime.ExportedModel, work: Path, test, parity_inputs, prompt: str,
                          eval_limit: int, batch_size: int) -> dict:
    """Quantise ``fp32`` into ``work``; its parity with PyTorch and its test accuracy against float32."""
    ops = _quantize(fp32.folder / runtime.MODEL_FILE, work / runtime.MODEL_FILE)
    _write_manifest(work, json.loads((fp32.folder / runtime.MANIFEST_FILE).read_text()))
    int8 = runtime.ExportedModel(work, providers="CPUExecutionProvider", verify=False)
    q_parity = _parity(student, wrapper, int8, parity_inputs, prompt, batch_size)
    n = min(eval_limit, len(test))
    eval_inputs, eval_labels = test.inputs[:n], test.labels[:n]
    before = _accuracy(fp32, eval_inputs, eval_labels, batch_size)
    after = _accuracy(int8, eval_inputs, eval_labels, batch_size)
    sizes = {k: sum(p.stat().st_size for p in d.glob("model.onnx*")) for k, d in (("fp32", fp32.folder),
                                                                                  ("int8", work))}
    return {"method": "onnxruntime dynamic quantisation, int8 weights (QInt8), activations quantised at run time",
            "quantized_ops": ops, "eval_examples": n, "eval_split": "test", "eval_limited": n < len(test),
            "accuracy_fp32": before, "accuracy_int8": after, "accuracy_change": after - before,
            "bytes_fp32": sizes["fp32"], "bytes_int8": sizes["int8"], "parity_int8_vs_torch": q_parity}


def _manifest(name: str, row: dict, spec, num_classes: int, opset: int, quantize: str | None) -> dict:
    return {
        "format": runtime.FORMAT, "format_version": runtime.FORMAT_VERSION, "name": name, "run_id": row["id"],
        "dataset": row["dataset"], "data_fingerprint": row["config"].get("data_fingerprint"),
        "student": spec.name, "student_spec": spec.to_dict(), "method": row["method"],
        "teachers": row["teachers"], "run_test_accuracy": row.get("test_accuracy"), "run_status": row["status"],
        "modality": spec.modality, "num_classes": num_classes, "opset": opset,
        "quantize": quantize, "created_at": time.strftime("%Y-%m-%dT%H:%M:%S%z"), "versions": versions(),
        "inputs": (["pixel_values"] if spec.modality == "image" else ["input_ids", "attention_mask"]),
        "outputs": ["logits", "probabilities"],
        "external_data": runtime.DATA_FILE,
    }


# ---------------------------------------------------------------------------------------------
# The entry point
# ---------------------------------------------------------------------------------------------
def export_run(run_id: str, out: str | Path | None = None, opset: int | None = None, quantize: str | None = None, *,
               parity_examples: int = 64, eval_limit: int = 512, batch_size: int = 16) -> dict:
    """Export run ``run_id``'s student (see the module docstring); return a summary, also stored in the catalog."""
    started = time.perf_counter()
    if quantize is not None and quantize not in QUANTIZE:
        raise ExportFailed(f"--quantize must be one of {', '.join(QUANTIZE)}; got {quantize!r}")
    if opset is not None and not 7 <= int(opset) <= 30:
        raise ExportFailed(f"opset must be between 7 and 30; got {opset}")
    if parity_examples < 1 or eval_limit < 1 or batch_size < 1:
        raise ExportFailed("parity_examples, eval_limit and batch_size must be at least 1")
    row = _load_run(run_id)
    run_id = row["id"]
    out = Path(out).expanduser() if out else default_out(run_id, opset, quantize)
    out = out.resolve()
    if out.exists() and (not out.is_dir() or (any(out.iterdir()) and not (out / runtime.MANIFEST_FILE).is_file())):
        raise ExportFailed(f"{out} exists and is not an earlier export; choose another --out")

    student, spec, data = _build(row)
    prompt = _prompt(spec, row["dataset"])
    test = data.split("test")
    parity_inputs = test.inputs[:parity_examples]
    out.parent.mkdir(parents=True, exist_ok=True)
    work = out.parent / f".{out.name}.tmp-{os.getpid()}"
    if work.exists():
        shutil.rmtree(work)
    work.mkdir()
    try:
        example = _torch_batch(student, test.inputs[:2], prompt)
        fp32_dir = work / "fp32" if quantize else work
        fp32_dir.mkdir(exist_ok=True)
        actual_opset = _export_onnx(student, example, fp32_dir / runtime.MODEL_FILE, opset)
        (work / runtime.PREPROCESS_FILE).write_text(
            json.dumps(_preprocess_config(student, spec, prompt, work), indent=2) + "\n")
        (work / runtime.CLASSES_FILE).write_text(json.dumps(list(map(str, data.class_names)), indent=2) + "\n")
        if quantize:
            for name in (runtime.PREPROCESS_FILE, runtime.CLASSES_FILE, runtime.TOKENIZER_FILE):
                if (work / name).is_file():
                    shutil.copy2(work / name, fp32_dir / name)
        manifest = _manifest(out.name, row, spec, data.num_classes, actual_opset, quantize)
        _write_manifest(fp32_dir, manifest)
        fp32 = runtime.ExportedModel(fp32_dir, providers="CPUExecutionProvider", verify=False)
        wrapper = _wrapper(student)
        parity = _parity(student, wrapper, fp32, parity_inputs, prompt, batch_size)
        parity["tolerance"] = FP32_TOLERANCE
        parity["passed"] = bool(parity["model"]["max_abs_logit_diff"] < FP32_TOLERANCE
                                and parity["model"]["top1_agreement"] == 1.0)
        quantization = None
        if quantize:
            quantization = _quantize_and_measure(student, wrapper, fp32, work, test, parity_inputs, prompt,
                                                 eval_limit, batch_size)
            shutil.rmtree(fp32_dir)
        del fp32
        manifest["parity"] = parity
        if quantization:
            manifest["quantization"] = quantization
        manifest = _write_manifest(work, manifest)
        runtime.verify_export(work)
        _readable(work)
        if out.exists():
            shutil.rmtree(out)
        os.replace(work, out)
    except BaseException as exc:
        full = _disk_full(exc, out.parent)  # before the partial files go: they are what filled the disk
        shutil.rmtree(work, ignore_errors=True)
        if full is not None:
            raise _no_space(out, full) from None
        raise
    record = {"parity": parity, **({"quantization": quantization} if quantization else {})}
    with open_catalog() as cat:
        export_id = cat.execute(
            "INSERT INTO exports (run_id, path, opset, quantize, manifest, parity) VALUES (?, ?, ?, ?, ?, ?) "
            "RETURNING id", [run_id, str(out), actual_opset, quantize, json.dumps(manifest, default=str),
                             json.dumps(record, default=str)])[0][0]
    return {"export_id": int(export_id), "name": out.name, "path": str(out), "run_id": run_id,
            "dataset": row["dataset"], "student": spec.name, "modality": spec.modality, "opset": actual_opset,
            "quantize": quantize, "files": manifest["files"], "parity": parity, "quantization": quantization,
            "versions": manifest["versions"], "seconds": round(time.perf_counter() - started, 2)}


def list_exports(run_id: str | None = None) -> list[dict[str, Any]]:
    """Catalog rows of exports (newest first), manifests and parity parsed."""
    with open_catalog() as cat:
        rows = cat.query("SELECT * FROM exports" + (" WHERE run_id = ?" if run_id else "") +
                         " ORDER BY created_at DESC, id DESC", [run_id] if run_id else [])
    for r in rows:
        for key in ("manifest", "parity"):
            if isinstance(r.get(key), str):
                r[key] = json.loads(r[key])
    return rows
