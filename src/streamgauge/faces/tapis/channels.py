"""Tapis channels and alerts."""

from fastapi import APIRouter

from streamgauge.faces.tapis.wire import TapisRoute

router = APIRouter(prefix="/streams", route_class=TapisRoute, tags=["tapis"])
