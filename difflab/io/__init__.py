"""Files: atomic writes (:mod:`.atomic`), image files, grids and plots (:mod:`.images`), and 1-D
signals: WAV files, signal plots, forecast fan charts and spectrograms (:mod:`.signals`).

The lowest layer of difflab: it imports nothing else from the package, so every layer may use it. Its
modules are imported by name (``from difflab.io import atomic``); the package itself loads none of
them, so writing a file never pulls in torch or matplotlib.
"""
