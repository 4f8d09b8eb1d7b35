"""Hydra search-path plugin of slimbench: every installed slimbench plugin package's ``conf``
directory joins the search path of slimbench's configs (see ``slimbench.plugins``)."""

from hydra.core.config_search_path import ConfigSearchPath
from hydra.plugins.search_path_plugin import SearchPathPlugin


class SlimbenchPluginConfigs(SearchPathPlugin):
    def manipulate_search_path(self, search_path: ConfigSearchPath) -> None:
        from slimbench.plugins import is_slimbench_config, search_path_entries

        if not any(is_slimbench_config(element.path) for element in search_path.get_path()):
            return  # another Hydra application
        known = {element.path for element in search_path.get_path()}
        for entry in search_path_entries():
            if entry not in known:
                search_path.append(provider="slimbench-plugin", path=entry)
