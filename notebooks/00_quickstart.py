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
# # Quickstart: load a model, build a task, patch, find a circuit, export it
#
# This notebook walks through the toolkit's core loop on the bundled default model, `zoo:toyworld`
# (a 4-layer GPT-2 trained by this project on synthetic tasks; no network needed). Every cell calls
# the library (`circuits.*`); the settings below are small so that the notebook runs in seconds on
# a CPU. Change `MODEL` to a local Hugging Face directory or a hub id (with a network) to run the
# same cells on a real model.

# %%
MODEL = "zoo:toyworld"  # or "gpt2", or "path/to/hf-checkpoint"
N = 32                  # prompts
SEED = 0
DEVICE = None           # None: CUDA if available, else CPU

# %% [markdown]
# ## 1. Load a model
# `load_model` returns a transformer-lens `TransformerBridge` in eval mode. Zoo models load from the
# package; `@step` picks a training checkpoint (e.g. `zoo:toyworld@200`).

# %%
from circuits.models import load_model

model = load_model(MODEL, device=DEVICE)
print(model.cfg.n_layers, "layers,", model.cfg.n_heads, "heads per layer, d_model", model.cfg.d_model)

# %% [markdown]
# ## 2. Build a task
# Indirect object identification (Wang et al. 2022, *Interpretability in the Wild*): "When Mary and
# John went to the store, John gave a drink to" → " Mary". Each clean prompt has a corrupted twin
# (here the ABC corruption: the three names all different) of the same length; the `PromptSet`
# holds both, the answer and the wrong answer, and named positions (IO, S1, S2, END). Zoo models
# are evaluated on held-out word/template combinations (`split="test"`).

# %%
from circuits import metrics
from circuits.tasks import build_task

ps = build_task("ioi", model.tokenizer, n=N, seed=SEED, split="test", corruption="abc").to(model.cfg.device)
print(ps.clean_text[0], "->", ps.answer_text[0])
print(ps.corrupted_text[0])

clean, corrupted = model(ps.clean), model(ps.corrupted)
print(f"logit difference clean {metrics.logit_diff(clean, ps).item():.2f}, "
      f"corrupted {metrics.logit_diff(corrupted, ps).item():.2f}, accuracy {metrics.accuracy(clean, ps).item():.0%}")

# %% [markdown]
# ## 3. Activation patching
# Noising: each head's output (`z`) at each named position is replaced by its value on the corrupted
# prompt, and the drop in logit difference is recorded (Meng et al. 2022; Heimersheim & Nanda 2024,
# *How to use and interpret activation patching*). All variants share batched forward passes.

# %%
from circuits.engines.patching import activation_patching
from circuits.figures import heatmaps
from circuits.scores import Scores

heads = activation_patching(model, ps, "z", direction="noise", positions=["S2", "END"])  # axes (layer, pos, head)
effect = heads.effect()  # share of the clean - corrupted gap each head carries (0: none, 1: all of it)
print(Scores(effect, heads.axes, labels=heads.labels).top(5, by="max"))  # ((layer, position, head), share)
heatmaps({"z at S2": effect[:, 0], "z at END": effect[:, 1]}, title="noising head outputs",
         cbar="share of the logit-difference gap")

# %% [markdown]
# ## 4. Find a circuit automatically
# EAP-IG (Hanna et al. 2024, *Have Faith in Faithfulness*) scores every edge of the model's graph
# with integrated gradients; `steps="auto"` doubles the steps until the completeness gap (the sum
# of attributions against the metric's total change) is within tolerance, and reports it. The MIB
# faithfulness curve (Mueller et al. 2025) evaluates the top edges at each size exactly.

# %%
from circuits.engines.attribution import attribute_edges
from circuits.engines.mib import faithfulness_curve
from circuits.figures import faithfulness_curves

scores = attribute_edges(model, ps, method="eap-ig-inputs", steps=4)
print(scores.ranked()[:5])
print("completeness gap:", scores.settings.get("completeness"))
curve = faithfulness_curve(model, ps, scores)
print(f"CPR {curve.cpr:.3f}, CMD {curve.cmd:.3f}")
faithfulness_curves({"EAP-IG-inputs": curve.to_dict()}, title="MIB faithfulness, IOI")

# %% [markdown]
# ## 5. A circuit object, compared and exported
# `Circuit` is plain data (JSON in and out) with the task, model, method and settings that made it.
# Here: the three heads with the largest patching effect at END, exported in every format a paper
# needs (JSON, the MIB graph format, GraphML, Graphviz DOT, TikZ, PDF/SVG/PNG).

# %%
import tempfile

from circuits.graph.circuit import Circuit
from circuits.graph.export import export_all, figure

circuit = Circuit.from_head_scores(effect[:, 1], k=3, task="ioi", model=MODEL,
                                   method="activation patching (noising z at END)")
print(sorted(circuit.node_set()))
with tempfile.TemporaryDirectory() as folder:
    written = export_all(circuit, folder, "ioi")
    print([p.rsplit("/", 1)[-1] for p in written])
figure(circuit)
