"""Experiments built on the core: the compute-optimal inference paper's synthetic settings.

``sparsecodes.experiments.synth`` runs the study; ``sparsecodes.experiments.plots`` draws it.
``sparsecodes.experiments.identifiability``: sparse coding of a small network's hidden layer
against the synthetic latents that drive it (docs/identifiability.md).
"""
