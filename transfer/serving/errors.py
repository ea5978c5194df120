"""The errors of the torch-free runtime: a broken export, or an input a model cannot take."""
from __future__ import annotations

from storage.errors import AftzooError


class ExportError(AftzooError, RuntimeError):
    """An export folder that cannot be used: missing files, unknown format."""


class TamperedExport(ExportError):
    """A file of the export differs from the checksum its manifest records."""


class InputError(AftzooError, ValueError):
    """An input the model cannot take (an undecodable image, a text where an image is expected...)."""
