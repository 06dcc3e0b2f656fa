"""Forget / retain sets stored with Hugging Face `datasets`: a `.parquet` or `.arrow` file, a folder written by
`save_to_disk` (`FOLDER@SPLIT` picks a split of a DatasetDict), or a Hub id `hf:ORG/NAME[:CONFIG][@SPLIT]`.

`datasets` is imported only when such a source is read: `unlearn --help` and runs on text files do not pay
for it. core/data.py turns the rows into examples with the same column rules as its other formats.
"""
from __future__ import annotations

import contextlib
import logging
import re
from dataclasses import dataclass
from pathlib import Path

from .errors import UnlearnError, require
from .models import HUB_PREFIX   # "hf:" in a data setting names a Hub *dataset*: only the data readers see it

DATASET_SUFFIXES = (".parquet", ".arrow")
DEFAULT_SPLIT = "train"
SPLIT_MARK = "@"
HUB_ID = re.compile(r"[\w.-]+/[\w.-]+")
HUB_FORMS = "hf:ORG/NAME, hf:ORG/NAME:CONFIG or hf:ORG/NAME:CONFIG@SPLIT"
FILE_FIXES = {"parquet": "write it with datasets' Dataset.to_parquet or pandas' DataFrame.to_parquet",
              "arrow": "give an .arrow file written by datasets, or the folder that Dataset.save_to_disk wrote"}


@dataclass(frozen=True)
class Table:
    """A dataset's rows (column -> value) and its column names."""
    rows: list[dict]
    columns: list[str]


def is_dataset_source(source: str) -> bool:
    """Whether `source` is read with `datasets` (a Hub id, a parquet/arrow file, a folder) instead of as text."""
    if source.startswith(HUB_PREFIX):
        return True
    path, _ = _local_split(source)
    return path.suffix.lower() in DATASET_SUFFIXES or path.is_dir()


def read_table(source: str, role: str) -> Table:
    """The rows of a dataset source; every problem becomes one UnlearnError naming the fix."""
    if source.startswith(HUB_PREFIX):
        dataset = _load_hub(source, role)
    else:
        path, split = _local_split(source)
        require(path.exists(), f"{role} file {path} does not exist", "check the path and the file name")
        loaded = _load_folder(path, role) if path.is_dir() else _load_file(path, role)
        dataset = _pick_split(loaded, split, str(path), role)
    if dataset.num_rows == 0:
        raise _no_rows(source, role)
    return Table(rows=dataset.to_list(), columns=list(dataset.column_names))


def _local_split(source: str) -> tuple[Path, str | None]:
    """`PATH@SPLIT` -> (PATH, SPLIT) when PATH exists (and PATH@SPLIT does not); otherwise the path as given."""
    path = Path(source).expanduser()
    head, mark, split = source.rpartition(SPLIT_MARK)
    if not path.exists() and mark and split and Path(head).expanduser().exists():
        return Path(head).expanduser(), split
    return path, None


def _load_file(path: Path, role: str):
    import datasets

    kind = path.suffix.lower().lstrip(".")
    read = datasets.Dataset.from_parquet if kind == "parquet" else datasets.Dataset.from_file
    try:
        with _quiet():
            return read(str(path))
    except Exception as exc:   # pyarrow's ArrowInvalid, OSError, datasets' own errors: all mean "unreadable"
        if kind == "parquet" and _parquet_rows(path) == 0:   # datasets cannot build a dataset of no rows
            raise _no_rows(str(path), role) from None
        raise UnlearnError(f"{role} file {path} is not a readable .{kind} dataset ({_first_line(exc)})",
                           FILE_FIXES[kind]) from None


def _parquet_rows(path: Path) -> int | None:
    """The row count a parquet file's footer records; None when it is no parquet file."""
    import pyarrow.parquet

    try:
        return pyarrow.parquet.ParquetFile(path).metadata.num_rows
    except Exception:
        return None


def _no_rows(source: str, role: str) -> UnlearnError:
    return UnlearnError(f"the {role} set {source} holds no rows (an empty split or file)",
                        "name a split or file that has rows")


