"""`mf2 push` against a Hub-compatible server on loopback: model, processor, DFN adapter and model card go up in one
commit, and everything reloads through the server with identical outputs."""

import json
import subprocess
import sys
import textwrap

import pytest
import torch
from loopback_hub import LoopbackHub
from tiny import tiny_config
from training_testing import IMAGE_SIZE, REPO_DIR, subprocess_env, write_tokenizer
from transformers import AutoTokenizer

from mf2 import MF2ForFacialStateRecognition, MF2ForPreTraining
from mf2.processing_mf2 import MF2Processor

REPO_ID = "testuser/mf2-tiny"

RELOAD = textwrap.dedent(
    """
    import json, sys
    import numpy as np, torch
    import mf2
    from mf2 import MF2ForFacialStateRecognition
    from mf2.dfn import DFNModel, load_adapter
    from mf2.processing_mf2 import load_saved_processor

    repo, model_dir, adapter_dir = sys.argv[1:4]
    image = (np.arange(40 * 44 * 3) % 251).astype(np.uint8).reshape(40, 44, 3)

    def outputs(model_source, adapter_source, subfolder=None):
        processor = load_saved_processor(model_source)
        inputs = processor(images=[image], return_tensors="pt")
        model = MF2ForFacialStateRecognition.from_pretrained(model_source).eval()
        kwargs = {"subfolder": subfolder} if subfolder else {}
        adapted = DFNModel.from_pretrained(MF2ForFacialStateRecognition.from_pretrained(model_source), adapter_source,
                                           **kwargs).eval()
        with torch.no_grad():
            base = model(pixel_values=inputs["pixel_values"], au_boxes=inputs["au_boxes"])
            dfn = adapted(pixel_values=inputs["pixel_values"], au_boxes=inputs["au_boxes"])
        return inputs["pixel_values"], base.au_logits, dfn.au_logits, dfn.emotion_logits, model.config.au_thresholds

    def pipeline_reading(repo):
        # The repository given as model and as adapter, as its card says: the adapter found in dfn/, with its
        # thresholds; its AU probabilities against the adapter loaded by hand.
        from transformers import pipeline
        pipe = pipeline("facial-state", model=repo, adapter=repo, no_face="fallback")
        got = pipe(image)[0]["action_units"]
        model = load_adapter(MF2ForFacialStateRecognition.from_pretrained(repo), repo, subfolder="dfn")
        inputs = pipe.image_processor(images=[image], no_face="fallback", return_tensors="pt")
        with torch.no_grad():
            want = torch.sigmoid(model(pixel_values=inputs["pixel_values"], au_boxes=inputs["au_boxes"]).au_logits)[0]
        return {"thresholds": pipe.model.config.au_thresholds,
                "difference": max(abs(float(got[name]) - float(p)) for name, p in zip(model.config.au_names, want))}

    local = outputs(model_dir, adapter_dir)
    hub = outputs(repo, repo, subfolder="dfn")
    print(json.dumps({
        "pixels": float((local[0] - hub[0]).abs().max()),
        "base": float((local[1] - hub[1]).abs().max()),
        "dfn_au": float((local[2] - hub[2]).abs().max()),
        "dfn_emotion": float((local[3] - hub[3]).abs().max()),
        "adapter_changes_outputs": float((hub[2] - hub[1]).abs().max()),
        "thresholds": hub[4],
        "adapter_thresholds": load_adapter(MF2ForFacialStateRecognition.from_pretrained(repo), repo,
                                           subfolder="dfn").config.au_thresholds,
        "pipeline": pipeline_reading(repo),
    }))
    """
)


def run_python(argv: list[str], env: dict[str, str]) -> subprocess.CompletedProcess:
    """`python ARGV...` from the repository with `env`, its output kept (a fresh process: nothing imported here)."""
    return subprocess.run([sys.executable, *argv], env=env, cwd=REPO_DIR, capture_output=True, text=True, timeout=300)


@pytest.fixture
def hub():
    with LoopbackHub() as server:
        yield server


