"""Bring a model's weights onto this machine with progress: the hub download behind ``AFTZOO_OFFLINE=0``.

A model whose weights live in a Hugging Face repo is fetched file by file into the local hub
cache, where every loader already looks (``zoo.weights``): its configs, tokenizer files and one
weights format (safetensors where the repo has them), never its ONNX, TensorFlow or Flax copies.
Progress is reported in bytes against the total the hub lists. A model with no hub repo (a timm
or open_clip tag that downloads from a URL) is fetched by building it once with its library,
with no byte count to report.
"""
from __future__ import annotations

import io
from typing import Callable

from tqdm import tqdm

from zoo.registry import resolve
from zoo.spec import ModelSpec
from zoo.weights import WeightsSource, WeightsUnavailable, cache_repo, resolve_weights

# (fraction done or None when unknown, what is happening)
OnProgress = Callable[[float | None, str], None]

_SIDE_FILES = (".json", ".txt", ".model")            # configs, vocabularies, sentencepiece models
_OTHER_FORMATS = ("onnx", "openvino", "flax_", "tf_", "rust_", "coreml", ".h5", ".msgpack", ".tflite")


def files_to_fetch(sizes: dict[str, int]) -> list[str]:
    """The files of a repo (path -> bytes) a loader reads: side files and one weights format."""
    usable = [f for f in sizes if not any(mark in f.lower() for mark in _OTHER_FORMATS)]
    safetensors = any(f.endswith(".safetensors") for f in usable)
    return sorted(f for f in usable
                  if f.endswith(_SIDE_FILES) or f.endswith(".safetensors")
                  or (not safetensors and f.endswith(".bin") and "model" in f.rsplit("/", 1)[-1]))


def _megabytes(n: float) -> str:
    return f"{n / 1e6:,.1f} MB"


def _fetch_repo(repo: str, name: str, report: OnProgress) -> None:
    from huggingface_hub import HfApi, hf_hub_download
    from huggingface_hub.hf_api import RepoFile

    report(0.0, f"listing the files of {repo}")
    sizes = {f.path: int(f.size or 0) for f in HfApi().list_repo_tree(repo, recursive=True) if isinstance(f, RepoFile)}
    files = files_to_fetch(sizes)
    if not files:
        raise WeightsUnavailable(f"the hub repo {repo} has no files aftzoo can load (configs and safetensors or "
                                 f"pytorch_model.bin); it lists {', '.join(sorted(sizes)[:8]) or 'nothing'}")
    total, done = sum(sizes[f] for f in files) or 1, 0

    class Bar(tqdm):
        """hf_hub_download's per-file bar, turned into one fraction of the whole download."""

        def __init__(self, *args, **kwargs):
            kwargs.pop("name", None)
            super().__init__(*args, **{**kwargs, "file": io.StringIO(), "disable": False})

        def update(self, n=1):
            super().update(n)
            got = min(total, done + self.n)
            report(got / total, f"downloading {name}: {_megabytes(got)} of {_megabytes(total)}")

    for path in files:
        hf_hub_download(repo, path, tqdm_class=Bar)
        done += sizes[path]
        report(done / total, f"downloading {name}: {_megabytes(done)} of {_megabytes(total)}")


def fetch(model: str | ModelSpec, on_progress: OnProgress | None = None) -> WeightsSource:
    """Make ``model``'s weights loadable here and say where they are.

    Weights already here (a folder, the cache, a pack) are left alone; otherwise they are
    downloaded, which only ``AFTZOO_OFFLINE=0`` allows: with downloads off this raises the
    one-line ``WeightsUnavailable`` that names the command fetching them.
    """
    spec = resolve(model)
    source = resolve_weights(spec)
    if source.kind != "hub":
        return source
    report = on_progress or (lambda fraction, what: None)
    if repo := cache_repo(spec):
        import httpx2  # huggingface_hub's own HTTP client (pinned with it): its connection errors
        from huggingface_hub.errors import HfHubHTTPError, RepositoryNotFoundError

        try:
            _fetch_repo(repo, spec.name, report)
        except RepositoryNotFoundError:
            raise WeightsUnavailable(f"the hub has no repo {repo} with the weights of {spec.name}: check the name, or "
                                     "log in with `hf auth login` if it is private or gated") from None
        except (HfHubHTTPError, httpx2.HTTPError, OSError) as exc:
            reason = " ".join(str(exc).split()).split(" for url")[0][:200]
            raise WeightsUnavailable(f"could not download {repo} for {spec.name} ({reason}): check the network, or "
                                     f"fetch it on a machine with one (`hf download {repo}`) and copy the Hugging "
                                     "Face cache here") from None
    else:
        from zoo.models import load  # the library knows the URL; building the model once fetches it

        report(None, f"downloading {spec.name} with its library")
        load(spec, device="cpu")
        return WeightsSource("hub")  # in the library's own cache, which zoo.weights cannot see
    found = resolve_weights(spec)
    if found.kind == "hub":
        raise WeightsUnavailable(f"downloaded {repo} but found no weights of {spec.name} in the Hugging Face cache "
                                 "afterwards; is HF_HUB_CACHE writable?")
    report(1.0, f"{spec.name} is on this machine ({found.describe()})")
    return found
