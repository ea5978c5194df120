"""The one settings object, read from ``AFTZOO_*`` environment variables."""
from __future__ import annotations

import os
from functools import lru_cache
from pathlib import Path
from typing import Literal

from pydantic import Field, SecretStr, ValidationError
from pydantic_settings import BaseSettings, SettingsConfigDict

from storage.errors import AftzooError


def _default_home() -> Path:
    cache = os.environ.get("XDG_CACHE_HOME") or os.path.join(os.path.expanduser("~"), ".cache")
    return Path(cache) / "aftzoo"


class Settings(BaseSettings):
    """Where aftzoo keeps its data, which device it uses, and whether it may use the network.

    ``AFTZOO_HOME``     data folder: the catalog, features, checkpoints, exports.
    ``AFTZOO_PACKS``    where unpacked offline packs live (default ``$AFTZOO_HOME/packs``);
                        kept apart so a throw-away home can share one unpacked copy.
    ``AFTZOO_DEVICE``   ``auto`` (CUDA when present), ``cpu`` or ``cuda``.
    ``AFTZOO_OFFLINE``  ``1`` (default) never touches a model hub; ``0`` allows downloads.
    ``AFTZOO_JOBS``     transfer jobs the app runs at once (the rest wait in its queue).
    ``AFTZOO_APP_USER``, ``AFTZOO_APP_PASSWORD``  turn on the app's login (both or neither).
    ``AFTZOO_DIST_TIMEOUT``  seconds a multi-process collective waits for a peer (empty: 900); checked, with
                        its own message, by ``zoo.processes.timeout`` where it is used.
    ``AFTZOO_JOB_PARENT``  set by the app's job queue in each worker: the app's process id (0: none).
    """

    model_config = SettingsConfigDict(env_prefix="AFTZOO_", extra="ignore")

    home: Path = Field(default_factory=_default_home)
    packs: Path | None = None
    device: Literal["auto", "cpu", "cuda"] = "auto"
    offline: bool = True
    jobs: int = Field(default=1, ge=1, le=64)
    app_user: str | None = None
    app_password: SecretStr | None = None
    dist_timeout: str = ""
    job_parent: int = Field(default=0, ge=0)

    @property
    def packs_dir(self) -> Path:
        return self.packs if self.packs is not None else self.home / "packs"

    @property
    def catalog_path(self) -> Path:
        return self.home / "catalog.duckdb"

    @property
    def features_dir(self) -> Path:
        return self.home / "features"

    def apply_environment(self) -> None:
        """Set the hub clients' own variables; they read them at import time, so call this first."""
        os.environ.setdefault("HF_HUB_DISABLE_TELEMETRY", "1")
        os.environ.setdefault("GRADIO_ANALYTICS_ENABLED", "False")
        os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
        if self.offline:
            # Without these the hub clients stall on look-ups on a machine with no network.
            os.environ["HF_HUB_OFFLINE"] = "1"
            os.environ["TRANSFORMERS_OFFLINE"] = "1"
            os.environ["HF_DATASETS_OFFLINE"] = "1"


class SettingsError(AftzooError, ValueError):
    """An ``AFTZOO_*`` variable with a value aftzoo cannot use."""


@lru_cache(maxsize=1)
def get_settings() -> Settings:
    try:
        settings = Settings()
    except ValidationError as exc:
        def shown(e) -> str:  # never echo a secret back into a log
            return "'***'" if "password" in "_".join(map(str, e["loc"])) else repr(e.get("input"))

        problems = "; ".join(f"AFTZOO_{'_'.join(map(str, e['loc'])).upper()}={shown(e)}: {e['msg']}"
                             for e in exc.errors())
        raise SettingsError(f"bad setting: {problems}") from None
    settings.apply_environment()
    return settings


def reset_settings() -> None:
    """Forget the cached settings (tests change the environment between cases)."""
    get_settings.cache_clear()


def resolve_device(requested: str | None = None) -> str:
    """Return ``"cuda"`` or ``"cpu"`` for the requested device, failing clearly if CUDA is asked for but absent."""
    import torch

    requested = requested or get_settings().device
    if requested not in ("auto", "cpu", "cuda"):
        raise ValueError(f"device must be one of auto, cpu, cuda; got {requested!r}")
    if requested == "auto":
        return "cuda" if torch.cuda.is_available() else "cpu"
    if requested == "cuda" and not torch.cuda.is_available():
        raise RuntimeError("AFTZOO_DEVICE=cuda but no CUDA device is visible to PyTorch; "
                           "use AFTZOO_DEVICE=auto or cpu, or check the driver with nvidia-smi")
    return requested
