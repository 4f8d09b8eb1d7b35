"""slimbench's Hydra launcher plugin (Hydra finds launchers in the ``hydra_plugins`` namespace):
``isolated.IsolatedLauncher``, selected by ``hydra/launcher=parallel``."""
