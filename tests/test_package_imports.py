"""The package's import structure: no import cycle, a lazy `import mf2`, registrations that run on first use.

Speed is measured in `benchmarks/benchmark_import.py`; these tests check only what is imported, never how fast.
"""

import ast
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

import mf2
from mf2.integration.lazy_module import LazyModule

PACKAGE_DIR = Path(mf2.__file__).resolve().parent
REPO_ROOT = PACKAGE_DIR.parent

# `mf2.__all__` before the package became lazy: every one of these must stay importable from `mf2`.
PUBLIC_NAMES = [
    "DEFAULT_MODEL_NAME",
    "FacialStatePipeline",
    "AU_NAMES",
    "EMOTION_LABELS",
    "LOSS_NAMES",
    "MF2Config",
    "MF2ForFacialStateRecognition",
    "MF2ForPreTraining",
    "MF2ImageProcessor",
    "MF2Processor",
    "MF2Model",
    "MF2ModelOutput",
    "MF2PreTrainedModel",
    "MF2PreTrainingOutput",
    "MF2RecognitionOutput",
    "au_boxes_from_landmarks",
    "canonical_landmarks",
    "default_au_boxes",
    "default_model_path",
    "visualize",
]


def _module_name(path: Path) -> str:
    parts = path.relative_to(REPO_ROOT).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def _package_modules() -> dict[str, Path]:
    """Every module of the package (the shipped model folders hold remote-code copies, not package modules)."""
    paths = (path for path in PACKAGE_DIR.rglob("*.py") if "models" not in path.relative_to(PACKAGE_DIR).parts)
    return {_module_name(path): path for path in sorted(paths)}


def _imports(tree: ast.Module):
    """Every import statement, at module level or inside functions: a function-level import that closes a loop is a
    cycle too (it only fails later, or runs registration code twice)."""
    return (node for node in ast.walk(tree) if isinstance(node, (ast.Import, ast.ImportFrom)))


def _import_edges(name: str, path: Path, modules: dict[str, Path]) -> set[str]:
    """The package modules `name` imports (a parent package is imported first by Python itself and is not an edge)."""
    is_package = path.name == "__init__.py"
    edges = set()
    for node in _imports(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            targets = [alias.name for alias in node.names]
        else:
            base = node.module or ""
            if node.level:
                anchor = name.split(".") if is_package else name.split(".")[:-1]
                anchor = anchor[: len(anchor) - (node.level - 1)]
                base = ".".join(anchor + ([base] if base else []))
            targets = [base] + [f"{base}.{alias.name}" for alias in node.names]
        # `from . import x` names the parent package, which Python imports before `name` anyway: not an edge.
        edges.update(target for target in targets if target in modules and not (name + ".").startswith(target + "."))
    return edges


def test_no_import_cycle():
    modules = _package_modules()
    graph = {name: _import_edges(name, path, modules) for name, path in modules.items()}
    state: dict[str, str] = {}

    def visit(name: str, stack: list[str]) -> None:
        state[name] = "visiting"
        for target in sorted(graph[name]):
            if state.get(target) == "visiting":
                cycle = stack[stack.index(target) :] + [target] if target in stack else [name, target]
                pytest.fail(f"import cycle: {' -> '.join(cycle)}")
            if target not in state:
                visit(target, stack + [target])
        state[name] = "done"

    for name in graph:
        if name not in state:
            visit(name, [name])
    assert len(graph) > 40  # the walk really saw the package


def test_public_names_are_lazy_and_importable():
    assert isinstance(sys.modules["mf2"], LazyModule)
    assert set(PUBLIC_NAMES) <= set(mf2.__all__)
    for name in mf2.__all__:
        assert getattr(mf2, name) is not None, name
    assert mf2.__version__
    with pytest.raises(AttributeError):
        mf2.no_such_name  # noqa: B018


def _run(code: str, env: dict[str, str] | None = None, cwd: Path = REPO_ROOT) -> dict:
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=600, cwd=cwd, env=env)
    assert result.returncode == 0, result.stderr[-3000:]
    return json.loads(result.stdout.strip().splitlines()[-1])


