"""bdd_engine: one turn of the driving-data flywheel on BDD100K (or its synthetic twin).

Importing the package changes nothing in the process. Entry points (the CLI, the
notebook's ``views.cfg()``, the test suite, the benchmarks) and the functions that load a
model library (``train.train``/``predict``, ``embed.get_embedder``,
``autolabel.make_labeler``, ``explorer.connect``) call :func:`bdd_engine.env.setup_env`
first, which makes Ultralytics, FiftyOne, open_clip and transformers offline-safe.
"""

__version__ = "0.1.0"
