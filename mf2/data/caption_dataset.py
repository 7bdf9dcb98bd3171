"""Caption a whole MFA-schema dataset and save it: `caption_dataset(...)`, or from the shell

```
python -m mf2.data.caption_dataset --input mfa_raw/ --output mfa/ --captioner llm --model gpt-4o --workers 8
```

The input is a `save_to_disk` folder, a Parquet file, or a folder of `<split>.parquet` files, in the `MFA_FEATURES`
schema (any builder of `mf2.data`), or a folder of images with a `labels.csv` (`mf2.data.folder`). The three caption
columns are (re)filled and the result is written as `<output>/<split>.parquet` (images embedded) or with
`save_to_disk(<output>)`.

Resuming: with the LLM captioner every accepted caption is cached (`--cache`, by default `<output>/llm_cache.jsonl`)
the moment it arrives, so re-running the same command after a kill or after failures asks only for what is missing.
Failed captions are listed in `<output>/caption_failures.jsonl` and left empty in the output; the command then
exits with status 1.
"""

from __future__ import annotations

import argparse
import os
import sys
from collections.abc import Sequence
from pathlib import Path

from datasets import Dataset, DatasetDict, Image, List, Value, load_from_disk
from datasets.exceptions import DatasetGenerationError
from datasets.table import embed_table_storage
from pyarrow import ArrowException

from ..local_files import written_aside
from .captions.base import Captioner, CaptionRequest
from .captions.llm import LLMCaptioner, endpoint_configured
from .captions.template import TemplateCaptioner
from .folder import LABEL_FILE_SUFFIXES, LABELS_FILE, find_labels_file, load_image_folder
from .schema import CAPTION_COLUMNS, MFA_FEATURES, NUM_AUS, DataError, MissingDataError
from .sources import load_parquet

CACHE_FILE = "llm_cache.jsonl"
FAILURES_FILE = "caption_failures.jsonl"
FORMATS = ("parquet", "disk")


def make_captioner(
    kind: str = "auto",
    *,
    base_url: str | None = None,
    model: str | None = None,
    api_key: str | None = None,
    workers: int = 8,
    cache: str | os.PathLike | None = None,
    timeout: float = 60.0,
    max_retries: int = 4,
    backoff: float = 1.0,
    show_progress: bool = True,
) -> Captioner:
    """A captioner by name: `"template"`, `"llm"`, or `"auto"` (the LLM when `base_url` is given or an endpoint is
    configured in the environment, `MF2_LLM_BASE_URL` / `OPENAI_BASE_URL`; the template captioner otherwise)."""
    if kind == "auto":
        kind = "llm" if base_url or endpoint_configured() else "template"
    if kind == "template":
        return TemplateCaptioner()
    if kind == "llm":
        return LLMCaptioner(
            base_url,
            model,
            api_key,
            cache=cache,
            workers=workers,
            timeout=timeout,
            max_retries=max_retries,
            backoff=backoff,
            show_progress=show_progress,
        )
    raise ValueError(f"Unknown captioner {kind!r}; use 'auto', 'template' or 'llm'.")


def load_mfa(path: str | os.PathLike, *, cache_dir: str | None = None) -> Dataset | DatasetDict:
    """Load an MFA dataset from a `save_to_disk` folder, a Parquet file, a folder of `<split>.parquet` files, a folder
    of images with a `labels.csv` (`mf2.data.folder`), or a label file itself (`.csv`, `.jsonl`).

    Raises:
        MissingDataError: nothing at `path`. DataError: a folder that is none of these, or a bad label file (one line
        naming the fix).
    """
    path = Path(path)
    if path.is_file():
        if path.suffix.lower() in LABEL_FILE_SUFFIXES:
            return load_image_folder(path)
        if path.suffix.lower() != ".parquet":
            raise DataError(f"{path}: not a dataset; give a Parquet file, a label file ({LABELS_FILE}), or a folder.")
        return _read_parquet(path, cache_dir)
    if not path.is_dir():
        raise MissingDataError(f"{path}: no such folder or file.")
    if any((path / name).exists() for name in ("dataset_dict.json", "state.json")):
        return load_from_disk(str(path))
    files = sorted(path.glob("*.parquet"))
    labels = find_labels_file(path)
    if files and labels is not None:  # which one holds the data is the user's to say, not a rule of ours
        raise DataError(
            f"{path} holds both Parquet files ({files[0].name}) and a {LABELS_FILE}; give the label file itself "
            f"({labels}) or a folder holding only the Parquet files."
        )
    if files:
        return DatasetDict({file.stem: _read_parquet(file, cache_dir) for file in files})
    if labels is not None:
        return load_image_folder(labels)
    raise DataError(
        f"{path} holds no {LABELS_FILE} (a folder of images needs one: file_name,emotion,AU1,...,AU26 with empty = "
        "unknown; see docs/finetuning.md), no Parquet files and no `save_to_disk` dataset."
    )


