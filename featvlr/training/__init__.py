"""Training a method: the trainer loop and its stages (:mod:`~featvlr.training.trainer`),
the divergence guard, the final evaluation of a run and the notes a run leaves."""
