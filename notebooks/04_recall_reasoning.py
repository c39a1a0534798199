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
# # Recall vs reasoning: specialised heads, layers, neurons and a double dissociation
#
# Do a model's factual recall ("Milo lives in" → " Rome") and its in-context two-hop reasoning
# ("the map is in the tin. ... the tin is in Madrid. the map is in" → " Madrid") use different
# parts of the network? The paper's details are not recoverable, so this follows the toolkit's
# default protocol (`analyses.recall_reasoning.PROTOCOL`): layer restoration, per-head and per-layer
# ablation effects under mean and zero ablation, a specialisation index per head, small circuits
# chosen on one half of the prompts, and the 2x2 dissociation on the other half against random
# circuits of the same size. `make recall-reasoning` runs it with 128 prompts per task.
#
# The analysis first checks that the model does both tasks the way they mean: the clean *and* the
# counterfactual prompts (asking about the other item) must be answered. A model below the 80%
# floor is refused with its numbers, and nothing is analysed on noise.

# %%
MODEL = "zoo:toyworld"
N = 64
SEED = 0

# %%
from analyses import recall_reasoning as rr
from circuits.models import load_model

model = load_model(MODEL)
try:
    sets = rr.prompts(model, MODEL, N, SEED)
except rr.ModelFailsTask as refusal:  # the model does not do a task: there is nothing to analyse
    sets = None
    print("refused:", refusal)
else:
    for task, s in sets.items():
        print(task, {k: s.info[k] for k in ("accuracy", "counterfactual_accuracy", "kept", "selection", "evaluation")})

# %% [markdown]
# ## Layers, heads and the specialisation index
# Restoring the clean residual stream at END layer by layer shows where each answer becomes
# available; ablating each head (mean and zero) gives its effect on each task, and the
# specialisation index SI = (Δrecall − Δreasoning) / (|Δrecall| + |Δreasoning|) labels it.

# %%
if sets is not None:
    restoration = rr.layer_restoration(model, sets)
    effects = rr.head_effects(model, sets)
    special = rr.specialisation(effects)
    print({kind: special[kind]["heads"]["labels"] for kind in rr.KINDS})

# %% [markdown]
# ## Circuits, the 2x2 dissociation and neurons
# A recall circuit R and a reasoning circuit Q are chosen on the selection half; on the evaluation
# half each is mean-ablated on both tasks. A double dissociation needs each circuit to hurt its own
# task beyond size-matched random circuits and not the other.

# %%
if sets is not None:
    chosen = rr.choose_circuits(model, sets, special, effects)
    dis = rr.dissociation(model, sets, chosen, n_controls=20, seed=SEED)
    neurons = rr.neuron_check(model, sets, dis, seed=SEED)
    r = rr.RRResult(model, MODEL, N, SEED, {"keep": "correct", "floor": rr.FLOOR}, sets, restoration, effects,
                    special, chosen, dis, neurons, {}, 0.0)
    print(rr.summary(r))

# %%
if sets is not None:
    figs = rr.figures(r)
    display(*figs.values())  # noqa: F821 (IPython's display)
