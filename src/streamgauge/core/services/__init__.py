"""The engine's services: the one API every face calls (issue 12, item 1).

``Engine.metadata`` (projects, sites, devices, variables) and ``Engine.accounts`` (service
accounts, keys, roles). A face decodes its wire format into the domain models, calls a service
method, and encodes what it returns; the store transaction stays inside the service, and
permission rules that belong to an operation (who may create projects, who may change a role)
are applied by the service, so every face gets the same rule.
"""

from streamgauge.core.services.accounts import AccountService
from streamgauge.core.services.metadata import MetadataService
from streamgauge.core.services.paging import Page, page

__all__ = ["AccountService", "MetadataService", "Page", "page"]
