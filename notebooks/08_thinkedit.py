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
# # ThinkEdit: a length direction, steering, and a head edit
#
# ThinkEdit (Sun et al. 2025) finds that how long a reasoning model thinks follows a direction in
# the residual stream: the mean activation of long-thinking examples minus that of short ones.
# Steering along it changes the thinking length; a few attention heads write along the
# short-thinking direction, and projecting it out of their output weights (a tiny share of the
# parameters) makes the model think longer where it used to answer too fast. Here on
# `zoo:reasoner-sft`, a Qwen2 with GQA trained on arithmetic with graded thinking traces. The zoo
# result is negative so far (see the README): this notebook shows how to measure it.

# %%
MODEL = "zoo:reasoner-sft"  # DeepSeek-R1-Distill-Qwen-1.5B with a network and a GPU
N_DIRECTION = 48
N_EVAL = 48
SEED = 0

# %%
from analyses import thinkedit as te
from circuits.models import load_model

model = load_model(MODEL)
draws = [te.collect(model, te.problems_of("train", N_DIRECTION, SEED + 1 + i), SEED + 11 + i) for i in range(2)]
dirs = te.directions(model, draws)
for name, d in dirs.items():
    print(name, {k: v for k, v in d.items() if k != "direction"})

# %% [markdown]
# ## Head scores and the edit
# Each head's output on the short-thinking examples, projected on the direction: the heads that
# write along "short" most. The edit projects the direction out of the top heads' output weights;
# the comparison is against random and bottom-scoring heads of the same number.

# %%
direction = dirs[f"decision/{te.SITE}"]["direction"]
scores = te.head_scores(model, draws[0], direction)
ev = te.evaluate(model, scores, direction, 1, te.problems_of("test", N_EVAL, SEED + 4), SEED + 14, SEED, 1)
for name, row in ev.items():
    if isinstance(row, dict) and "accuracy" in row:
        print(f"{name:10s} accuracy {row['accuracy']:.2f}, short rate {row['short_rate']:.2f}, P(short) {row['p_short']:.3f}")

# %%
from circuits.figures import heatmaps

heatmaps({"head scores": scores}, title="projection of each head's output on the short-thinking direction")
