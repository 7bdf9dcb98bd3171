"""`mf2 push` / `python -m mf2.training.hub`: publish an MF² model, its processor, a DFN adapter and a model card.

```
python -m mf2.training.hub --model_dir outputs/pretrain --adapter_dir outputs/dfn --repo_id me/mf2-ferplus-ckplus
python -m mf2.training.hub --model_dir outputs/pretrain --repo_id me/mf2 --dry_run --output_dir outputs/hub-preview
```

Everything goes up in one commit of one repository:

| path in the repo | what |
|---|---|
| `config.json`, `model.safetensors`, `*.py` | the model (`save_pretrained`, with its remote code) and its AU thresholds |
| `processor_config.json`, `tokenizer*` | the `MF2Processor` |
| `dfn/adapter_config.json`, `dfn/adapter_model.safetensors`, `dfn/thresholds.json` | the DFN adapter, if given |
| `README.md` | the model folder's own card (the recipe writes one), the adapter's use and results added; else a generated card |

The weights go up in the dtype they are stored in (the shipped model's float16), and `config.json` keeps its `dtype`.
A push replaces what an earlier push put in the repository (`PUSHED_PATTERNS`): its adapter, thresholds, weight files
and processor files that this push does not write again are deleted in the same commit (they stay in its history), so
that a repository never pairs a model with an adapter or thresholds of another push; other files are left alone. The
adapter is loaded onto the model before anything is written, and `--dry_run` writes into a new or empty folder only.

A generated card's YAML front matter lists the training data with their licences (from `training_data.json`, written by
`mf2 train` / `mf2 finetune`), the metrics of `eval_results.json` / `cv_results.json` (and any `--metrics` file), and
`license: other`: the code is Apache-2.0, but weights trained on FER+ / CK+ inherit those data's research-only terms.

The Hub endpoint and token come from the usual `HF_ENDPOINT` / `HF_TOKEN` environment variables (or `--token`).
"""

from __future__ import annotations

import argparse
import json
import logging
import shutil
import sys
import tempfile
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from ..integration.default_model import resolve_model
from ..local_files import write_json
from .model_card import (
    ADAPTER_SUBFOLDER,
    ADAPTER_TAGS,
    adapter_usage,
    build_model_card,
    collect_results,
    licence_lines,
    metrics_table,
    training_data_entries,
)

logger = logging.getLogger(__name__)

ADAPTER_FILES = ("adapter_config.json", "adapter_model.safetensors", "thresholds.json")
PUSHED_PATTERNS = (
    f"{ADAPTER_SUBFOLDER}/*",
    "model*.safetensors",
    "model.safetensors.index.json",
    "config.json",
    "processor_config.json",
    "preprocessor_config.json",
    "tokenizer*",
    "special_tokens_map.json",
    "vocab.txt",
)
"""What a push writes (beside its card and code): files of an earlier push that match and that this push does not
write again are deleted in its commit."""


class PushInputError(ValueError):
    """A folder given to `mf2 push` that cannot be published as it is (`what`: the option; `reason`: one line)."""

    def __init__(self, what: str, reason: str):
        self.what, self.reason = what, reason
        super().__init__(f"{what}: {reason}")


# --------------------------------------------------------------------------------------------------- staging and upload
_SAFETENSORS_DTYPES = {"F16": "float16", "BF16": "bfloat16", "F32": "float32", "F64": "float64"}


def _stored_dtype(model_dir: Path) -> str | None:
    """The floating dtype the folder's weights are stored in (`"float16"` for the shipped model), or None."""
    from safetensors import safe_open

    index = model_dir / "model.safetensors.index.json"
    name = next(iter(json.loads(index.read_text())["weight_map"].values())) if index.is_file() else "model.safetensors"
    if not (model_dir / name).is_file():
        return None
    with safe_open(str(model_dir / name), framework="pt") as handle:
        stored = (handle.get_slice(key).get_dtype() for key in handle.keys())
        return next((_SAFETENSORS_DTYPES[dtype] for dtype in stored if dtype in _SAFETENSORS_DTYPES), None)


def _load_model(model_dir: Path):
    """The folder's model, in the dtype its weights are stored in: re-saved, they take as much room as before (the
    shipped float16 weights would otherwise go up as float32, twice the download)."""
    import torch
    from transformers import AutoConfig

    from ..modeling_mf2 import MF2ForFacialStateRecognition, MF2ForPreTraining

    config = AutoConfig.from_pretrained(model_dir)
    model_class = (
        MF2ForPreTraining if "MF2ForPreTraining" in (config.architectures or []) else MF2ForFacialStateRecognition
    )
    stored = _stored_dtype(model_dir)
    return model_class.from_pretrained(model_dir, **({"dtype": getattr(torch, stored)} if stored else {}))