def _read_parquet(path: Path, cache_dir: str | None) -> Dataset:
    """`load_parquet`, with a file that is not Parquet (truncated, another format) as a one-line `DataError`."""
    try:
        return load_parquet(path, cache_dir)
    except (ArrowException, DatasetGenerationError, OSError) as error:
        reason = getattr(error, "__cause__", None) or error  # datasets wraps the reader's own error
        raise DataError(f"{path}: not a readable Parquet file ({type(reason).__name__}: {reason})") from error


def _image_bytes(value: dict) -> bytes:
    if value.get("bytes") is not None:
        return value["bytes"]
    with open(value["path"], "rb") as handle:
        return handle.read()


def _conform(dataset: Dataset) -> Dataset:
    """Add empty caption columns if missing and check the rest of the schema."""
    for name in CAPTION_COLUMNS:
        if name not in dataset.column_names:
            empty = [[""] * NUM_AUS] * len(dataset) if name == "au_caption" else [""] * len(dataset)
            dataset = dataset.add_column(name, empty, feature=MFA_FEATURES[name])
    missing = [name for name in MFA_FEATURES if name not in dataset.column_names]
    if missing:
        raise DataError(
            f"the dataset lacks the MFA columns {missing}; build it with an mf2.data builder or give a folder of "
            f"images with a {LABELS_FILE} (see docs/training.md)"
        )
    return _as_mfa(dataset)


def _as_mfa(dataset: Dataset) -> Dataset:
    """Columns in schema order, cast only where a type differs (a cast rewrites every row)."""
    dataset = dataset.select_columns(list(MFA_FEATURES))
    return dataset if dataset.features == MFA_FEATURES else dataset.cast(MFA_FEATURES)


def caption_split(
    dataset: Dataset, captioner: Captioner, *, name: str = "train", chunk_size: int = 1000, progress: bool = True
) -> Dataset:
    """`dataset` with its three caption columns filled by `captioner`, rows in the same order."""
    from tqdm.auto import tqdm

    dataset = _conform(dataset)
    view = dataset.select_columns(["image", "au", "emotion"] if captioner.needs_images else ["au", "emotion"])
    if captioner.needs_images:
        view = view.cast_column("image", Image(decode=False))
    columns: dict[str, list] = {column: [] for column in CAPTION_COLUMNS}
    with tqdm(total=len(dataset), desc=f"captioning {name}", unit="image", disable=not progress) as bar:
        # Chunks bound the image bytes held in memory; the captioner's cache makes every chunk resumable.
        for start in range(0, len(dataset), chunk_size):
            batch = view[start : start + chunk_size]
            requests = [
                CaptionRequest(
                    au=tuple(au),
                    emotion=emotion,
                    id=f"{name}:{start + i}",
                    image=_image_bytes(batch["image"][i]) if captioner.needs_images else None,
                )
                for i, (au, emotion) in enumerate(zip(batch["au"], batch["emotion"]))
            ]
            for captions in captioner.caption_batch(requests, progress=bar):
                for key, value in captions.as_dict().items():
                    columns[key].append(value)
    dataset = dataset.remove_columns(list(CAPTION_COLUMNS))
    dataset = dataset.add_column("au_caption", columns["au_caption"], feature=List(Value("string"), length=NUM_AUS))
    dataset = dataset.add_column("emotion_caption", columns["emotion_caption"], feature=Value("string"))
    dataset = dataset.add_column("key_au_caption", columns["key_au_caption"], feature=Value("string"))
    return _as_mfa(dataset)


