"""The package's layout: the top of `mf2/` is the model folder, exactly what a saved checkpoint carries as remote code
(the relative-import closure of the config, model, processors and pipeline, which `save_pretrained` copies), and
everything else lives in a wing (docs/model.md, "The package layout")."""

import ast
import re
from pathlib import Path

import mf2

PACKAGE = Path(mf2.__file__).resolve().parent
ROOTS = ("configuration_mf2", "modeling_mf2", "image_processing_mf2", "processing_mf2", "pipeline_mf2")
WINGS = {"cli", "data", "dfn", "integration", "models", "training"}


def remote_code_closure() -> set[str]:
    """The top-level modules reached from `ROOTS` by relative imports, as transformers' `custom_object_save` follows
    them."""
    seen: set[str] = set()
    todo = list(ROOTS)
    while todo:
        name = todo.pop()
        if name in seen:
            continue
        seen.add(name)
        source = (PACKAGE / f"{name}.py").read_text(encoding="utf-8")
        todo += re.findall(r"^\s*from \.(\w+) import", source, re.M)
        todo += re.findall(r"^\s*from \. import (\w+)", source, re.M)
    return seen


def test_the_top_of_the_package_is_the_model_folder():
    top = {path.stem for path in PACKAGE.glob("*.py")} - {"__init__", "__main__"}
    assert top == remote_code_closure(), (
        f"move into a wing: {sorted(top - remote_code_closure())}; missing: {sorted(remote_code_closure() - top)}"
    )


def test_everything_else_is_in_a_named_wing():
    folders = {path.name for path in PACKAGE.iterdir() if path.is_dir() and not path.name.startswith(("_", "."))}
    assert folders == WINGS, sorted(folders ^ WINGS)


def test_the_model_folder_never_imports_a_wing():
    for name in remote_code_closure():
        source = (PACKAGE / f"{name}.py").read_text(encoding="utf-8")
        wings = re.findall(r"^\s*(?:from|import) (?:mf2|\.)\.?(" + "|".join(WINGS) + r")\b", source, re.M)
        assert not wings, f"mf2/{name}.py imports {wings}: remote code cannot carry a wing"


def _definitions() -> list[tuple[str, ast.AST]]:
    return [
        (str(path.relative_to(PACKAGE)), node)
        for path in sorted(PACKAGE.rglob("*.py"))
        for node in ast.walk(ast.parse(path.read_text(encoding="utf-8")))
    ]


def test_one_trainer_subclass_and_one_cross_validation_loop():
    """One training system (#25): `MF2Trainer` is the package's only `Trainer` subclass, and subject folds are only
    dealt in `mf2.training.cross_validation.cross_validate`, which `mf2 finetune` and the recipe both call."""
    trainers, fold_users = [], []
    for where, node in _definitions():
        if isinstance(node, ast.ClassDef) and any(ast.unparse(base).endswith("Trainer") for base in node.bases):
            trainers.append(f"{where}:{node.name}")
        if isinstance(node, ast.Call) and ast.unparse(node.func).endswith("group_folds"):
            fold_users.append(where)
    assert trainers == ["training/trainer.py:MF2Trainer"]
    assert fold_users == ["training/cross_validation.py"]


def test_no_training_script_imports_another():
    """The entry points share building blocks, never each other (followed through every module they import)."""
    scripts = {"ablation", "evaluate", "finetune", "hub", "pretrain", "recipe"}
    for script in scripts:
        seen, todo = set(), [script]
        while todo:
            name = todo.pop()
            if name in seen or not (PACKAGE / "training" / f"{name}.py").is_file():
                continue
            seen.add(name)
            source = (PACKAGE / "training" / f"{name}.py").read_text(encoding="utf-8")
            todo += re.findall(r"^\s*from \.(\w+) import", source, re.M)
        assert not (seen - {script}) & scripts, (
            f"mf2/training/{script}.py reaches {sorted((seen - {script}) & scripts)}"
        )


def test_modules_and_functions_stay_short():
    """#25: no module over 450 lines (`modeling_mf2.py` excepted: the model's classes stay in one file, as in
    transformers), no function over 60 lines."""
    long_modules = [
        f"{path.relative_to(PACKAGE)}: {count}"
        for path in sorted(PACKAGE.rglob("*.py"))
        if path.name != "modeling_mf2.py" and (count := len(path.read_text(encoding="utf-8").splitlines())) > 450
    ]
    long_functions = [
        f"{where}:{node.name}: {node.end_lineno - node.lineno + 1}"
        for where, node in _definitions()
        if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef)) and node.end_lineno - node.lineno + 1 > 60
    ]
    assert not long_modules and not long_functions, {"modules": long_modules, "functions": long_functions}
