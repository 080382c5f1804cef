"""Held-back cases of the summary and the diagram: counts of built models, table text, bad flags."""

from __future__ import annotations

import torch

import resgraph

RECURRENT = """\
resgraph: 1
name: Recurrent
inputs: {x: [6, 16]}
layers:
  - enc: {op: TransformerEncoderLayer, nhead: 2, dim_feedforward: 32, batch_first: true}
  - rnn: {op: LSTM, input_size: 16, hidden_size: 8, batch_first: true, output: 0}
"""


def test_an_uncurated_layers_macs_do_not_depend_on_where_or_how_the_model_runs() -> None:
    # On CPU torch runs an LSTM as one fused kernel and an eval-mode encoder layer on its fast path,
    # both invisible to FlopCounterMode: a built model's summary said 0 MACs where its spec's said more.
    lstm = 6 * 4 * 8 * (16 + 8)  # per step: four gates, each a product with the input and the hidden state
    expected = {row.name: row.macs for row in resgraph.summary(RECURRENT).rows}
    assert expected["rnn"] == lstm and expected["enc"] > 0
    model = resgraph.build(RECURRENT, seed=0)
    for mode in (model.train(), model.eval(), model.double()):
        assert {row.name: row.macs for row in resgraph.summary(mode).rows} == expected
    assert next(model.parameters()).device == torch.device("cpu")  # measured on meta stand-ins: left where it was