def write_parquet(dataset: Dataset, path: str | os.PathLike) -> None:
    """Write `dataset` to one Parquet file with image bytes embedded, atomically (temp file, then rename)."""
    embedded = dataset.with_format("arrow").map(embed_table_storage, batched=True, keep_in_memory=True)
    with written_aside(path) as partial:
        embedded.with_format(None).to_parquet(str(partial))


SAVED_MARKERS = {True: "dataset_dict.json", False: "state.json"}  # save_to_disk of a DatasetDict, of a Dataset


def check_output_folder(output: Path, splits: list[str], output_format: str, is_dict: bool) -> None:
    """Refuse an output folder holding a dataset that this write would not replace, which `load_mfa` would then read
    instead of it or beside it: a `save_to_disk` dataset where Parquet splits are written (it is read first), Parquet
    files where a `save_to_disk` dataset is written, Parquet splits of other names (read as extra splits), or the
    other kind of `save_to_disk` dataset. The caption cache and a same-kind earlier output are fine: they are reused
    or replaced.

    Raises:
        DataError: one line naming what is there and the fix.
    """
    if not output.is_dir():
        return
    parquet = sorted(path.name for path in output.glob("*.parquet"))
    markers = [name for name in SAVED_MARKERS.values() if (output / name).exists()]
    if output_format == "parquet":
        stale = [name for name in parquet if name not in {f"{split}.parquet" for split in splits}] + markers
    else:
        stale = parquet + [name for name in markers if name != SAVED_MARKERS[is_dict]]
    if stale:
        raise DataError(
            f"{output} holds another dataset ({', '.join(stale)}) that would be read with or instead of this one; "
            f"give another --output, or remove it there (the caption cache {CACHE_FILE} can stay)"
        )


def caption_dataset(
    dataset_or_path: Dataset | DatasetDict | str | os.PathLike,
    output_dir: str | os.PathLike | None = None,
    captioner: Captioner | None = None,
    *,
    output_format: str = "parquet",
    chunk_size: int = 1000,
    progress: bool = True,
    cache_dir: str | None = None,
) -> Dataset | DatasetDict:
    """Fill the caption columns of every split and, when `output_dir` is given, save the result.

    Args:
        dataset_or_path: An MFA `Dataset`/`DatasetDict`, or a path accepted by `load_mfa`.
        output_dir: Where to write; `None` only returns the captioned dataset.
        captioner: Any `Captioner`; defaults to `make_captioner("auto")` with its cache in `output_dir`.
        output_format: `"parquet"` (`<output_dir>/<split>.parquet`, a single dataset is split `train`) or `"disk"`
            (`save_to_disk(output_dir)`).
        chunk_size: Rows handed to the captioner at a time.
        progress: Show a progress bar per split.
        cache_dir: `datasets` cache folder used when loading Parquet input.

    Returns:
        The captioned dataset, of the same kind as the input.
    """
    if output_format not in FORMATS:
        raise ValueError(f"output_format must be one of {FORMATS}, got {output_format!r}.")
    output = Path(output_dir) if output_dir is not None else None
    if isinstance(dataset_or_path, (str, os.PathLike)):
        if output is not None and Path(dataset_or_path).resolve() == output.resolve():
            raise DataError(f"{output}: write the captioned dataset to a folder other than its input.")
        dataset_or_path = load_mfa(dataset_or_path, cache_dir=cache_dir)
    splits = dataset_or_path if isinstance(dataset_or_path, DatasetDict) else {"train": dataset_or_path}
    if output is not None:  # before any caption is paid for
        check_output_folder(output, list(splits), output_format, isinstance(dataset_or_path, DatasetDict))
    if captioner is None:
        captioner = make_captioner("auto", cache=output / CACHE_FILE if output is not None else None)
    captioned = DatasetDict(
        {
            name: caption_split(split, captioner, name=name, chunk_size=chunk_size, progress=progress)
            for name, split in splits.items()
        }
    )
    if output is not None:
        output.mkdir(parents=True, exist_ok=True)
        if output_format == "parquet":
            for name, split in captioned.items():
                write_parquet(split, output / f"{name}.parquet")
        else:
            (captioned if isinstance(dataset_or_path, DatasetDict) else captioned["train"]).save_to_disk(str(output))
        if hasattr(captioner, "write_failures"):
            captioner.write_failures(output / FAILURES_FILE)
    return captioned if isinstance(dataset_or_path, DatasetDict) else captioned["train"]


