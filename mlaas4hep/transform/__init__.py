"""A chunk of events turned into what a model takes, with no Python loop over events (no file is opened here).

* :mod:`.columns`: where each branch's values go in the matrix, and how they are normalized;
* :mod:`.flatten`: :class:`~mlaas4hep.transform.flatten.JaggedFlattener`, a chunk into a float32
  matrix and its mask;
* :mod:`.tensors`: the collections layout, a ``(batch, L, F)`` tensor and a mask per collection;
* :mod:`.outputs`: labels or regression targets, and sample weights.
"""
