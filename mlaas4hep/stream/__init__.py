"""Streaming: which events go in which chunk and batch, and the pipeline that reads, flattens and serves them.

* :mod:`.plan`: the arithmetic (chunks, subsets, shards, epoch order), pure functions and values;
* :mod:`.reader`: :class:`~mlaas4hep.stream.reader.ChunkReader`, a chunk's events from every file;
* :mod:`.prepare` and :mod:`.safeguards`: from the user's files, labels and options to one frozen
  :class:`~mlaas4hep.stream.prepare.PreparedData`, every check done before any batch;
* :mod:`.pipeline`, :mod:`.buffers`, :mod:`.workers`: chunks read and flattened ahead of need, in
  threads or worker processes, into reused memory;
* :mod:`.epochs`: the ``seq[i]`` contract under Keras' shuffling; :mod:`.counters`: what the loader did.
"""
