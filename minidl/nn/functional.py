"""``minidl.nn.functional`` is ``minidl.functional`` under PyTorch's path, so that
``import minidl.nn.functional as F`` works as ``import torch.nn.functional as F`` does."""

from minidl.functional import *  # noqa: F403 - the same names, nothing of its own
from minidl.functional import __all__  # noqa: F401
