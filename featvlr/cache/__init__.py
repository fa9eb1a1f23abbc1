"""The HDF5 feature cache: reading it (:mod:`~featvlr.cache.store`), writing it atomically
(:mod:`~featvlr.cache.writer`) and checking one (:mod:`~featvlr.cache.check`, ``featvlr info``)."""
