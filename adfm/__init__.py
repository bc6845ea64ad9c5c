"""adfm: AD-FM visual inspection — shared contracts (protocol, geometry, schema, model manifest).

Everything in this package is light (numpy, scipy, pillow, pydantic): the appliance imports it on
line PCs without torch. Subpackages: adfm.trainer, adfm.export, adfm.camera, adfm.appliance.
"""

from importlib.metadata import PackageNotFoundError, version

try:
    __version__ = version("adfm")
except PackageNotFoundError:  # running from a source tree that was not installed
    __version__ = "0.0.0+source"
