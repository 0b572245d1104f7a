"""The export program: MLflow runs -> the public table, CSV, plots and comparisons.

``runs`` (MLflow -> DataFrame), ``table`` (the public table's columns and rows), ``export``
(``python -m runner.results.export``, or ``python -m runner.results``), ``plots``
(matplotlib figures), ``report`` (what a job prints).
pandas and matplotlib are imported only by ``runs``, ``export`` and ``plots``, never by this
``__init__`` or by ``table``/``report``, which the job itself uses: a job does not pay their
import time.
"""
