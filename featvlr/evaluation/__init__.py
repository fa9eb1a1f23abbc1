"""Evaluation: the papers' protocols over embeddings, score matrices and methods.

Layers, each module importing only those above it (and the layers below evaluation:
:mod:`featvlr.core`, :mod:`featvlr.cache`, :mod:`featvlr.retrieval`, :mod:`featvlr.data`,
:mod:`featvlr.methods` (the method contract), :mod:`featvlr.config`; never the tasks,
inference, the trainer or the commands):

- :mod:`~featvlr.evaluation.options`: scenario names, the folds rule, :class:`EvalOptions`.
- :mod:`~featvlr.evaluation.split_data`: caption -> image index and relevance of a split.
- :mod:`~featvlr.evaluation.unimodal`, :mod:`~featvlr.evaluation.cross_modal`: the
  cross-modal, uni-modal and mixed scenarios.
- :mod:`~featvlr.evaluation.embed`: a method's embeddings of a split.
- :mod:`~featvlr.evaluation.composed`: the one composed evaluation (protocol resolver,
  FashionIQ categories, CIRR submission).
- :mod:`~featvlr.evaluation.methods`: a cross-modal method's pairwise scores and per-query ranks.
- :mod:`~featvlr.evaluation.evaluators`: :class:`Evaluator` objects, built with a split and
  :class:`EvalOptions`, called with a method (cross-modal, composed).
- :mod:`~featvlr.evaluation.inputs`, :mod:`~featvlr.evaluation.results`,
  :mod:`~featvlr.evaluation.plots`: files in and out of ``featvlr eval``.

A task (:mod:`featvlr.tasks`) builds the evaluator of its methods; the trainer
(:mod:`featvlr.training.run_eval`), ``featvlr eval`` (:mod:`featvlr.app.evaluate`) and ablations (through
the trainer) evaluate a method by its task (:func:`featvlr.tasks.evaluate_method`).
:mod:`featvlr.evaluation.scenarios` is the public entry.
"""