def _load_folder(path: Path, role: str):
    import datasets

    try:
        with _quiet():
            data = datasets.load_from_disk(str(path))
    except FileNotFoundError:
        raise UnlearnError(f"{role} path {path} is a directory, not a file nor a dataset saved with save_to_disk",
                           "name a file inside it, or a folder written by Dataset.save_to_disk") from None
    except Exception as exc:   # its metadata or shards are damaged
        raise UnlearnError(f"{role} folder {path} is not a readable saved dataset ({_first_line(exc)})",
                           "save it again with Dataset.save_to_disk or DatasetDict.save_to_disk") from None
    return data


def _pick_split(data, split: str | None, name: str, role: str):
    """A Dataset as is; a DatasetDict's split `split` (default train), naming the splits it has when missing."""
    import datasets

    if not isinstance(data, datasets.DatasetDict):
        require(split is None, f"the {role} set {name} is a single dataset, without a split '{split}'",
                f"drop '{SPLIT_MARK}{split}' and pass {name}")
        return data
    wanted = split or DEFAULT_SPLIT
    splits = list(data)
    require(wanted in data, f"the {role} set {name} has no split '{wanted}'; its splits: {', '.join(splits)}",
            f"name one, e.g. {name}{SPLIT_MARK}{splits[0]}")
    return data[wanted]


def parse_hub_id(source: str) -> tuple[str, str | None, str | None]:
    """`hf:ORG/NAME[:CONFIG][@SPLIT]` -> (ORG/NAME, CONFIG or None, SPLIT or None)."""
    spec, _, split = source.removeprefix(HUB_PREFIX).partition(SPLIT_MARK)
    repo, _, config = spec.partition(":")
    require(HUB_ID.fullmatch(repo) is not None, f"{source!r} is not a Hub dataset id", f"write it as {HUB_FORMS}")
    return repo, config or None, split or None


def _load_hub(source: str, role: str):
    import datasets
    from datasets.exceptions import DatasetNotFoundError

    repo, config, split = parse_hub_id(source)
    try:
        return datasets.load_dataset(repo, config, split=split or DEFAULT_SPLIT)
    except ConnectionError:
        raise UnlearnError(f"cannot reach the Hugging Face Hub for the {role} set {source} (offline, and it is "
                           "not in the local datasets cache)", _offline_fix(source, repo, config, split)) from None
    except DatasetNotFoundError:
        raise UnlearnError(f"there is no dataset {repo} on the Hugging Face Hub that this machine may read",
                           "check the id; for a gated or private dataset accept its terms on its page and "
                           "log in with `hf auth login`") from None
    except ValueError as exc:   # an unknown config or split: datasets' message lists the ones that exist
        raise UnlearnError(f"the {role} set {source}: {_first_line(exc)}", f"write it as {HUB_FORMS}") from None


def _offline_fix(source: str, repo: str, config: str | None, split: str | None) -> str:
    folder = repo.split("/")[-1]
    return (f"on a machine with internet run python -c \"import datasets; datasets.load_dataset('{repo}', "
            f"{config and repr(config)}, split='{split or DEFAULT_SPLIT}').save_to_disk('{folder}')\", "
            f"copy the folder {folder} here and pass it instead of {source}")


@contextlib.contextmanager
def _quiet():
    """No progress bar for reading a local file (it takes a moment), and no log of a bad file's error: the
    UnlearnError made from it says it once, as the first line the user sees."""
    import datasets

    logger = logging.getLogger("datasets")
    level, bars_were_off = logger.level, datasets.are_progress_bars_disabled()
    logger.setLevel(logging.CRITICAL)
    datasets.disable_progress_bars()
    try:
        yield
    finally:
        logger.setLevel(level)
        if not bars_were_off:
            datasets.enable_progress_bars()


def _first_line(exc: Exception) -> str:
    text = str(exc).strip()
    return text.splitlines()[0] if text else type(exc).__name__
