"""Publish an MF² checkpoint to the Hugging Face Hub: model, processor, optional DFN adapter, model card, and the
facial-state pipeline's code, so that it also loads where `mf2` is not installed.

    python examples/publish_to_hub.py --model_dir outputs/pretrain --repo_id me/mf2 --adapter_dir outputs/dfn
    python examples/publish_to_hub.py --model_dir outputs/pretrain --repo_id me/mf2 --dry_run outputs/hub-preview

The repository content is staged by `mf2 push` (`mf2.training.hub.stage_repository`: weights with the modeling
code, processor, `dfn/` adapter, a model card listing the training data's licences and the metrics, and
`pipeline_mf2.py` with its `custom_pipelines` entry in `config.json`). After the upload:

```python
import mf2
from transformers import pipeline
pipe = pipeline("facial-state", model="me/mf2")                         # with the package installed
pipe = pipeline(model="me/mf2", trust_remote_code=True)                 # anywhere, with the repository's own code
```

The Hub endpoint and token come from `HF_ENDPOINT` / `HF_TOKEN` (or `huggingface-cli login`).
"""

from __future__ import annotations

import argparse
from pathlib import Path

from mf2.training.hub import push_to_hub, stage_repository


def stage(model_dir: str, repo_id: str, output_dir: str | Path, adapter_dir: str | None = None) -> Path:
    """Everything the repository will hold, written into `output_dir`."""
    return Path(stage_repository(model_dir, output_dir, repo_id, adapter_dir))  # includes the pipeline code


def main(argv: list[str] | None = None) -> str:
    parser = argparse.ArgumentParser(description="Publish an MF² checkpoint with its pipeline code and model card.")
    parser.add_argument("--model_dir", required=True, help="saved MF² model + processor (mf2 train / finetune)")
    parser.add_argument("--repo_id", required=True, help="e.g. me/mf2-ferplus")
    parser.add_argument("--adapter_dir", help="DFN adapter folder (mf2 finetune output)")
    parser.add_argument("--private", action="store_true")
    parser.add_argument("--dry_run", metavar="DIR", help="only write the repository content into DIR")
    args = parser.parse_args(argv)

    if args.dry_run:
        folder = stage(args.model_dir, args.repo_id, args.dry_run, args.adapter_dir)
        print(f"Repository content in {folder}: {sorted(p.name for p in folder.iterdir())}")
        return str(folder)

    # The upload itself is `mf2 push`'s: one commit, which also removes an earlier push's adapter and thresholds.
    url = push_to_hub(
        args.model_dir, args.repo_id, args.adapter_dir, private=args.private, commit_message="Upload MF² with pipeline"
    )
    print(f"Published: {url}")
    return url


if __name__ == "__main__":
    main()
