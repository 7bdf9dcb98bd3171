"""The short names `mf2-base` and `mf2` load the shipped model with no call to the Hub, online or offline, and without
writing to the Hugging Face cache; real Hub ids still go to the Hub; a folder of that name in the working directory
counts only when given as a path (`./mf2-base`).

"No network" runs in a fresh process whose Hub is a closed loopback port (`HF_ENDPOINT=http://127.0.0.1:9`, no
`HF_HUB_OFFLINE`): each Hub call there costs seconds of retries, so the process records every socket it opens and
times each load against the same load from the folder's path. The loopback Hub (tests/training/loopback_hub.py)
answers 404 to everything and counts the requests it gets.
"""

import json
import os
import re
import subprocess
import sys
from pathlib import Path

import pytest
from PIL import Image
from test_readme import PHOTO, readme_python_blocks
from training.loopback_hub import LoopbackHub
from transformers import AutoConfig, AutoModel

from mf2.cli import main as cli_main
from mf2.integration.default_model import DEFAULT_MODEL_NAME, SHORT_NAMES, default_model_path, resolve_model

REPO = Path(__file__).resolve().parents[2]
CLOSED_PORT = "http://127.0.0.1:9"  # the discard port: nothing listens on loopback, a connection is refused at once
EXTRA_SECONDS = 30  # what a load by short name may take beyond the same load by path
HUB_TROUBLE = re.compile(
    r"retr(y|ying|ies)\b|connect(ion)?[ _]?(error|refused|reset)|max retries|couldn't connect|"
    r"offline mode|not a valid model identifier",
    re.I,
)

# Run first in each process: records every network socket the process connects (none is allowed).
RECORD_CONNECTIONS = """
import json, socket, time
connections = []
_connect, _connect_ex = socket.socket.connect, socket.socket.connect_ex
def _record(self, address):
    if self.family in (socket.AF_INET, socket.AF_INET6):
        connections.append(str(address))
socket.socket.connect = lambda self, address: (_record(self, address), _connect(self, address))[1]
socket.socket.connect_ex = lambda self, address: (_record(self, address), _connect_ex(self, address))[1]
def timed(code, scope):
    start = time.monotonic()
    exec(code, scope)
    return time.monotonic() - start
"""


def hub_env(tmp_path: Path, endpoint: str, offline: bool = False) -> tuple[dict[str, str], Path]:
    """The environment of a fresh process: the given Hub endpoint, online unless `offline`, an empty HF_HOME."""
    home = tmp_path / "hf-home"
    home.mkdir()
    drop = (
        "HF_HUB_OFFLINE",
        "TRANSFORMERS_OFFLINE",
        "HF_HUB_CACHE",
        "HUGGINGFACE_HUB_CACHE",
        "TRANSFORMERS_CACHE",
        "HF_MODULES_CACHE",
        "HF_XET_CACHE",
        "HF_ASSETS_CACHE",
        "HF_TOKEN_PATH",
    )
    env = {key: value for key, value in os.environ.items() if key not in drop}
    env.update(HF_ENDPOINT=endpoint, HF_HOME=str(home))
    if offline:
        env.update(HF_HUB_OFFLINE="1", TRANSFORMERS_OFFLINE="1")
    return env, home


def run(code: str, env: dict[str, str], cwd: Path) -> dict:
    """Run `code` in a fresh process; its last stdout line is JSON. Fails on a non-zero exit or Hub trouble."""
    done = subprocess.run([sys.executable, "-c", code], cwd=cwd, env=env, capture_output=True, text=True, timeout=900)
    assert done.returncode == 0, done.stderr[-3000:]
    trouble = HUB_TROUBLE.search(done.stdout + done.stderr)
    assert trouble is None, f"the Hub was asked: {trouble.group(0)!r} in\n{done.stderr[-3000:]}"
    return json.loads(done.stdout.strip().splitlines()[-1])


def files_under(folder: Path) -> list[str]:
    return sorted(str(path.relative_to(folder)) for path in folder.rglob("*"))


def readme_first_block_to_its_first_call() -> str:
    """The README's first Python block, up to and including its first call of the pipeline."""
    lines = readme_python_blocks()[0].splitlines()
    end = next(index for index, line in enumerate(lines) if line.startswith("faces = pipe("))
    return "\n".join(lines[: end + 1])