@pytest.fixture
def trained(tmp_path):
    """A tiny saved model + processor, a DFN adapter with thresholds, and the run's result files."""
    from mf2.dfn import DFNConfig, get_dfn_model

    torch.manual_seed(0)
    config = tiny_config(au_thresholds=[0.3] * 12)
    model_dir, adapter_dir = tmp_path / "model", tmp_path / "adapter"
    MF2ForPreTraining(config).save_pretrained(model_dir)
    tokenizer = AutoTokenizer.from_pretrained(write_tokenizer(tmp_path / "tokenizer"))
    MF2Processor.from_config(config, tokenizer, landmark_backend="template", size=IMAGE_SIZE).save_pretrained(model_dir)
    (model_dir / "training_data.json").write_text(
        json.dumps(
            {
                "stage": "both",
                "train": [
                    {"name": "ferplus:train.parquet", "source": "ferplus", "rows": 6000},
                    {"name": "ckplus:dev.parquet", "source": "ckplus", "rows": 648},
                ],
                "eval": [{"name": "ferplus:valid.parquet", "source": "ferplus", "rows": 3191}],
            }
        )
    )
    (model_dir / "eval_results.json").write_text(
        json.dumps(
            {"eval_emotion_accuracy": 0.5, "eval_emotion_count": 3191, "eval_au_f1": 0.25, "eval_au_f1_AU1": 0.4}
        )
    )
    base = MF2ForFacialStateRecognition.from_pretrained(model_dir)
    adapter = get_dfn_model(base, DFNConfig(num_layers=2, bottleneck_size=8, init_weights=False))
    adapter.save_pretrained(adapter_dir)
    (adapter_dir / "thresholds.json").write_text(json.dumps({"au_thresholds": [0.4] * 12}))
    return model_dir, adapter_dir


def test_push_and_reload_through_a_loopback_hub(hub, trained, tmp_path):
    model_dir, adapter_dir = trained
    env = subprocess_env(
        HF_ENDPOINT=hub.url,
        HF_TOKEN="hf_loopback",
        HF_HUB_OFFLINE="0",
        TRANSFORMERS_OFFLINE="0",
        HF_HOME=tmp_path / "hf-home-push",
        HF_HUB_DISABLE_XET="1",
    )
    push = run_python(
        [
            "-m",
            "mf2.training.hub",
            "--model_dir",
            str(model_dir),
            "--adapter_dir",
            str(adapter_dir),
            "--repo_id",
            REPO_ID,
        ],
        env,
    )
    assert push.returncode == 0, push.stdout[-3000:] + push.stderr[-3000:]

    files = hub.repos[REPO_ID]["files"]
    assert {
        "config.json",
        "model.safetensors",
        "processor_config.json",
        "tokenizer.json",
        "README.md",
        "dfn/adapter_config.json",
        "dfn/adapter_model.safetensors",
        "dfn/thresholds.json",
    } <= set(files)
    assert len(hub.repos[REPO_ID]["commits"]) == 1  # one atomic commit
    card = files["README.md"].decode()
    front_matter = card.split("---")[1]
    assert "license: other" in front_matter and "training_data:" in front_matter
    assert "non-commercial research only" in front_matter and "rights unresolved" in front_matter
    assert "FER+ labels: MIT" in front_matter
    assert "| 50.00% |" in card and "## Intended use" in card and "## Limitations" in card

    env["HF_HOME"] = str(tmp_path / "hf-home-reload")  # nothing cached: every file comes from the server
    script = tmp_path / "reload.py"
    script.write_text(RELOAD)
    reload = run_python([str(script), REPO_ID, str(model_dir), str(adapter_dir)], env)
    assert reload.returncode == 0, reload.stdout[-3000:] + reload.stderr[-3000:]
    result = json.loads(reload.stdout.strip().splitlines()[-1])
    assert result["pixels"] == 0.0 and result["base"] == 0.0
    assert result["dfn_au"] == 0.0 and result["dfn_emotion"] == 0.0
    assert result["adapter_changes_outputs"] > 0  # the adapter really was loaded from the `dfn/` subfolder
    assert result["thresholds"] == [0.3] * 12
    assert result["adapter_thresholds"] == [0.4] * 12  # dfn/thresholds.json, tuned with the adapter, applies
    # The repository given to the pipeline as its adapter, as the card says: the adapter in dfn/ and its thresholds.
    assert result["pipeline"]["thresholds"] == [0.4] * 12 and result["pipeline"]["difference"] < 1e-5
    assert any(path.startswith(f"/{REPO_ID}/resolve/") for _, path in hub.requests)

    # Pushed again without the adapter: the first push's adapter and thresholds leave the repository in the same
    # commit (loading the repository as an adapter would otherwise pair them with this model).
    again = run_python(["-m", "mf2.training.hub", "--model_dir", str(model_dir), "--repo_id", REPO_ID], env)
    assert again.returncode == 0, again.stdout[-3000:] + again.stderr[-3000:]
    assert not [path for path in hub.repos[REPO_ID]["files"] if path.startswith("dfn/")]
    assert {"config.json", "model.safetensors", "README.md"} <= set(hub.repos[REPO_ID]["files"])
    assert len(hub.repos[REPO_ID]["commits"]) == 2