def build_parser() -> argparse.ArgumentParser:
    """Command-line options of `main`."""
    parser = argparse.ArgumentParser(
        prog="mf2 caption", description="Fill the AU, emotion and key-AU captions of an MFA dataset and save it."
    )
    parser.add_argument("--input", required=True, help="save_to_disk folder, Parquet file or folder of Parquet files")
    parser.add_argument("--output", required=True, help="output folder")
    parser.add_argument("--format", choices=FORMATS, default="parquet", help="output format (default: parquet)")
    parser.add_argument(
        "--captioner",
        choices=("auto", "template", "llm"),
        default="auto",
        help="'auto' uses the LLM when an endpoint is configured (--base-url, MF2_LLM_BASE_URL, OPENAI_BASE_URL)",
    )
    parser.add_argument("--base-url", help="OpenAI-compatible API root, e.g. https://api.openai.com/v1")
    parser.add_argument("--model", help="model name (default: $MF2_LLM_MODEL, $OPENAI_MODEL or gpt-4o)")
    parser.add_argument("--workers", type=int, default=8, help="concurrent LLM requests (default: 8)")
    parser.add_argument("--cache", help=f"LLM caption cache file (default: <output>/{CACHE_FILE})")
    parser.add_argument("--timeout", type=float, default=60.0, help="seconds per LLM request (default: 60)")
    parser.add_argument("--max-retries", type=int, default=4, help="retries per caption (default: 4)")
    parser.add_argument("--backoff", type=float, default=1.0, help="first retry delay in seconds (default: 1)")
    parser.add_argument("--chunk-size", type=int, default=1000, help="rows captioned at a time (default: 1000)")
    parser.add_argument("--no-progress", action="store_true", help="hide progress bars")
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point of `mf2 caption` / `python -m mf2.data.caption_dataset`; the API key is read from the
    environment only (`MF2_LLM_API_KEY` or `OPENAI_API_KEY`), never from the command line."""
    args = build_parser().parse_args(argv)
    output = Path(args.output)
    captioner = make_captioner(
        args.captioner,
        base_url=args.base_url,
        model=args.model,
        workers=args.workers,
        cache=args.cache or output / CACHE_FILE,
        timeout=args.timeout,
        max_retries=args.max_retries,
        backoff=args.backoff,
        show_progress=not args.no_progress,
    )
    try:
        caption_dataset(
            args.input,
            output,
            captioner,
            output_format=args.format,
            chunk_size=args.chunk_size,
            progress=not args.no_progress,
        )
    except DataError as error:
        print(f"mf2 caption: {error}", file=sys.stderr)
        return 2
    finally:
        if isinstance(captioner, LLMCaptioner):
            captioner.cache.close()
    failures = getattr(captioner, "failures", [])
    if failures:
        print(
            f"{len(failures)} caption request(s) failed; see {output / FAILURES_FILE}. Re-run to retry them.",
            file=sys.stderr,
        )
        return 1
    return 0


__all__ = ["build_parser", "caption_dataset", "caption_split", "load_mfa", "main", "make_captioner", "write_parquet"]


if __name__ == "__main__":
    sys.exit(main())