def test_the_readme_block_loads_the_short_name_without_the_network(tmp_path):
    block = readme_first_block_to_its_first_call()
    assert 'model="mf2-base"' in block and block.index("import mf2") < block.index("from transformers import")
    Image.open(PHOTO).convert("RGB").save(tmp_path / "photo.jpg")
    by_path = block.replace('"mf2-base"', repr(str(default_model_path())))
    code = (
        RECORD_CONNECTIONS + f"by_path = timed({by_path!r}, {{}})\n"  # imports, warm-up: the load by path
        f"scope = {{}}\nby_name = timed({block!r}, scope)\n"
        "print(json.dumps({'by_path': by_path, 'by_name': by_name, 'connections': connections,\n"
        "    'model': scope['pipe'].model.config._name_or_path, 'faces': len(scope['faces'])}))\n"
    )
    env, home = hub_env(tmp_path, CLOSED_PORT)
    values = run(code, env, tmp_path)
    assert values["connections"] == []
    assert values["by_name"] - values["by_path"] < EXTRA_SECONDS, values
    assert values["model"] == str(default_model_path()) and values["faces"] == 1
    assert files_under(home) == []


def test_automodel_loads_both_short_names_without_the_network(tmp_path):
    """`from transformers import AutoModel` before `import mf2` (the class is patched in place, not re-imported)."""
    code = (
        RECORD_CONNECTIONS + "from transformers import AutoModel\nimport mf2\n"
        f"times, names = {{}}, {{}}\n"
        f"for name in [{str(default_model_path())!r}, 'mf2', 'mf2-base']:\n"
        "    scope = {'AutoModel': AutoModel, 'name': name}\n"
        "    times[name] = timed('model = AutoModel.from_pretrained(name)', scope)\n"
        "    names[name] = [type(scope['model']).__name__, scope['model'].config.model_name]\n"
        "print(json.dumps({'times': times, 'names': names, 'connections': connections}))\n"
    )
    env, home = hub_env(tmp_path, CLOSED_PORT)
    values = run(code, env, tmp_path)
    assert values["connections"] == []
    by_path = values["times"].pop(str(default_model_path()))
    assert set(values["times"]) == set(SHORT_NAMES)
    for name, seconds in values["times"].items():
        assert seconds - by_path < EXTRA_SECONDS, (name, values["times"], by_path)
    assert all(found == ["MF2Model", DEFAULT_MODEL_NAME] for found in values["names"].values()), values["names"]
    assert files_under(home) == []


def test_short_names_never_reach_a_hub_and_hub_ids_do(tmp_path):
    """Every entry point, `pipeline` bound before `import mf2`, against a Hub that answers 404: no request for the
    short names; `someone/model` is asked for there."""
    short = """
import json
from transformers import (AutoConfig, AutoImageProcessor, AutoModelForImageClassification, AutoModelForPreTraining,
                          AutoProcessor, pipeline)
import mf2
from mf2 import MF2Config, MF2ForFacialStateRecognition, MF2ImageProcessor, MF2Processor
found = {
    "AutoConfig": AutoConfig.from_pretrained("mf2").model_name,
    "MF2Config": MF2Config.from_pretrained("mf2-base").model_name,
    "AutoProcessor": type(AutoProcessor.from_pretrained("mf2")).__name__,
    "AutoImageProcessor": type(AutoImageProcessor.from_pretrained("mf2-base")).__name__,
    "MF2Processor": type(MF2Processor.from_pretrained("mf2-base")).__name__,
    "MF2ImageProcessor": type(MF2ImageProcessor.from_pretrained(pretrained_model_name_or_path="mf2")).__name__,
    "AutoModelForPreTraining": type(AutoModelForPreTraining.from_pretrained("mf2")).__name__,
    "AutoModelForImageClassification": type(AutoModelForImageClassification.from_pretrained("mf2-base")).__name__,
    "MF2ForFacialStateRecognition": type(MF2ForFacialStateRecognition.from_pretrained("mf2")).__name__,
    "pipeline": pipeline("facial-state", model="mf2", device="cpu").model.config.model_name,
}
print(json.dumps(found))
"""
    hub_id = """
import json
import mf2
from transformers import AutoModel
try:
    AutoModel.from_pretrained("someone/model")
except OSError as error:
    print(json.dumps({"error": str(error).splitlines()[0]}))
"""
    with LoopbackHub() as hub:
        env, home = hub_env(tmp_path, hub.url)
        found = run(short, env, tmp_path)
        assert hub.requests == []
        assert files_under(home) == []
        done = subprocess.run(
            [sys.executable, "-c", hub_id], cwd=tmp_path, env=env, capture_output=True, text=True, timeout=600
        )
        assert done.returncode == 0, done.stderr[-3000:]
        assert "someone/model" in json.loads(done.stdout.strip().splitlines()[-1])["error"]
        assert any("someone/model" in path for _, path in hub.requests), hub.requests
    assert found == {
        "AutoConfig": "mf2-base",
        "MF2Config": "mf2-base",
        "AutoProcessor": "MF2Processor",
        "AutoImageProcessor": "MF2ImageProcessor",
        "MF2Processor": "MF2Processor",
        "MF2ImageProcessor": "MF2ImageProcessor",
        "AutoModelForPreTraining": "MF2ForPreTraining",
        "AutoModelForImageClassification": "MF2ForFacialStateRecognition",
        "MF2ForFacialStateRecognition": "MF2ForFacialStateRecognition",
        "pipeline": "mf2-base",
    }


