"""Models built only from minidl: AlexNet and its variants. Installed as ``minidl.models``
(``from minidl.models import AlexNet``); the repository keeps them in its top-level ``models/``."""

from minidl.models.alexnet import AlexNet, SmallAlexNet

__all__ = ["AlexNet", "SmallAlexNet"]
