"""The first pass over the files and what it learns about each branch: the specs.

* :mod:`.values`: :class:`~mlaas4hep.specs.values.Specs` and
  :class:`~mlaas4hep.specs.values.BranchSpec`, frozen values with their JSON form;
* :mod:`.first_pass`: :class:`~mlaas4hep.specs.first_pass.SpecBuilder`, which reads every selected
  branch of every file once;
* :mod:`.branches`: which branches may be read (one kind of values in every file);
* :mod:`.kinds`: the kinds of branches (flat, jagged, fixed-size arrays ``fixed[3]``) and which are usable.
"""
