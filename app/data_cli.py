"""CLI commands over users' own data sets: ``add-dataset`` and ``remove-dataset``."""
from __future__ import annotations

import typer

from app.output import console, err, fail, print_json


def add_dataset_cmd(
        path: str = typer.Argument(..., help="A .csv, .jsonl or .parquet table, a folder of class folders of images, "
                                   "or a .zip of one."),
        name: str = typer.Option(..., "--name", "-n", help="The new data set's name: a-z, 0-9, '_' and '-'."),
        text_column: str | None = typer.Option(None, "--text-column", help="Tables: the column of texts "
                                                  "(default: guessed), or several: premise,hypothesis."),
        template: str | None = typer.Option(None, "--template", help="Tables with several text columns: how to "
                                             "join them, e.g. 'Premise: {premise} Hypothesis: {hypothesis}' "
                                             "(default: one per line)."),
        label_column: str | None = typer.Option(None, "--label-column", help="Tables: the column of labels "
                                                   "(default: guessed)."),
        overwrite: bool = typer.Option(False, "--overwrite", help="Replace an imported data set of the same name."),
        as_json: bool = typer.Option(False, "--json", help="One JSON object on stdout.")) -> None:
    """Import your own labelled data as a data set, usable by name everywhere a bundled one is."""
    from storage.catalog import CatalogError
    from zoo.datasets import describe
    from zoo.userdata import DamagedDataset, UploadError, import_upload

    try:
        ds = import_upload(path, name, text_column=text_column, label_column=label_column, overwrite=overwrite,
                           template=template)
    except (UploadError, CatalogError, DamagedDataset) as exc:
        fail(str(exc))
    except OSError as exc:  # a full disk or a folder without write permission
        fail(f"could not store the data set: {exc}")
    warnings = list(ds.extra.get("warnings", []))
    if as_json:
        print_json({**describe(ds.name), "warnings": warnings})
        return
    sizes = ", ".join(f"{k} {len(v):,}" for k, v in ds.splits.items())
    console.print(f"imported {ds.name!r} ({ds.modality}, {ds.num_classes} classes: "
                  f"{', '.join(ds.class_names[:8])}{' ...' if ds.num_classes > 8 else ''}): {sizes}",
                  highlight=False, soft_wrap=True)
    for line in warnings[:20]:
        err.print(f"[yellow]warning:[/] {line}", highlight=False, soft_wrap=True)
    if len(warnings) > 20:
        err.print(f"[yellow]warning:[/] ... and {len(warnings) - 20} more (see --json)", highlight=False)


def remove_dataset_cmd(name: str = typer.Argument(..., help="An imported data set's name.")) -> None:
    """Delete an imported data set (bundled ones cannot be removed)."""
    from storage.catalog import CatalogError
    from zoo.userdata import UploadError, remove_dataset

    try:
        remove_dataset(name)
    except (UploadError, CatalogError) as exc:
        fail(str(exc))
    except OSError as exc:
        fail(f"could not remove the data set: {exc}")
    console.print(f"removed {name!r}", highlight=False)
