"""Weight editors and the interventions they are judged by (above the engines; DESIGN.md).

  circuits.editing.weights    - each head's slice of the output projection, read and written in place
  circuits.editing.directions - difference-of-means directions at a site, per layer
  circuits.editing.steering   - add alpha * v to the residual stream while the model runs or samples
  circuits.editing.heads      - each head's direct write projected on a direction ([layer, head] scores)
  circuits.editing.edit       - ThinkEdit: project a direction out of chosen heads' output weights;
                                edited copies, bit-exact reverts, saving as an HF checkpoint
  circuits.editing.attention  - head repair: attention overrides, head scaling and zero ablation
"""
