"""gaea_nas: search spaces, supernets and search loops built on the gaea_ext fused ops.

The NAS layer arrives with later work; for now the package exists so that installs and
imports are stable.
"""

__all__: list = []
