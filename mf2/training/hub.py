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
| `README.md` | the generated model card |

The card's YAML front matter lists the training data with their licences (from `training_data.json`, written by
`mf2 train` / `mf2 finetune`), the metrics of `eval_results.json` / `cv_results.json` (and any `--metrics` file), and
`license: other`: the code is Apache-2.0, but weights trained on FER+ / CK+ inherit those data's research-only terms.

The Hub endpoint and token come from the usual `HF_ENDPOINT` / `HF_TOKEN` environment variables (or `--token`).
"""

from __future__ import annotations

import argparse
import logging
import shutil
import sys
import tempfile
from collections.abc import Sequence
from pathlib import Path

from .model_card import ADAPTER_SUBFOLDER, build_model_card

logger = logging.getLogger(__name__)

ADAPTER_FILES = ("adapter_config.json", "adapter_model.safetensors", "thresholds.json")


# --------------------------------------------------------------------------------------------------- staging and upload
def _load_model(model_dir: Path):
    from transformers import AutoConfig

    from ..modeling_mf2 import MF2ForFacialStateRecognition, MF2ForPreTraining

    config = AutoConfig.from_pretrained(model_dir)
    model_class = (
        MF2ForPreTraining if "MF2ForPreTraining" in (config.architectures or []) else MF2ForFacialStateRecognition
    )
    return model_class.from_pretrained(model_dir)


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

    model_dir, output_dir = Path(model_dir), Path(output_dir)
    output_dir.mkdir(parents=True, exist_ok=True)
    model = _load_model(model_dir)
    model.save_pretrained(output_dir)
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
        missing = [name for name in ADAPTER_FILES[:2] if not (target / name).is_file()]
        if missing:
            raise FileNotFoundError(f"{adapter_dir} is not a DFN adapter folder: {missing} missing.")
    build_model_card(model_dir, repo_id, adapter_dir, metrics_files).save(output_dir / "README.md")
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
        info = api.upload_folder(repo_id=repo_id, folder_path=staging, commit_message=commit_message)
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
    print(f"Pushed to {url}")
    return 0


__all__ = ["main", "push_to_hub", "stage_repository"]

if __name__ == "__main__":
    logging.basicConfig(level=logging.INFO, stream=sys.stdout, format="%(asctime)s %(name)s: %(message)s")
    raise SystemExit(main())
