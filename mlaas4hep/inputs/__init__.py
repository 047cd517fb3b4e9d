"""Input files, the bottom layer of the data path: naming them, opening them in any format, and reading rows.

* :mod:`.sources`: :class:`~mlaas4hep.inputs.sources.FileSource`, a file's path, format and tree (a value);
* :mod:`.contents`: what a file holds, read without reading its data (entries, branches, fingerprint);
* :mod:`.formats`: every format opened as a :class:`~mlaas4hep.inputs.formats.table.Table` of events
  (ROOT with uproot, Parquet, CSV, JSON lines, Avro), and the ZLIB decompressor;
* :mod:`.selection`: the cut and the aliases, in uproot's expression language;
* :mod:`.remote`: ``root://`` and ``http(s)://`` files, every wait bounded;
* :mod:`.executors`: one task per file, on threads or a Dask cluster.
"""
