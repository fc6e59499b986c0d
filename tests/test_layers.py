"""The layers of the code hold (import-linter's contracts in pyproject.toml), and no import circle is left."""

from __future__ import annotations

import grimp
from importlinter.cli import lint_imports

from tests.conftest import REPO



def test_the_layer_contracts_are_kept(monkeypatch, capsys):
    monkeypatch.chdir(REPO)
    assert lint_imports(config_filename=str(REPO / "pyproject.toml")) == 0, capsys.readouterr().out[-3000:]


def test_no_import_circles():
    graph = grimp.build_graph("latentbench")
    in_circles = set()
    for module in graph.modules:
        for imported in graph.find_modules_directly_imported_by(module):
            if imported.startswith("latentbench") and graph.chain_exists(importer=imported, imported=module):
                in_circles |= {module, imported}
    assert not in_circles, sorted(in_circles)
