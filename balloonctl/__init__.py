"""balloonctl: see and steer QEMU/KVM guest memory through the virtio balloon.

The public surface is small: sizes in ``balloonctl.units``, the state model in
``balloonctl.model``, the error tree in ``balloonctl.errors``, and ``BalloonClient`` in
``balloonctl.qmp``. Import those modules directly; this package imports nothing heavy.
"""

__version__ = "0.1.0"
