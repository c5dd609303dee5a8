"""Files: atomic writes (:mod:`.atomic`) and image files, grids and plots (:mod:`.images`).

The lowest layer of difflab: it imports nothing else from the package, so every layer may use it.
"""
