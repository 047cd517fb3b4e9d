"""The original MLaaS4HEP workflow and the command line, on top of the library.

* :mod:`~mlaas4hep.workflow.run`: :func:`~mlaas4hep.workflow.run.run_workflow`, the
  original ``workflow.py`` as one library call, with its steps in
  :mod:`~mlaas4hep.workflow.training` and :mod:`~mlaas4hep.workflow.evaluation`;
* its inputs: :mod:`~mlaas4hep.workflow.lists` (files.txt, labels.txt, the model
  file), :mod:`~mlaas4hep.workflow.params` (params.json),
  :mod:`~mlaas4hep.workflow.preproc` (preproc.json), :mod:`~mlaas4hep.workflow.models`
  (the recipe's Keras model, a Deep Sets model);
* :mod:`~mlaas4hep.workflow.plots` and :mod:`~mlaas4hep.workflow.histograms`: ROC
  curve, training history, feature histograms (``pip install 'mlaas4hep[plot]'``);
* :mod:`~mlaas4hep.workflow.demo`: the synthetic demo files;
* :mod:`~mlaas4hep.workflow.cli`: the ``mlaas4hep`` and ``workflow`` commands, which
  alone quiet TensorFlow for their own runs (:mod:`~mlaas4hep.workflow.quiet`).

Nothing is re-exported here: import each name from its module.
"""
