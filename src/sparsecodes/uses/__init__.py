"""Putting sparse codes to work: data selection, spatial autocorrelation, steering and ablation.

- :mod:`sparsecodes.uses.documents`: documents as mean token codes, streamed in batches.
- :mod:`sparsecodes.uses.selection`: select pool documents nearest a target set (generalised
  Jaccard of mean codes), in bounded memory.
- :mod:`sparsecodes.uses.spatial`: Moran's I and LISA of every latent over documents with
  coordinates.
- :mod:`sparsecodes.uses.cities`: an offline example, short texts about world cities.
- :mod:`sparsecodes.uses.steering`: add a latent's atom, clamp or ablate latents at the coder's
  hook (reconstruction error kept), as model edits that also act during generation.
"""
