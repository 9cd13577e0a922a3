"""GET /openapi.json: the OpenAPI 3.1 description of every route, shipped as data (openapi.yaml beside this file)."""

from __future__ import annotations

from functools import cache
from pathlib import Path
from typing import Any

import yaml
from flask import Blueprint, Response

from service import __version__
from service.http_api.common import json_response

DOCUMENT = Path(__file__).with_name("openapi.yaml")

blueprint = Blueprint("openapi", __name__)


@cache
def openapi_document() -> dict[str, Any]:
    document = yaml.safe_load(DOCUMENT.read_text(encoding="utf-8"))
    document["info"]["version"] = __version__
    return document


@blueprint.get("/openapi.json")
def openapi_json() -> Response:
    return json_response(openapi_document())
