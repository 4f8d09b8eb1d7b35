"""Compression methods: one file per method, registered in ``METHODS`` on import.

Every module under this package is imported here so that adding a method is one file
(plus its YAML preset in ``conf/method/`` and a row in the contract-test table).
"""

import importlib
import pkgutil

from slimbench.methods.base import METHODS, LayerReport, MethodBase, MethodResult, SequentialPlan, register_method

for _info in pkgutil.walk_packages(__path__, prefix=__name__ + "."):
    if not _info.name.endswith(".base"):
        importlib.import_module(_info.name)

__all__ = ["METHODS", "LayerReport", "MethodBase", "MethodResult", "SequentialPlan", "register_method"]
