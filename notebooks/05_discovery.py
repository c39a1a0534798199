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
# # Automatic discovery: EAP, EAP-IG, ACDC and MIB faithfulness curves
#
# Edge attribution patching (EAP; Syed et al. 2023) scores every edge of the model's computational
# graph with one gradient; EAP-IG (Hanna et al. 2024) integrates that gradient along the path from
# corrupted to clean (here on the input embeddings or on each layer's activations); ACDC (Conmy et
# al. 2023) prunes edges greedily by their exact effect on the KL divergence. The MIB benchmark's
# faithfulness curves (Mueller et al. 2025) evaluate each ranking at 0.1% to 100% of the edges
# exactly; CPR is the area under the curve (higher is better), CMD its distance from 1 (lower is
# better). `make discover` runs the same steps with more prompts and a stability check.

# %%
MODEL = "zoo:toyworld"
TASK = "ioi"
N = 8   # make discover uses 32
SEED = 0
STEPS = 4   # EAP-IG integration steps (midpoint rule); each result records its completeness gap
TAU = 0.02  # ACDC's threshold, nats of KL

# %%
from analyses import discover
from circuits.models import load_model

model = load_model(MODEL)
ps, metric, options = discover.prompts(model, MODEL, TASK, N, SEED)
timings = {}
scores = discover.attribute(model, ps, STEPS, metric, timings)  # {"EAP": ..., "EAP-IG-inputs": ..., ...}
for method, s in scores.items():
    gap = s.settings.get("completeness", {}).get("gap")
    print(f"{method:20s} top edge {s.ranked()[0]}, completeness gap {gap}")

# %% [markdown]
# ## ACDC, started from EAP-IG's top edges

# %%
acdc_circuit, scores["ACDC"] = discover.run_acdc(model, ps, scores["EAP-IG-inputs"], TAU, progress=False)
print(len(acdc_circuit.edges), "edges kept by ACDC")

# %% [markdown]
# ## MIB faithfulness curves
# Each method's ranking, evaluated exactly at every size. A method that needs most of the graph
# to reach f = 0.5 has not found a small circuit.

#
# How good could a circuit of each size be? The exact reference prunes the graph greedily with
# exact edge patching (ACDC-style, no first-order approximation; a fifth of the kept edges per
# round here, `keep=0.8`). Each method's CPR is read as a fraction of the reference's.

# %%
curve_set = discover.curves(model, ps, scores, metric, timings)
ref = discover.reference(model, ps, metric, 0.8, timings, progress=False)
for method, c in curve_set.items():
    print(f"{method:20s} CPR {c.cpr:.3f}  ({discover.of_reference(c, ref):.2f} of the reference)  CMD {c.cmd:.3f}")
print(f"{'exact reference':20s} CPR {ref.cpr:.3f}; smallest circuit with f >= 0.8:", ref.settings["smallest"])
circuit = discover.pick_circuit(scores["EAP-IG-inputs"], curve_set["EAP-IG-inputs"], steps=STEPS, task=TASK, model=MODEL)
figs = discover.figures(curve_set, scores["EAP-IG-inputs"], circuit, f"{TASK} on {MODEL}", ref)
figs["curves"]

# %% [markdown]
# ## Does attribution agree with exact patching?
# First-order attribution can get signs wrong where attention saturates. The agreement report
# compares node attributions with exact activation patching and flags disagreements.

# %%
from circuits.engines.agreement import agreement_report

report = agreement_report(model, ps, method="eap-ig-inputs", steps=STEPS, metric=metric, strict=False)
print(f"nodes: pearson {report.node.pearson:.2f}, spearman {report.node.spearman:.2f}; "
      f"edges: pearson {report.edge.pearson:.2f}")
print("sign disagreements among the top nodes:", report.node.sign_disagreements_top)

# %% [markdown]
# ## Is the gap approximation error, or interaction?
# Rank the edges by their exact effect alone (the report's sweep: each edge ablated on its own) and
# draw that ranking's curve: no per-edge attribution can rank better. If it stays far below the
# exact reference too, the edges interact (their effects do not add up), and only a search that
# re-evaluates edges in context, like the greedy reference or ACDC, finds the small circuit.

# %%
single = discover.single_edge_curve(model, ps, scores["EAP-IG-inputs"].graph, report, metric, timings)
if single is not None:
    print(f"exact single edges: CPR {single.cpr:.3f} ({discover.of_reference(single, ref):.2f} of the reference); "
          f"single-edge effects sum to {single.settings['additivity']:.2f} x the full-minus-empty gap")

# %%
figs["circuit"]
