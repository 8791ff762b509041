"""Test-wide settings.

Tests use tiny tensors, where a second OpenMP thread only adds synchronisation cost (and
on a busy 2-core machine makes small convs 10-50x slower); one thread keeps the suite
fast and its timing stable.
"""

import torch

torch.set_num_threads(1)
