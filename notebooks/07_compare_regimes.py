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
# # Comparing circuits across training regimes and checkpoints
#
# *Thinking Sparks!* (2025) compares a base model's circuits with those of its post-trained
# versions (SFT, distillation, GRPO): heads that emerge, are retained or are lost, and each head's
# change in importance E. Here circuits come from EAP-IG on the input embeddings with a KL
# objective (the top 5% of edges), for the zoo's reasoner family (a Qwen2 with grouped-query
# attention) and for toyworld's training checkpoints. `make compare-regimes` runs both studies.

# %%
N = 8
SEED = 0
STEPS = 4

# %%
from analyses import compare_regimes as cr

reg = cr.regimes(N, SEED, None, steps=STEPS, with_checkpoints=False)  # make compare-regimes reads the checkpoints too
print("regimes:", reg["regimes"])
print("accuracy:", reg["accuracy"])

# %% [markdown]
# ## Toyworld's checkpoints: when does each task's circuit settle?

# %%
evo = cr.evolution(N, SEED, None, tasks=["ioi"])
for task, row in evo["tasks"].items():
    print(task, {k: row[k] for k in row if k in ("jaccard_with_final", "stable_from")})

# %%
figs = cr.figures(reg, evo)
print(sorted(figs))
display(*figs.values())  # noqa: F821 (IPython's display)
