"""What the commands do, apart from argument parsing: train from files, the demo, and
``featvlr eval`` over runs, checkpoints and precomputed scores."""
