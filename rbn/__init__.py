"""rbn: the application around Representative BatchNorm.

``rbn.cli`` is the ``rbn`` command (``python -m rbn``), ``rbn.checkpoint`` moves checkpoints
between PyTorch, Jittor, MindSpore and a neutral safetensors file, ``rbn.frameworks`` is the
registry of the supported frameworks and ``rbn.files`` writes files atomically. The layers
live in ``rbn_torch``, ``rbn_jittor`` and ``rbn_mindspore``; the NumPy oracle in
``rbn_reference``. Importing ``rbn`` imports no framework.
"""
