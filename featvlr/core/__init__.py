"""The floor every other layer stands on: errors, atomic file I/O, devices and the process
group, signals, run logs, option schemas, flat records and checkpoint files (tensors and
plain data only; rebuilding a method from one is :mod:`featvlr.inference.loading`)."""
