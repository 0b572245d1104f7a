"""The export program: MLflow runs -> the public table, CSV, plots and comparisons with the
published references.

``runs`` (MLflow -> DataFrame), ``table`` (the public table's columns and rows), ``export``
(``python -m runner.results.export``, or ``python -m runner.results``), ``plots`` (matplotlib
figures), ``compare`` (the zoo's and the public table's figures beside the measured ones),
``report`` (what a job prints). pandas and matplotlib are imported only by ``runs``, ``export``,
``plots`` and ``compare``, never by this ``__init__`` or by ``table``/``report``, which the job
itself uses: a job does not pay their import time.
"""
