"""The native face, ``/api/v1``: CRUD, ingest, history and live streams with cursors."""

from fastapi import APIRouter

from streamgauge.faces.native import (
    accounts,
    channels,
    exports,
    feedtokens,
    observations,
    plots,
    resources,
)

router = APIRouter(prefix="/api/v1")
router.include_router(resources.router)
router.include_router(observations.router)
router.include_router(accounts.router)
router.include_router(feedtokens.router)
router.include_router(channels.router)
router.include_router(exports.router)
router.include_router(plots.router)

__all__ = ["router"]
