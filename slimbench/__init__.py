"""slimbench: benchmark transformer compression methods apples-to-apples.

The Python API (``slimbench.api``) is available from the package itself, imported on first use::

    import slimbench

    result = slimbench.experiment(model="tiny-llama", method="magnitude", method__sparsity=0.5)
    model = slimbench.load_pretrained("models/<run_id>")
"""

__version__ = "0.1.0"

_API = ("Compressed", "ExperimentResult", "SavedModel", "compress", "describe_evaluators", "describe_methods", "describe_models",
        "experiment", "load_bundle", "load_pretrained", "results", "save_pretrained")


def __getattr__(name: str):
    if name in _API:
        from slimbench import api

        return getattr(api, name)
    raise AttributeError(f"module 'slimbench' has no attribute {name!r}")


def __dir__() -> list[str]:
    return sorted([*globals(), *_API])


__all__ = list(_API)