def _keep_config_dtype(model_dir: Path, output_dir: Path) -> None:
    """Give the re-saved `config.json` (and its sub-configs) the source's `dtype` (the shipped model asks for float32
    whatever it stores, so that a CPU load is fast), not the one the weights were loaded in."""
    source = json.loads((model_dir / "config.json").read_text(encoding="utf-8"))
    config = json.loads((output_dir / "config.json").read_text(encoding="utf-8"))

    def restore(saved: dict[str, Any], given: dict[str, Any]) -> None:
        for key, value in given.items():
            if key == "dtype":
                saved[key] = value
            elif isinstance(value, dict) and isinstance(saved.get(key), dict):
                restore(saved[key], value)

    restore(config, source)
    write_json(output_dir / "config.json", config)


def _repository_card(model_dir: Path, repo_id: str, adapter_dir: Path | None, metrics_files: Sequence[str | Path]):
    """The model folder's own card where it has one (the recipe writes one, with its evaluation and how it was
    made), with the adapter's use and results added; else the card `build_model_card` makes from the folders."""
    from huggingface_hub import ModelCard

    if not (model_dir / "README.md").is_file():
        return build_model_card(model_dir, repo_id, adapter_dir, metrics_files)
    card = ModelCard.load(model_dir / "README.md")
    if adapter_dir is not None or metrics_files:
        results = collect_results([adapter_dir] if adapter_dir is not None else [], [Path(p) for p in metrics_files])
        usage = adapter_usage(repo_id) if adapter_dir is not None else ""
        card.text += f"\n## {'DFN adapter' if adapter_dir is not None else 'More results'}\n{usage}\n"
        card.text += metrics_table(results) + "\n"
        if adapter_dir is not None:
            card.data.tags = [
                *(card.data.tags or []),
                *(tag for tag in ADAPTER_TAGS if tag not in (card.data.tags or [])),
            ]
            _add_adapter_data(card, adapter_dir)
    return card


def _add_adapter_data(card, adapter_dir: Path) -> None:
    """The adapter's training data and their licences, in the card's front matter and text: the model folder's own
    card lists only the model's."""
    entries = training_data_entries([adapter_dir])
    if not entries:
        return
    card.data.training_data = [*(card.data.get("training_data") or []), *entries]
    names = [*(card.data.get("datasets") or []), *(entry["name"] for entry in entries)]
    card.data.datasets = list(dict.fromkeys(names))
    card.text += f"\n### The adapter's training data and licences\n\n{licence_lines(entries)}\n"


def check_push_inputs(model_dir: Path, adapter_dir: str | Path | None) -> None:
    """Refuse folders that would publish a repository that does not load: a model folder without `config.json`, an
    adapter folder without the adapter's files, or an adapter that does not load onto the model (`PushInputError`)."""
    from ..dfn.loading import AdapterLoadError, check_adapter_folder, load_dfn_model

    if not (model_dir / "config.json").is_file():
        raise PushInputError("--model_dir", f"{model_dir} holds no config.json; give a saved MF² model's folder")
    if adapter_dir is None:
        return
    missing = [name for name in ADAPTER_FILES[:2] if not Path(adapter_dir, name).is_file()]
    try:
        if missing:
            raise ValueError(f"{adapter_dir} is not a DFN adapter folder: {', '.join(missing)} missing")
        check_adapter_folder(adapter_dir)
        load_dfn_model(str(model_dir), adapter_dir)
    except (ValueError, RuntimeError, AdapterLoadError) as error:  # RuntimeError: weights of another model's shapes
        said = str(error).strip().splitlines()[0]
        raise PushInputError("--adapter_dir", f"{said} (the adapter must be trained on --model_dir)") from error