def test_a_float16_model_with_its_own_card_goes_up_as_it_is_stored_and_described(trained, tmp_path):
    """The shipped model's case: float16 weights with `dtype: float32` in the config (a fast CPU load), and a model
    card written by the recipe. Staged for the Hub, the weights stay float16 (not twice the download), the config keeps
    its dtype, and the card is the folder's own, with the adapter's use and results added."""
    from safetensors import safe_open

    from mf2.training.hub import main as push_main

    model_dir, adapter_dir = trained
    half = tmp_path / "half"
    MF2ForFacialStateRecognition.from_pretrained(model_dir).to(torch.float16).save_pretrained(half)
    config = json.loads((half / "config.json").read_text())
    config["dtype"] = config["vision_config"]["dtype"] = "float32"
    (half / "config.json").write_text(json.dumps(config))
    for name in ("processor_config.json", "tokenizer.json", "tokenizer_config.json", "eval_results.json"):
        if (model_dir / name).is_file():
            (half / name).write_bytes((model_dir / name).read_bytes())
    (half / "README.md").write_text(
        "---\nlicense: other\ntags:\n- mf2\n---\n\n# tiny\n\n## How it was made\n\nBy hand.\n"
    )
    (adapter_dir / "training_data.json").write_text(
        json.dumps({"stage": "dfn", "train": [{"name": "mfa:my_faces", "source": "mfa", "rows": 40}]})
    )
    out = tmp_path / "staged"
    argv = ["--model_dir", str(half), "--adapter_dir", str(adapter_dir), "--repo_id", REPO_ID, "--dry_run"]
    assert push_main([*argv, "--output_dir", str(out)]) == 0
    with safe_open(str(out / "model.safetensors"), framework="pt") as handle:
        assert {handle.get_slice(key).get_dtype() for key in handle.keys()} == {"F16"}
    assert (out / "model.safetensors").stat().st_size <= (half / "model.safetensors").stat().st_size * 1.01
    staged = json.loads((out / "config.json").read_text())
    assert staged["dtype"] == staged["vision_config"]["dtype"] == "float32"
    card = (out / "README.md").read_text()
    assert "## How it was made\n\nBy hand." in card and "## DFN adapter" in card
    assert f'pipeline("facial-state", model="{REPO_ID}", adapter="{REPO_ID}")' in card
    assert "- dfn" in card.split("---")[1]  # the adapter's tags join the card's own
    # The adapter's training data and licence join the card's own (which lists only the model's).
    assert "mfa:my_faces" in card.split("---")[1] and "### The adapter's training data and licences" in card


def test_push_refuses_what_would_not_load_in_one_line(trained, tmp_path, capsys):
    from mf2.training.hub import main as push_main

    model_dir, adapter_dir = trained
    out = tmp_path / "preview"

    def refused(*argv: str) -> str:
        with pytest.raises(SystemExit) as exit_info:
            push_main([*argv, "--repo_id", REPO_ID, "--dry_run", "--output_dir", str(out)])
        assert exit_info.value.code == 2
        said = capsys.readouterr().err.strip().splitlines()
        assert "Traceback" not in "\n".join(said)
        return said[-1]

    assert "holds no config.json" in refused("--model_dir", str(tmp_path / "nope"))
    assert "adapter_model.safetensors missing" in refused(
        "--model_dir", str(model_dir), "--adapter_dir", str(model_dir)
    )
    other = tmp_path / "other"  # another architecture: the adapter's weights do not fit
    MF2ForFacialStateRecognition(tiny_config(qformer_config={"hidden_size": 48})).save_pretrained(other)
    assert "must be trained on --model_dir" in refused("--model_dir", str(other), "--adapter_dir", str(adapter_dir))
    assert not out.exists()  # nothing was written for a refused push
    out.mkdir()
    (out / "earlier.txt").write_text("a file of the user's")
    assert "is not empty" in refused("--model_dir", str(model_dir))
    assert (out / "earlier.txt").read_text() == "a file of the user's"
