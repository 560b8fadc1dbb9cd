"""Raw rows from a local mirror or the Hugging Face hub.

Local files are parsed here with errors that name the file and row; hub datasets go through
``datasets.load_dataset`` and are mapped to the same field names as the local files.
"""

from __future__ import annotations

import csv
import io
from pathlib import Path
from typing import Any

from tunebench.errors import TunebenchError, located
from tunebench.io import iter_jsonl, read_json, read_text


def read_rows(path: str | Path) -> list[dict[str, Any]]:
    """Rows of a ``.json`` (array), ``.jsonl`` or ``.csv`` file."""
    p = Path(path)
    suffix = p.suffix.lower()
    if suffix == ".jsonl":
        return list(iter_jsonl(p))
    if suffix == ".json":
        data = read_json(p)
        if not isinstance(data, list):
            raise TunebenchError(f"{p}: expected a JSON array of objects")
        return data
    if suffix == ".csv":
        return read_csv(p)
    raise TunebenchError(f"{p}: unsupported file type '{suffix}' (use .json, .jsonl or .csv)")


def read_csv(path: Path) -> list[dict[str, Any]]:
    """CSV with a header row; a row with the wrong number of cells is a located error."""
    text = read_text(path)
    reader = csv.reader(io.StringIO(text, newline=""))
    try:
        header = next(reader)
    except StopIteration:
        raise TunebenchError(f"{path}: file is empty") from None
    except csv.Error as exc:
        raise located(path, f"malformed CSV: {exc}", line=1) from None
    rows = []
    try:
        for cells in reader:
            if not cells:
                continue
            if len(cells) != len(header):
                raise located(path, f"expected {len(header)} cells, found {len(cells)}", line=reader.line_num)
            rows.append(dict(zip(header, cells, strict=True)))
    except csv.Error as exc:
        raise located(path, f"malformed CSV: {exc}", line=reader.line_num) from None
    return rows


def load_hub(hub_id: str, split: str) -> list[dict[str, Any]]:
    """A split of a hub dataset as a list of dicts (needs internet and ``datasets``)."""
    try:
        import datasets
    except ImportError:  # pragma: no cover - datasets is a dependency
        raise TunebenchError("loading from the hub needs the 'datasets' package") from None
    try:
        ds = datasets.load_dataset(hub_id, split=split)
    except Exception as exc:
        raise TunebenchError(
            f"could not load '{hub_id}' split '{split}' from the Hugging Face hub ({type(exc).__name__}); "
            "offline? point TUNEBENCH_DATA_DIR or task.data_dir at a local mirror"
        ) from None
    return [dict(row) for row in ds]