def stage_repository(
    model_dir: str | Path,
    output_dir: str | Path,
    repo_id: str,
    adapter_dir: str | Path | None = None,
    metrics_files: Sequence[str | Path] = (),
) -> Path:
    """Write the repository's content into `output_dir`: model, processor, adapter (in `dfn/`) and `README.md`."""
    from ..pipeline_mf2 import FacialStatePipeline
    from ..processing_mf2 import load_saved_processor

    model_dir, output_dir = Path(resolve_model(model_dir)), Path(output_dir)
    check_push_inputs(model_dir, adapter_dir)
    output_dir.mkdir(parents=True, exist_ok=True)
    model = _load_model(model_dir)
    model.save_pretrained(output_dir)
    _keep_config_dtype(model_dir, output_dir)
    processor = load_saved_processor(str(model_dir))
    processor.save_pretrained(output_dir)
    # The repository then also loads as `pipeline(model=repo, trust_remote_code=True)` where mf2 is not installed.
    FacialStatePipeline.export_code(output_dir)
    if adapter_dir is not None:
        adapter_dir = Path(adapter_dir)
        target = output_dir / ADAPTER_SUBFOLDER
        target.mkdir(exist_ok=True)
        for name in ADAPTER_FILES:
            if (adapter_dir / name).is_file():
                shutil.copy2(adapter_dir / name, target / name)
    card = _repository_card(model_dir, repo_id, None if adapter_dir is None else Path(adapter_dir), metrics_files)
    card.save(output_dir / "README.md")
    return output_dir


def push_to_hub(
    model_dir: str | Path,
    repo_id: str,
    adapter_dir: str | Path | None = None,
    metrics_files: Sequence[str | Path] = (),
    private: bool = False,
    token: str | None = None,
    commit_message: str = "Upload MF² model, processor, DFN adapter and model card",
) -> str:
    """Create `repo_id` (if needed) and upload model, processor, adapter and card in one commit; returns the commit URL."""
    from huggingface_hub import HfApi

    api = HfApi(token=token)
    with tempfile.TemporaryDirectory(prefix="mf2-push-") as staging:
        stage_repository(model_dir, staging, repo_id, adapter_dir, metrics_files)
        api.create_repo(repo_id, private=private, exist_ok=True)
        info = api.upload_folder(
            repo_id=repo_id,
            folder_path=staging,
            commit_message=commit_message,
            delete_patterns=list(PUSHED_PATTERNS),  # an earlier push's files that this one does not replace
        )
    return str(getattr(info, "commit_url", info))


def main(argv: list[str] | None = None) -> int:
    """`mf2 push`: see the module docstring."""
    parser = argparse.ArgumentParser(prog="mf2 push", description=__doc__.split("\n")[0])
    parser.add_argument("--model_dir", required=True, help="Folder of a saved MF² model and processor.")
    parser.add_argument("--repo_id", required=True, help="Target repository, e.g. user/mf2-ferplus.")
    parser.add_argument("--adapter_dir", default=None, help="Folder of a DFN adapter (mf2 finetune output).")
    parser.add_argument("--metrics", nargs="*", default=[], help="Extra metrics JSON files for the card.")
    parser.add_argument("--private", action="store_true", help="Create the repository as private.")
    parser.add_argument("--token", default=None, help="Hub token (default: HF_TOKEN / the saved login).")
    parser.add_argument("--commit_message", default="Upload MF² model, processor, DFN adapter and model card")
    parser.add_argument("--dry_run", action="store_true", help="Write the repository content to --output_dir only.")
    parser.add_argument("--output_dir", default=None, help="With --dry_run: where to write the content.")
    args = parser.parse_args(argv)
    if args.dry_run:
        if not args.output_dir:
            parser.error("--dry_run needs --output_dir.")
        if Path(args.output_dir).exists() and any(Path(args.output_dir).iterdir()):
            parser.error(f"--output_dir {args.output_dir} is not empty; give a new or empty folder for the preview.")
    try:
        if args.dry_run:
            path = stage_repository(args.model_dir, args.output_dir, args.repo_id, args.adapter_dir, args.metrics)
            print(f"Repository content written to {path}")
            return 0
        url = push_to_hub(
            args.model_dir,
            args.repo_id,
            args.adapter_dir,
            args.metrics,
            private=args.private,
            token=args.token,
            commit_message=args.commit_message,
        )
    except PushInputError as error:
        parser.error(str(error))
    except OSError as error:  # the Hub: no token, no network, no rights
        print(f"mf2 push: {' '.join(str(error).split())}", file=sys.stderr)
        return 1
    print(f"Pushed to {url}")
    return 0


__all__ = ["PUSHED_PATTERNS", "PushInputError", "check_push_inputs", "main", "push_to_hub", "stage_repository"]

if __name__ == "__main__":
    logging.basicConfig(level=logging.INFO, stream=sys.stdout, format="%(asctime)s %(name)s: %(message)s")
    raise SystemExit(main())
