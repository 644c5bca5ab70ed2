"""Putting sparse codes to work: data selection by feature similarity, spatial autocorrelation.

- :mod:`sparsecodes.uses.documents`: documents as mean token codes, streamed in batches.
- :mod:`sparsecodes.uses.selection`: select pool documents nearest a target set (generalised
  Jaccard of mean codes), in bounded memory.
- :mod:`sparsecodes.uses.spatial`: Moran's I and LISA of every latent over documents with
  coordinates.
- :mod:`sparsecodes.uses.cities`: an offline example, short texts about world cities.
"""
