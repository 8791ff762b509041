"""Folding: the chosen structure written into plain base weights (one core, several outputs).

:mod:`.core` folds tensors; :mod:`.model` folds a supernet in memory (``glorac.fold``);
:mod:`.shards` folds a Hugging Face directory file by file; :mod:`.files` writes what
``glorac fold`` outputs; :mod:`.export` is that command's entry point.
"""
