"""Every notebook is committed clean: valid nbformat v4, no outputs, a quick-mode parameters cell,
and no cell that swallows errors (DESIGN.md, "Notebooks" and "Tests")."""
import re
from pathlib import Path

import nbformat
import pytest

NOTEBOOKS = sorted((Path(__file__).resolve().parents[1] / "notebooks").glob("*.ipynb"))

# `except:` with no exception named, anywhere in a line
BARE_EXCEPT = re.compile(r"^\s*except\s*:", re.MULTILINE)
# `except Exception: pass` (also BaseException, `as e`, and the pass on the next line)
SILENT_EXCEPT = re.compile(r"^\s*except\s+(Base)?Exception\b[^:\n]*:\s*(#[^\n]*)?\n?\s*pass\b", re.MULTILINE)


def hides_errors(source: str) -> bool:
    """True if the source has a bare ``except:`` or an ``except Exception: pass``."""
    return bool(BARE_EXCEPT.search(source) or SILENT_EXCEPT.search(source))


def test_there_are_notebooks():
    assert NOTEBOOKS, "no notebooks/*.ipynb found"


@pytest.mark.parametrize("source", [
    "try:\n    f()\nexcept:\n    g()\n",
    "try:\n    f()\nexcept :  # anything\n    raise\n",
    "try:\n    f()\nexcept Exception:\n    pass\n",
    "try:\n    f()\nexcept Exception as error:  # ignore\n    pass\n",
    "try: f()\nexcept BaseException: pass\n",
])
def test_the_check_finds_hidden_errors(source):
    assert hides_errors(source)


@pytest.mark.parametrize("source", [
    "try:\n    f()\nexcept ValueError:\n    g()\n",
    "try:\n    f()\nexcept Exception as error:\n    raise RuntimeError('context') from error\n",
    "print('except: is a keyword')\n",
])
def test_the_check_passes_honest_code(source):
    assert not hides_errors(source)


@pytest.mark.parametrize("path", NOTEBOOKS, ids=lambda p: p.name)
def test_notebook_is_valid_v4(path):
    nb = nbformat.read(path, as_version=nbformat.NO_CONVERT)
    assert nb.nbformat == 4, f"{path.name}: nbformat {nb.nbformat}, expected 4"
    nbformat.validate(nb)


@pytest.mark.parametrize("path", NOTEBOOKS, ids=lambda p: p.name)
def test_notebook_has_no_outputs(path):
    nb = nbformat.read(path, as_version=4)
    dirty = [i for i, cell in enumerate(nb.cells) if cell.cell_type == "code"
             and (cell.outputs or cell.execution_count is not None)]
    assert not dirty, f"{path.name}: cells {dirty} have outputs or execution counts; clear them"


@pytest.mark.parametrize("path", NOTEBOOKS, ids=lambda p: p.name)
def test_notebook_has_a_quick_mode_parameters_cell(path):
    nb = nbformat.read(path, as_version=4)
    parameters = [cell for cell in nb.cells if cell.cell_type == "code"
                  and "parameters" in cell.metadata.get("tags", [])]
    assert parameters, f"{path.name}: no code cell is tagged 'parameters'"
    assert any("KDWB_QUICK" in cell.source for cell in parameters), \
        f"{path.name}: the 'parameters' cell does not read KDWB_QUICK"


@pytest.mark.parametrize("path", NOTEBOOKS, ids=lambda p: p.name)
def test_no_cell_hides_an_error(path):
    nb = nbformat.read(path, as_version=4)
    bad = [i for i, cell in enumerate(nb.cells) if cell.cell_type == "code" and hides_errors(cell.source)]
    assert not bad, f"{path.name}: cells {bad} have a bare `except:` or `except Exception: pass`"
