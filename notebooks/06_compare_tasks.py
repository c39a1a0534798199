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
# # Comparing circuits across tasks
#
# Merullo et al. 2024 (circuit reuse) compare circuits of different tasks on one model. Here every
# task's circuit is found by one method (head patching, noising each head's output at every
# position; a circuit is its top 25% of heads), after an audit: a task the model solves below 80%,
# clean or counterfactual, is listed with its reason, not compared. Then: the pair's overlap at
# every top-k% against a permutation null, shared and task-specific heads, each circuit's
# faithfulness on every task against random circuits of its size, and a similarity matrix with
# clusters. `make compare-tasks` runs it with 64 prompts and exports every circuit.

# %%
MODEL = "zoo:toyworld"
TASKS = ["ioi", "colored_objects", "induction"]
PAIR = ("ioi", "colored_objects")
N = 16
SEED = 0
FRACTION = 0.25

# %%
from analyses import compare_tasks as ct
from circuits.models import load_model

model = load_model(MODEL)
pss, audit = ct.prompts(model, MODEL, TASKS, N, SEED)
for task, row in audit.items():
    print(task, row)

# %%
scores = {t: ct.head_scores(model, ps, progress=False) for t, ps in pss.items()}
circuits = ct.task_circuits(model, MODEL, scores, FRACTION)
for task, c in circuits.items():
    print(task, sorted(c.node_set()))

# %% [markdown]
# ## The pair in detail, cross-faithfulness and similarity

# %%
pair = ct.pairwise(scores, circuits, PAIR, SEED)
cross = ct.cross_faithfulness(model, pss, circuits, SEED)
sim = ct.similarity_of(circuits, SEED)
print("shared heads:", pair["shared"])
figs = ct.figures(scores, circuits, pair, cross, sim, MODEL)
figs["heads_pair"]

# %%
figs["overlap_curve"]

# %%
figs["cross_faithfulness"]

# %%
figs["similarity"]

# %% [markdown]
# ## Export a circuit for a paper
# Every format at once (JSON, MIB graph JSON, GraphML, DOT, TikZ, PDF, SVG, PNG); `circuits export`
# does the same from the command line.

# %%
import tempfile

from circuits.graph.export import export_all, figure

with tempfile.TemporaryDirectory() as folder:
    print([p.rsplit("/", 1)[-1] for p in export_all(circuits["ioi"], folder, "ioi")])
figure(circuits["ioi"])
