"""The API description: GET /openapi.json (OpenAPI 3.1, from the typed request and response
models through spectree) and GET /docs (Swagger UI, its assets served from the installed
flask-swagger-ui package: the page loads with no network)."""

from __future__ import annotations

from flask import Blueprint, jsonify
from flask_swagger_ui import get_swaggerui_blueprint
from spectree import Response as Resp
from spectree import SecurityScheme, SpecTree
from spectree.models import SecureType, SecuritySchemeData

from ..schemas.openai_objects import ErrorResponse

DOCS_PATH = "docs"
SPEC_URL = "/openapi.json"

# Greedy: every route of the app is listed (native, admin, /v1, /metrics), the ones with a
# typed body or answer described in full. Validation is skipped: the routes validate through
# the same models and answer errors in their own envelopes (mmserve.errors).
api = SpecTree(
    "flask",
    mode="greedy",
    path=DOCS_PATH,
    title="mmserve",
    version="1",
    description="A multi-model inference server: native routes, an OpenAI-compatible /v1 API "
    "and admin routes. Errors: {error: {message, type, param, code}} under /v1, "
    "{error, details, param, code} elsewhere.",
    security_schemes=[
        SecurityScheme(
            name="bearer", data=SecuritySchemeData(type=SecureType.HTTP, scheme="bearer")
        ),
    ],
    security={"bearer": []},
    naming_strategy=lambda model: model.__name__,
    nested_naming_strategy=lambda _parent, child: child,
    validation_error_status=400,
    validation_error_model=ErrorResponse,
)

bp = Blueprint("docs", __name__)


def documented(json=None, resp=None, tags=(), errors=(400, 404)):
    """Describe a route to spectree (its body model, its answer model, its error answers) and
    leave the route itself as it is: spectree's runtime wrapper would read a streamed answer
    to its end, so the route keeps only a `__wrapped__` link to it, where spectree finds the
    description."""
    codes = {f"HTTP_{code}": ErrorResponse for code in errors}
    if resp is not None:
        codes["HTTP_200"] = resp

    def mark(func):
        func.__wrapped__ = api.validate(
            json=json, resp=Resp(**codes), tags=list(tags), skip_validation=True
        )(func)
        return func

    return mark


def full_spec() -> dict:
    """spectree's spec, every operation given at least its 200 answer (routes without a typed
    answer: admin, /metrics, /health) so that the document is valid OpenAPI 3.1."""
    spec = api.spec
    for operations in spec["paths"].values():
        for operation in operations.values():
            responses = operation.setdefault("responses", {})
            if not any(code.startswith("2") for code in responses):
                responses["200"] = {"description": "OK"}
    return spec


@bp.get(SPEC_URL)
def openapi_json():
    """The OpenAPI 3.1 description of every route."""
    return jsonify(full_spec())


def install(app) -> None:
    """Register /openapi.json and the /docs page."""
    app.register_blueprint(bp)
    ui = get_swaggerui_blueprint(
        f"/{DOCS_PATH}", SPEC_URL, config={"app_name": "mmserve API"}, blueprint_name="docs_ui"
    )
    app.register_blueprint(ui)
