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
# # Head repair: Colored Objects fixed by overriding a few heads' attention
#
# Merullo et al. 2024 repaired GPT-2 medium on Colored Objects (49.6% → 93.7%) by making four
# IOI-circuit heads (inhibition and negative name movers) attend to the wrong colours, suppressing
# them. Here the same intervention on the zoo: heads chosen from the IOI analysis's roles, on
# the scenes the model solves worst, compared with a uniform-attention control and random heads.
# `make repair` runs it with 128 prompts.

# %%
MODEL = "zoo:toyworld"
N = 32
SEED = 0

# %%
from analyses import repair
from circuits.models import load_model

model = load_model(MODEL)
ps, size = repair.weak_prompts(model, MODEL, N, SEED)
print(f"the weakest scene size: {size} objects")
r = repair.roles(model, MODEL, 32, SEED)
choice = repair.choose_heads(r)
print("heads:", choice["heads"], "|", choice["reason"])

# %%
res = repair.repair(model, ps, choice["heads"], SEED, n_random=3)
for name, row in res.items():
    print(name, row)

# %%
repair.figures(res, MODEL, size)["repair"]
