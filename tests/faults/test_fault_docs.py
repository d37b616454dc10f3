"""docs/reliability.md names a test for every row; those tests exist, and every fault test is named."""
import ast
import re
from pathlib import Path

from fault_helpers import ROOT


def test_every_row_of_the_reliability_table_names_an_existing_fault_test_and_vice_versa():
    text = (ROOT / "docs" / "reliability.md").read_text()
    named = set(re.findall(r"`(test_\w+)`", text))
    defined = {node.name for path in Path(__file__).parent.glob("test_fault_*.py")
               for node in ast.parse(path.read_text()).body
               if isinstance(node, ast.FunctionDef) and node.name.startswith("test_")}
    defined.discard("test_every_row_of_the_reliability_table_names_an_existing_fault_test_and_vice_versa")
    assert named - defined == set(), f"docs/reliability.md names tests that do not exist: {sorted(named - defined)}"
    assert defined - named == set(), f"fault tests missing from docs/reliability.md: {sorted(defined - named)}"
