"""Held-back cases of the text review (YAML positions, names, expressions): the spec as they pin it.

- A key YAML reads as a number (`1:`, `007:`) is refused at the key with the name rule (test_loader);
  a quoted one that breaks the name rule (`params: {"3": 4}`) is said at the key, of its mapping.
"""

from __future__ import annotations

import pytest

import resgraph

HEADER = "resgraph: 1\nname: Net\ninputs: {x: [3, 8]}\n"


def messages(text: str) -> list[str]:
    with pytest.raises(resgraph.SpecError) as caught:
        resgraph.check(text)
    return [d.format() for d in caught.value.diagnostics]


# --- names ---------------------------------------------------------------------------------------

@pytest.mark.parametrize(("params", "name"), [('params: {"3": 4}', "3"), ("params: {ok: 1, '2x': 4}", "2x")])
def test_a_parameter_name_that_breaks_the_name_rule_is_said_at_its_key(params: str, name: str) -> None:
    for text, label in ((HEADER + params + "\nlayers:\n  - a: {op: ReLU}\n", "params"),
                        (HEADER + "blocks:\n  b:\n    " + params + "\n    layers:\n      - a: {op: ReLU}\n"
                         "layers:\n  - a: {op: ReLU}\n", "block 'b', params")):
        key = text.index(params) + params.index(name) - 1  # the key's opening quote
        line, column = text.count("\n", 0, key) + 1, key - text.rfind("\n", 0, key)
        assert messages(text) == [f"<string>:{line}:{column}: error: {label}: invalid name {name!r}: names start "
                                  "with an ASCII letter and hold only ASCII letters, digits and '_'"]
