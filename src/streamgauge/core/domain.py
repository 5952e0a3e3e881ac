"""Domain selection: which sites (stations) a subscriber wants, by attributes and geography.

Synoptic's domain arguments (``state``, ``network``, ``stid``, ``nwszone``, ``nwsfirezone``,
``radius``, ``bbox``) select sites; the devices standing at those sites and their series follow.
Site attributes are laid out as numpy columns per project once per registry version (shared by
every subscriber), so ``radius`` over 30,000 stations is one vectorized haversine, not a loop.
String attributes compare case-insensitively, as Synoptic's do (``state=ut``).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import numpy as np
import numpy.typing as npt
import orjson

from streamgauge.core.filterlang import BBox, Radius, RadiusStation, haversine_miles, in_bbox
from streamgauge.core.registry import Registry

ATTRIBUTES = ("state", "network", "nwszone", "nwsfirezone")


@dataclass(frozen=True, slots=True)
class Domain:
    stid: frozenset[str] = frozenset()
    state: frozenset[str] = frozenset()
    network: frozenset[str] = frozenset()
    nwszone: frozenset[str] = frozenset()
    nwsfirezone: frozenset[str] = frozenset()
    radius: Radius | RadiusStation | None = None
    bbox: BBox | None = None

    def __bool__(self) -> bool:
        return bool(
            self.stid
            or self.state
            or self.network
            or self.nwszone
            or self.nwsfirezone
            or self.radius
            or self.bbox
        )

    def sites(self, reg: Registry, project_pk: int) -> set[str]:
        """Ids of the project's sites this domain selects."""
        cols = site_columns(reg, project_pk)
        keep = np.ones(len(cols.ids), np.bool_)
        if self.stid:
            wanted = {s.upper() for s in self.stid}
            keep &= np.array([i.upper() in wanted for i in cols.ids], np.bool_)
        for name in ATTRIBUTES:
            values: frozenset[str] = getattr(self, name)
            if values:
                keep &= np.isin(cols.attrs[name], [v.upper() for v in values])
        if self.radius is not None:
            if isinstance(self.radius, RadiusStation):
                centre = cols.index.get(self.radius.stid.upper())
                if centre is None:
                    return set()
                lat, lon = float(cols.lat[centre]), float(cols.lon[centre])
            else:
                lat, lon = self.radius.lat, self.radius.lon
            dist = haversine_miles(lat, lon, cols.lat, cols.lon)
            keep &= np.nan_to_num(dist, nan=np.inf) <= self.radius.miles
        if self.bbox is not None:
            keep &= in_bbox(self.bbox, cols.lat, cols.lon)
        return {cols.ids[i] for i in np.flatnonzero(keep).tolist()}

    def devices(self, reg: Registry, project_pk: int) -> set[int]:
        """Device pks at the selected sites. Not cached: a selection compiles once per registry
        version, and a set per distinct domain kept for a thousand subscribers would cost more
        memory (hundreds of KB each for a state) than the millisecond it saves."""
        return set().union(*(reg.devices_at(project_pk, s) for s in self.sites(reg, project_pk)))


@dataclass(slots=True)
class SiteColumns:
    version: int
    ids: list[str]
    lat: npt.NDArray[np.float64]
    lon: npt.NDArray[np.float64]
    attrs: dict[str, npt.NDArray[np.str_]]
    index: dict[str, int] = field(default_factory=dict)  # upper-case site id -> row


def site_columns(reg: Registry, project_pk: int) -> SiteColumns:
    """The project's sites as columns, kept in the registry until its next change."""
    key = ("site_columns", project_pk)
    cols = reg.derived.get(key)
    if isinstance(cols, SiteColumns) and cols.version == reg.version:
        return cols
    recs = [s for (p, _), s in reg.sites.items() if p == project_pk]
    ids = [s.id for s in recs]
    # Each site's stored JSON parsed once (a model per attribute and site, 30,000 stations
    # past the models' cache, took seconds); a field a stored document leaves out is the
    # model's default, None.
    docs = [orjson.loads(text) for text in reg.site_documents(recs)]

    def number(d: dict[str, Any], name: str) -> float:
        value = d.get(name)
        return np.nan if value is None else float(value)

    cols = SiteColumns(
        reg.version,
        ids,
        np.array([number(d, "lat") for d in docs], np.float64),
        np.array([number(d, "lon") for d in docs], np.float64),
        {
            name: np.array([(d.get(name) or "").upper() for d in docs], np.str_)
            for name in ATTRIBUTES
        },
        {i.upper(): n for n, i in enumerate(ids)},
    )
    reg.derived[key] = cols
    return cols
