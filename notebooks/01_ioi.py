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
# # IOI: the indirect-object-identification circuit, step by step
#
# Wang et al. 2022, *Interpretability in the Wild: a Circuit for Indirect Object Identification in
# GPT-2 small*. The analysis patches head outputs by position, traces the circuit backwards from the
# logits with path patching, classifies the heads it finds by where they attend, and checks the
# circuit's faithfulness, completeness and minimality with mean ablation over the ABC distribution.
# `make ioi` runs the same steps (`analyses.ioi.run`) with 64 prompts and writes `results/ioi/`.

# %%
MODEL = "zoo:toyworld"  # gpt2 / gpt2-medium with a network: the paper's models
N = 32
SEED = 0

# %%
from analyses import ioi
from circuits.models import load_model
from circuits.scores import Scores

model = load_model(MODEL)
sets = ioi.prompts(model, N, SEED, MODEL)  # {"abc": p_ABC, "s2_io": the S2 := IO flip}
ps = sets["abc"]
for name, b in ioi.baseline(model, sets).items():
    print(f"{name}: logit diff clean {b['logit_diff_clean']:.2f}, corrupted {b['logit_diff_corrupted']:.2f}, "
          f"accuracy {b['accuracy_clean']:.0%}")

# %% [markdown]
# ## Head patching by position
# Each head's output at IO, S1, S1+1, S2 and END, patched from the corrupted run (noising) and into
# it (denoising). Noising asks what is necessary, denoising what is sufficient (Heimersheim & Nanda
# 2024).

# %%
patch = ioi.head_patching(model, ps, progress=False)
for direction, sc in patch.items():
    print(direction, [(f"a{k[0]}.h{k[2]}@{k[1]}", round(v, 2)) for k, v in
                      Scores(sc.effect(), sc.axes, labels=sc.labels).top(4, by="max")])

# %% [markdown]
# ## Path patching backwards from the logits
# Heads with a direct effect on the logits first; then the heads that feed their queries at END
# (S-inhibition), then the heads that feed those at S2 (induction, duplicate token), then the heads
# behind the induction heads' keys at S1+1 (previous token). Each class is named by its attention
# (e.g. a name mover attends from END to IO more than to S).

# %%
trace = ioi.trace_circuit(model, ps, progress=False)
for node, cls in trace.classes.items():
    print(f"{node:12s} {cls}")

# %% [markdown]
# ## Is the circuit faithful?
# Everything outside the circuit is mean-ablated over p_ABC (per template); faithfulness is the
# share of the logit difference the circuit keeps, and the complement's is what remains without it.
# Completeness and minimality are the paper's checks on subsets of the circuit.

# %%
evaluation = ioi.evaluate_circuit(model, ps, trace.classes, SEED)
f = evaluation["faithfulness"]
low, high = f.ci["faithfulness"] or (float("nan"), float("nan"))  # None: the interval is undefined
print(f"faithfulness {f.faithfulness:.2f} (95% CI {low:.2f}-{high:.2f}); complement {f.complement_faithfulness:.2f}")

# %%
figs = ioi.figures(patch, trace, int(model.cfg.n_layers), MODEL)
figs["patching"]

# %%
figs["path_patching"]

# %%
figs["circuit"]
