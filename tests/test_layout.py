"""The package's layout: every import follows the layers of docs/design.md, no import cycles, no
private name crosses a package boundary, the README's module table names every top-level module,
and neither `import difflab` nor the command line's help loads torch."""
import ast
import re
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
PACKAGE = ROOT / "difflab"
NOT_LAYERED = {"difflab", "difflab.__main__"}  # the lazy public API and `python -m difflab`


def module_name(path: Path) -> str:
    parts = list(path.relative_to(ROOT).with_suffix("").parts)
    if parts[-1] == "__init__":
        parts.pop()
    return ".".join(parts)


MODULES = {module_name(p): p for p in sorted(PACKAGE.rglob("*.py"))}


def layers() -> list[tuple[str, list[str]]]:
    """(layer, module prefixes) in order, lowest first, from the table in docs/design.md."""
    text = (ROOT / "docs" / "design.md").read_text()
    table = text.split("<!-- layers -->")[1].split("<!-- /layers -->")[0]
    rows = [line for line in table.strip().splitlines()[2:] if line.startswith("|")]
    return [(row.split("|")[1].strip(), re.findall(r"`(difflab[\w.]*)`", row.split("|")[2])) for row in rows]


def layer_of(module: str, table) -> int | None:
    for rank, (_, prefixes) in enumerate(table):
        if any(module == p or module.startswith(p + ".") for p in prefixes):
            return rank
    return None


def imports(module: str, path: Path, top_level_only: bool = False):
    """(imported module, imported names, line) for every import of difflab inside ``module``."""
    tree = ast.parse(path.read_text())
    package = module if path.name == "__init__.py" else module.rpartition(".")[0]
    nodes = tree.body if top_level_only else ast.walk(tree)
    for node in nodes:
        if isinstance(node, ast.Import):
            for alias in node.names:
                if alias.name.split(".")[0] == "difflab":
                    yield alias.name, [], node.lineno
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                base = package.split(".")
                base = base[:len(base) - node.level + 1]
                target = ".".join(base + ([node.module] if node.module else []))
            else:
                target = node.module or ""
            if target.split(".")[0] != "difflab":
                continue
            names = [a.name for a in node.names]
            objects = [n for n in names if f"{target}.{n}" not in MODULES]
            if objects:  # `from . import submodule` imports the submodule, not its package's names
                yield target, objects, node.lineno
            for n in names:
                if f"{target}.{n}" in MODULES:
                    yield f"{target}.{n}", [], node.lineno


def test_every_module_belongs_to_a_layer():
    table = layers()
    assert [name for name, _ in table][:2] == ["base", "core"]
    missing = [m for m in MODULES if m not in NOT_LAYERED and layer_of(m, table) is None]
    assert not missing, f"modules that no layer of docs/design.md lists: {missing}"
    listed = [p for _, prefixes in table for p in prefixes]
    absent = [p for p in listed if p not in MODULES]
    assert not absent, f"docs/design.md lists modules that do not exist: {absent}"


def test_no_module_imports_a_higher_layer():
    table = layers()
    wrong = []
    for module, path in MODULES.items():
        if module in NOT_LAYERED:
            continue
        mine = layer_of(module, table)
        for target, _, line in imports(module, path):
            theirs = layer_of(target, table)
            if target == "difflab" or (theirs is not None and theirs > mine):
                wrong.append(f"{path.relative_to(ROOT)}:{line} ({table[mine][0]}) imports {target}"
                             f" ({table[theirs][0] if theirs is not None else 'the package root'})")
    assert not wrong, "imports against the layers of docs/design.md:\n" + "\n".join(wrong)


def test_no_import_cycles():
    graph = {m: {t for t, _, _ in imports(m, p, top_level_only=True) if t in MODULES and t != m}
             for m, p in MODULES.items()}
    state, stack, cycles = {}, [], []

    def visit(m):
        state[m] = "open"
        stack.append(m)
        for t in sorted(graph[m]):
            if state.get(t) == "open":
                cycles.append(stack[stack.index(t):] + [t])
            elif t not in state:
                visit(t)
        stack.pop()
        state[m] = "done"

    for m in sorted(graph):
        if m not in state:
            visit(m)
    # A module importing a name from its own package's __init__ (which imports the module back)
    # is the one pattern Python resolves; there is none today, so any cycle fails.
    assert not cycles, "import cycles: " + "; ".join(" -> ".join(c) for c in cycles)


def test_no_private_name_crosses_a_package():
    wrong = []
    for module, path in MODULES.items():
        package = module if path.name == "__init__.py" else module.rpartition(".")[0]
        for target, names, line in imports(module, path):
            target_package = target if target in MODULES and MODULES[target].name == "__init__.py" \
                else target.rpartition(".")[0]
            private = [n for n in names if n.startswith("_") and not n.startswith("__")]
            if target.rpartition(".")[2].startswith("_") and not target.endswith("__main__"):
                private.append(target)
            if private and target_package != package:
                wrong.append(f"{path.relative_to(ROOT)}:{line} imports {private} from {target}")
    assert not wrong, "private names imported across packages:\n" + "\n".join(wrong)


def test_the_readme_module_table_names_every_top_level_module():
    readme = (ROOT / "README.md").read_text()
    table = readme.split("| layer | module | what it holds |")[1].split("\n\n")[0]
    named = set(re.findall(r"`(difflab\.\w+)`", table))
    top = {m for m in MODULES if m.count(".") == 1 and m != "difflab.__main__"}
    assert named == top, f"README table misses {sorted(top - named)}, names absent {sorted(named - top)}"


@pytest.mark.parametrize("code", [
    "import difflab",
    "import difflab.cli; difflab.cli.main(['--help'])",
    "import difflab.cli; difflab.cli.main(['train', '--help'])",
    "import difflab.cli; difflab.cli.main(['edit', 'inpaint', '--help'])",
    "import difflab.cli; difflab.cli.main(['bench', 'samplers', '--help'])",
])
def test_torch_is_imported_only_when_needed(code):
    probe = f"import sys\ntry:\n    {code}\nexcept SystemExit:\n    pass\nprint('torch' in sys.modules)"
    done = subprocess.run([sys.executable, "-c", probe], capture_output=True, text=True, cwd=ROOT)
    assert done.returncode == 0, done.stderr
    assert done.stdout.strip().splitlines()[-1] == "False"


def test_public_names_of_the_package():
    import difflab

    for name in ("sample", "karras_sigmas", "SAMPLERS", "load", "GaussianMixture", "editing", "likelihood",
                 "guidance", "schedules", "samplers", "training", "pipeline"):
        assert name in dir(difflab) and getattr(difflab, name) is not None
    assert callable(difflab.editing.inpaint) and callable(difflab.likelihood.ode_nll)
    with pytest.raises(AttributeError):
        difflab.no_such_name  # noqa: B018