def test_importing_and_loading_write_nothing_to_the_hugging_face_home(tmp_path):
    code = """
import json, os
home = os.environ["HF_HOME"]
import mf2
from transformers import AutoConfig, AutoModel, AutoProcessor, pipeline  # every registration runs
after_import = sorted(os.listdir(home))
AutoConfig.from_pretrained("mf2-base")
AutoModel.from_pretrained("mf2-base")
print(json.dumps({"after_import": after_import}))
"""
    env, home = hub_env(tmp_path, CLOSED_PORT, offline=True)
    assert run(code, env, tmp_path) == {"after_import": []}
    assert files_under(home) == []


@pytest.fixture
def broken_local_folder(tmp_path, monkeypatch) -> Path:
    """The working directory holds `./mf2-base` with an unreadable config."""
    folder = tmp_path / DEFAULT_MODEL_NAME
    folder.mkdir()
    (folder / "config.json").write_text("{ not json")
    monkeypatch.chdir(tmp_path)
    return folder


def test_a_local_folder_of_the_short_name_counts_only_as_a_path(broken_local_folder):
    for name in SHORT_NAMES:
        assert resolve_model(name) == str(default_model_path())
    assert resolve_model(f"./{DEFAULT_MODEL_NAME}") == f"./{DEFAULT_MODEL_NAME}"
    assert resolve_model(Path(DEFAULT_MODEL_NAME)) == os.path.join(os.curdir, DEFAULT_MODEL_NAME)
    assert resolve_model(str(broken_local_folder)) == str(broken_local_folder)
    assert AutoConfig.from_pretrained(DEFAULT_MODEL_NAME).model_name == DEFAULT_MODEL_NAME
    assert AutoModel.from_pretrained("mf2").config.model_name == DEFAULT_MODEL_NAME
    for explicit in (f"./{DEFAULT_MODEL_NAME}", str(broken_local_folder), Path(DEFAULT_MODEL_NAME)):
        with pytest.raises((OSError, ValueError)):
            AutoConfig.from_pretrained(explicit)


def test_mf2_analyze_ignores_a_local_folder_unless_given_as_a_path(broken_local_folder, capsys):
    photo, output = str(PHOTO), str(broken_local_folder.parent / "out.jsonl")
    assert cli_main(["analyze", photo, "--model", DEFAULT_MODEL_NAME, "-o", output, "--no-progress"]) == 0
    record = json.loads(Path(output).read_text().splitlines()[0])
    assert record["model"] == DEFAULT_MODEL_NAME and record["model_trained"] is True
    capsys.readouterr()
    assert cli_main(["analyze", photo, "--model", f"./{DEFAULT_MODEL_NAME}", "-o", output, "--no-progress"]) == 1
    assert f"./{DEFAULT_MODEL_NAME}" in capsys.readouterr().err
