# ---
# jupyter:
#   jupytext:
#     formats: ipynb,py:percent
#     text_representation:
#       extension: .py
#       format_name: percent
#   kernelspec:
#     display_name: Python 3 (ipykernel)
#     language: python
#     name: python3
# ---

# %% [markdown]
# # Colored Objects: a second task's circuit, and how much of IOI's it reuses
#
# Merullo et al. 2024, *Circuit Component Reuse Across Tasks in Transformer Language Models*. The
# Colored Objects task ("the cup is blue, the key is red ... A: the key is" → " red") is analysed
# like IOI: head patching by position, path patching backwards from the logits with classes named
# by attention, faithfulness against random circuits of the same size and positions, accuracy per
# scene size, and the overlap of its heads with the IOI circuit on the same model against a random
# null. `make colored-objects` runs it with 64 prompts.

# %%
MODEL = "zoo:toyworld"  # gpt2-medium with a network: the paper's model
N = 16  # the fewest that give a bootstrap interval; make colored-objects uses 64
SEED = 0

# %%
from analyses import colored_objects as co
from circuits.models import load_model

model = load_model(MODEL)
ps, options = co.prompts(model, MODEL, N, SEED)  # refused, with the reason, below 80% clean accuracy
print(ps.clean_text[0], "->", ps.answer_text[0], "| options:", options)

# %% [markdown]
# ## Head patching, then path patching backwards
# Noising and denoising each head's output at the answer object, the answer colour, the
# distractor, the queried object and END; then the classes: colour movers (direct heads that read
# the answer colour), query composers and key feeders upstream of them.

# %%
patch = co.head_patching(model, ps, progress=False)
trace = co.trace_circuit(model, ps, progress=False)
for node, cls in trace.classes.items():
    print(f"{node:16s} {cls}")

# %% [markdown]
# ## Faithfulness against random circuits, and per scene size
# Everything outside the circuit is mean-ablated (per template); 20 random circuits of the same
# size and positions give the baseline a circuit must beat.

# %%
evaluation = co.evaluate_circuit(model, ps, trace.classes, SEED)
sizes = co.by_scene_size(model, ps, trace.classes)
f, rand = evaluation["faithfulness"], evaluation["random"]
print(f"faithfulness {f.faithfulness:.2f}; random circuits of its size: mean {rand['mean']:.2f}, max {rand['max']:.2f}")
for size, row in sizes.items():
    print(size, {k: round(v, 2) if isinstance(v, float) else v for k, v in row.items()})

# %% [markdown]
# ## Overlap with the IOI circuit
# Merullo et al. found the IOI circuit's classes reused for Colored Objects. Here: the heads both
# circuits share (positions ignored), their Jaccard index, and the p-value under random head sets of
# the same sizes.

# %%
from circuits.names import parse_node

heads = {(parse_node(c).layer, parse_node(c).head) for c in trace.classes}
overlap = co.ioi_overlap(model, MODEL, heads, N, SEED, progress=False)
print({k: overlap[k] for k in ("shared", "jaccard", "null_jaccard_mean", "p_value")})

# %%
figs = co.figures(patch, trace, sizes, int(model.cfg.n_layers), MODEL)
figs["patching"]

# %%
figs["circuit"]

# %%
figs["scene_sizes"]
