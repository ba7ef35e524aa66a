"""Models built only from minidl: AlexNet and its variants."""
