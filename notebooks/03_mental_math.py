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
# # Mental math: All-for-One (attention peeking)
#
# *All for One: LLMs Solve Mental Math at the Last Token With Information Transferred From Other
# Tokens* (Mamidanna et al. 2025). Three stages: (1) a **waiting** stage, the first layers, in
# which every token only attends to itself (CAMA, context-aware mean ablation, stands in for their
# computation); (2) a **transfer** stage of few layers in which the last token reads the others;
# (3) the rest, in which the last token again only attends to itself. The search looks for the
# longest waiting stage and the shortest transfer that keep accuracy at τ = 0.9 of the model's.
# The knockout curve shows the simpler question first: which layers must let the last token read
# the operands? `make mental-math` runs both zoo architectures (GPT-2 and Qwen2 with GQA).

# %%
MODEL = "zoo:toyworld"  # zoo:reasoner-base (Qwen2, GQA); Llama / Qwen with a network
N = 16
SEED = 0

# %%
from analyses import mental_math as mm
from circuits.models import load_model

model = load_model(MODEL)
sets = mm.prompts(model, MODEL, N, SEED)  # each form the model solves at >= 80%; the others skipped
print("forms:", {k: round(v["accuracy"], 2) for k, v in sets["forms"].items()}, "skipped:", sets["skipped"])

# %% [markdown]
# ## Knockout: the last token may not read other tokens in one layer

# %%
curves = mm.knockout(model, sets)
for form, curve in curves.items():
    print(form, "accuracy with layer L knocked out:", dict(zip(curve.layers, [round(a, 2) for a in curve.accuracy])))

# %% [markdown]
# ## The three-stage search
# Once with the paper's schedule (every other token self-peeks from the waiting stage on) and once
# keeping other tokens' attention intact. A τ that no schedule meets is flagged, with the best
# schedule seen; a waiting stage of depth 0 is trivial (CAMA on layer 0's input changes nothing).

# %%
found = mm.search(model, sets)
for form, results in found.items():
    for schedule, r in results.items():
        print(f"{form} ({schedule}): wait {r.wait} layers{' (trivial)' if r.wait_trivial else ''}, transfer {r.transfer}, "
              f"faithfulness {r.faithfulness:.2f}, tau met: {r.tau_met}")

# %%
figs = mm.figures(found, curves, MODEL)
display(*figs.values())  # noqa: F821 (IPython's display)
