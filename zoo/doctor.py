"""What this installation has: versions, device, folders, catalog, offline packs and data sets."""
from __future__ import annotations

import importlib.metadata
import platform
import sys

from storage.catalog import Catalog, CatalogError
from storage.settings import get_settings, resolve_device
from zoo import datasets, packs, paper_data

_PACKAGES = ["aftzoo", "torch", "torchvision", "timm", "transformers", "open_clip_torch", "sentence-transformers",
             "gradio", "duckdb", "onnx", "onnxscript", "onnxruntime", "onnxruntime-gpu", "pandas", "numpy"]


def _version(dist: str) -> str | None:
    try:
        return importlib.metadata.version(dist)
    except importlib.metadata.PackageNotFoundError:
        return None


def report() -> dict:
    """Every check, with ``problems`` listing what a user must fix (empty when all is well)."""
    settings = get_settings()
    problems: list[str] = []
    versions = {"python": platform.python_version(), **{d: _version(d) for d in _PACKAGES}}
    for required in ("torch", "torchvision", "timm", "transformers", "duckdb", "onnx"):
        if versions[required] is None:
            problems.append(f"the package {required} is not installed; run scripts/install.sh")
    if versions["onnxruntime"] and versions["onnxruntime-gpu"]:
        problems.append("both onnxruntime and onnxruntime-gpu are installed; they share one module, "
                        "uninstall one of them")

    import torch

    device: dict = {"requested": settings.device, "cuda_available": torch.cuda.is_available()}
    try:
        device["resolved"] = resolve_device()
    except RuntimeError as exc:
        device["resolved"] = None
        problems.append(str(exc))
    if device["cuda_available"]:
        device["cuda_name"] = torch.cuda.get_device_name(0)
    try:
        import onnxruntime

        device["onnxruntime_providers"] = onnxruntime.get_available_providers()
    except ImportError:
        device["onnxruntime_providers"] = []
        problems.append("onnxruntime is not installed; run scripts/install.sh")

    catalog: dict = {"path": str(settings.catalog_path)}
    try:
        with Catalog(settings.catalog_path) as cat:
            catalog["schema_version"] = cat.schema_version
            catalog["feature_sets"] = cat.query("SELECT count(*) AS n FROM feature_sets")[0]["n"]
            catalog["runs"] = cat.query("SELECT count(*) AS n FROM runs")[0]["n"]
        catalog["ok"] = True
    except (CatalogError, OSError) as exc:
        catalog["ok"] = False
        catalog["error"] = str(exc)
        problems.append(f"catalog: {exc}")

    pack_rows = packs.status()
    for row in pack_rows:
        if not row["present"]:
            problems.append(f"offline pack {row['pack']} is missing; get it with: {row['how_to_get']}")
    # The paper's sets are fetched on first use: absent is not a problem, so they are listed apart.
    data_rows = [datasets.describe(name) for name in datasets.list_datasets() if name not in datasets.PAPER]
    paper_rows = [{"name": name, "present": paper_data.is_present(name)} for name in datasets.PAPER]

    return {
        "versions": versions,
        "platform": f"{platform.system()} {platform.machine()}, {sys.executable}",
        "settings": {"home": str(settings.home), "packs": str(settings.packs_dir), "device": settings.device,
                     "offline": settings.offline},
        "device": device,
        "catalog": catalog,
        "packs": pack_rows,
        "datasets": data_rows,
        "paper_datasets": paper_rows,
        "problems": problems,
    }