def test_import_mf2_and_cli_help_import_neither_torch_nor_transformers():
    values = _run(
        "import contextlib, io, json, sys\n"
        "import mf2\n"
        "after_import = sorted(m for m in ('torch', 'transformers', 'PIL', 'peft') if m in sys.modules)\n"
        "from mf2.cli import main\n"
        "with contextlib.redirect_stdout(io.StringIO()):\n"
        "    main(['--help'])\n"
        "after_help = sorted(m for m in ('torch', 'transformers', 'PIL', 'peft') if m in sys.modules)\n"
        "print(json.dumps({'import': after_import, 'help': after_help}))\n"
    )
    assert values == {"import": [], "help": []}


def test_registrations_run_when_transformers_is_used():
    """After a plain `import mf2`, transformers' Auto classes and pipeline registry know MF² however they are reached,
    and the classes export their code (`_auto_class`)."""
    values = _run(
        "import json\n"
        "import mf2\n"
        "from transformers import AutoConfig, AutoModel, AutoProcessor, pipeline\n"
        "from transformers.models.auto.configuration_auto import CONFIG_MAPPING\n"
        "from transformers.models.auto.modeling_auto import MODEL_FOR_IMAGE_CLASSIFICATION_MAPPING, MODEL_MAPPING\n"
        "from transformers.pipelines import PIPELINE_REGISTRY\n"
        "from mf2.integration.import_hooks import pending\n"
        "print(json.dumps({'config': CONFIG_MAPPING['mf2'].__name__,\n"
        "    'model': MODEL_MAPPING[mf2.MF2Config].__name__,\n"
        "    'classifier': MODEL_FOR_IMAGE_CLASSIFICATION_MAPPING[mf2.MF2Config].__name__,\n"
        "    'task': 'facial-state' in PIPELINE_REGISTRY.get_supported_tasks(),\n"
        "    'auto_class': [mf2.MF2Model._auto_class, mf2.MF2Processor._auto_class],\n"
        "    'pending': pending()}))\n"
    )
    assert values == {
        "config": "MF2Config",
        "model": "MF2Model",
        "classifier": "MF2ForFacialStateRecognition",
        "task": True,
        "auto_class": ["AutoModel", "AutoProcessor"],
        "pending": [],
    }


def test_registrations_run_at_import_when_transformers_came_first():
    values = _run(
        "import json\n"
        "from transformers import pipeline\n"
        "from transformers.pipelines import PIPELINE_REGISTRY\n"
        "import mf2\n"
        "from mf2.integration.import_hooks import pending\n"
        "print(json.dumps({'task': 'facial-state' in PIPELINE_REGISTRY.get_supported_tasks(), 'pending': pending()}))\n"
    )
    assert values == {"task": True, "pending": []}


# Variables that would send a cache somewhere other than the folders the test watches.
CACHE_VARIABLES = (
    "HF_HOME",
    "HF_HUB_CACHE",
    "HUGGINGFACE_HUB_CACHE",
    "TRANSFORMERS_CACHE",
    "HF_MODULES_CACHE",
    "HF_XET_CACHE",
    "HF_ASSETS_CACHE",
    "XDG_CACHE_HOME",
    "MF2_HOME",
)


def test_import_mf2_writes_nothing_to_disk(tmp_path):
    """`import mf2` (its lazy module, its post-import finder) creates no file: the Hugging Face home and Hub cache,
    `MF2_HOME`, the home folder and the working directory stay as they were. What a short name needs is resolved at
    its first use, in memory (`mf2.integration.default_model`)."""
    folders = {"HF_HOME": tmp_path / "hf-home", "HF_HUB_CACHE": tmp_path / "hf-hub-cache", "MF2_HOME": tmp_path / "mf2"}
    for folder in folders.values():
        folder.mkdir()
    env = {key: value for key, value in os.environ.items() if key not in CACHE_VARIABLES}
    env.update({key: str(folder) for key, folder in folders.items()}, HOME=str(tmp_path))
    env["PYTHONPATH"] = os.pathsep.join(filter(None, [str(REPO_ROOT), env.get("PYTHONPATH")]))
    values = _run("import json\nimport mf2\nprint(json.dumps({'file': mf2.__file__}))\n", env=env, cwd=tmp_path)
    assert Path(values["file"]).resolve().parent == PACKAGE_DIR  # the package under test, not another install
    assert sorted(str(path.relative_to(tmp_path)) for path in tmp_path.rglob("*")) == ["hf-home", "hf-hub-cache", "mf2"]
