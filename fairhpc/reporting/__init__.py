"""The report layer every report of fairhpc is written with (``fairhpc report``, ``report-rm-kinds``,
``pg-report``, ``rlchf-report``, ``online-report``); each report module keeps only what is its own.

    stats    intervals over seeds: Student-t (:func:`~fairhpc.reporting.stats.t_interval`), Welch
    tables   Markdown tables and number cells
    pareto   Pareto fronts and the hypervolume of two maximised objectives
    plots    matplotlib without a display, atomic PNG writes, one colour per objective mode, panel grids

Nothing here imports the reports, evaluation or the training tasks (tests/test_imports.py).
"""
