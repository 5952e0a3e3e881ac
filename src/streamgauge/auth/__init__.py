"""Authentication (who is calling) and the one permission table (what they may do)."""

from streamgauge.auth.permissions import Action, authorize, visible_projects
from streamgauge.auth.principals import Authenticator, Principal

__all__ = ["Action", "Authenticator", "Principal", "authorize", "visible_projects"]
