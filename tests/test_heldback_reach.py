"""Held-back cases of the language-reach issue (#12), second pass: multi-output blocks, constants
and arithmetic, frozen weights, pretrained weights, shape-aware expressions and scaling, each
checked against hand-written torch with the same weights.

The specification, as these cases pin it:

- A `constant` or `full` written with true/false only and no `dtype` is a bool tensor, as
  `torch.tensor([True, False])` is: a mask stays a mask (stored as float32, an sdpa mask's
  `false` would be added to the scores as 0.0 and every position attended).
- A pickled model (`torch.save(model)`, `pickle`) comes back with exactly the parameters that
  were frozen frozen, as `copy.deepcopy` and a pickled `nn.Module` keep them.
"""

from __future__ import annotations

import copy
import io
import pickle

import torch
import torch.nn.functional as F

import resgraph

HEADER = "resgraph: 1\nname: Net\n"


# --- constants ------------------------------------------------------------------------------------

def test_a_constant_of_true_and_false_is_a_bool_mask_as_torch_tensor_makes_it() -> None:
    model = resgraph.build(HEADER + """inputs: {x: [3, 8]}
layers:
  - mask: {op: constant, value: [[true, false, false], [true, true, false], [true, true, true]]}
  - attn: {op: scaled_dot_product_attention, input: [x, x, x, mask]}
""")
    assert model.mask.dtype == torch.bool
    x = torch.randn(2, 3, 8)
    causal = torch.tril(torch.ones(3, 3, dtype=torch.bool))
    torch.testing.assert_close(model(x), F.scaled_dot_product_attention(x, x, x, attn_mask=causal))
    # ... and the same for `full`, in the forward and in the standalone source
    full = resgraph.build(HEADER + "inputs: {x: {shape: [4], dtype: bool}}\nlayers:\n"
                          "  - keep: {op: full, shape: [4], value: true}\n  - y: {op: mul, input: [x, keep]}\n")
    assert full.keep.dtype == torch.bool and "dtype=torch.bool" in resgraph.to_python(full)
    assert full(torch.tensor([[True, False, True, True]])).dtype == torch.bool


def test_numbers_and_an_explicit_dtype_keep_the_documented_dtype() -> None:
    model = resgraph.build(HEADER + """inputs: {x: [4]}
layers:
  - k: {op: constant, value: [1, 0, 1, 0]}
  - b: {op: constant, value: [true, false, true, false], dtype: float32}
  - y: {op: mul, input: [x, k]}
  - z: {op: add, input: [y, b]}
""")
    assert model.k.dtype == torch.float32 and model.b.dtype == torch.float32


# --- frozen weights -------------------------------------------------------------------------------

def test_a_pickled_model_keeps_which_parameters_are_frozen() -> None:
    model = resgraph.build("examples/tutorial.yaml", seed=0)
    model.res1_conv1.requires_grad_(False)  # a frozen stem, as when fine-tuning
    frozen = {name for name, p in model.named_parameters() if not p.requires_grad}
    assert frozen == {"res1_conv1.weight", "res1_conv1.bias"}
    buffer = io.BytesIO()
    torch.save(model, buffer)
    buffer.seek(0)
    for copied in (torch.load(buffer, weights_only=False), pickle.loads(pickle.dumps(model)),
                   copy.deepcopy(model)):
        assert {name for name, p in copied.named_parameters() if not p.requires_grad} == frozen
    thawed = pickle.loads(pickle.dumps(resgraph.build(HEADER + """inputs: {x: [4]}
layers:
  - w: {op: parameter, shape: [4], init: ones, trainable: false}
  - y: {op: mul, input: [x, w]}
""").requires_grad_(True)))
    assert thawed.w.requires_grad  # a parameter declared frozen, thawed by the user, stays thawed
