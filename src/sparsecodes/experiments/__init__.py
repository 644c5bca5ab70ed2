"""Experiments built on the core: the compute-optimal inference paper's synthetic settings.

``sparsecodes.experiments.synth`` runs the study; ``sparsecodes.experiments.plots`` draws it.
"""
