"""What the service says about itself: the OpenAPI bodies and field meanings (/openapi.json) and
the same as one static web page (/docs, no script: FastAPI's Swagger UI and ReDoc load theirs
from a CDN, which fails offline). Kept apart from the routes so app.py reads as the service."""

import re
from html import escape as plain

from ferlab.inference.images import LARGE_PIXELS, REDUCED_SIDE


def limits_text(max_upload_mb: float, max_megapixels: float) -> str:
    """The limits and the memory bound, as the OpenAPI description states them."""
    return (f"Limits: uploads up to {max_upload_mb:g} MB and images up to {max_megapixels:g} megapixels as decoded "
            f"(413 above, from Content-Length and from the image header, before decoding). A JPEG with a longest "
            f"side of 5120 or more decodes at 1/2, 1/4 or 1/8 scale and counts at that size; other formats decode "
            f"at full size and are reduced at once to a longest side of at most {REDUCED_SIDE}. Memory: images above "
            f"{LARGE_PIXELS / 1e6:g} MP decode one at a time, each taking at most 8 bytes x {max_megapixels:g} MP = "
            f"{8 * max_megapixels:g} MB at its peak, plus the upload.")


FIELD_DOCS = {  # the response fields, as the OpenAPI schema (and so /docs) describes them
    "box": "[x, y, width, height] of the face, in pixels of the upright photo at full size",
    "score": "the face detector's confidence that the box holds a face (0-1; BlazeFace's detection score, "
             "faces below 0.5 are not reported). Says nothing about the expression",
    "label": "the most probable expression (a class of the model)",
    "confidence": "the expression classifier's probability of `label` (= probs[label], 0-1): how sure the model is "
                  "of the expression, not of the face",
    "probs": "the probability of every expression class of the model; they sum to 1",
    "width": "width of the upright photo (after its EXIF rotation), in pixels at full size",
    "height": "height of the upright photo, in pixels at full size",
}
REQUEST_BODY = {  # the request as OpenAPI describes it (the body is read by read_image_field, not by FastAPI)
    "required": True,
    "description": "The photo (JPEG, PNG, WebP, BMP, TIFF, GIF: any format Pillow reads), as a multipart form "
                   "field named `image` (or `file`), or as the raw body with Content-Type image/* or "
                   "application/octet-stream.",
    "content": {
        "multipart/form-data": {"schema": {"type": "object", "properties": {
            "image": {"type": "string", "format": "binary", "description": "the photo"},
            "file": {"type": "string", "format": "binary", "description": "the photo, when `image` is absent"}}}},
        "image/*": {"schema": {"type": "string", "format": "binary"}},
        "application/octet-stream": {"schema": {"type": "string", "format": "binary"}},
    },
}


def api_models():
    """The pydantic models of the JSON bodies (built on demand: importing this module needs no pydantic)."""
    from pydantic import BaseModel, Field

    class Face(BaseModel):
        """One detected face and its expression."""
        box: list[int] = Field(min_length=4, max_length=4, description=FIELD_DOCS["box"])
        score: float = Field(description=FIELD_DOCS["score"])
        label: str = Field(description=FIELD_DOCS["label"])
        confidence: float = Field(description=FIELD_DOCS["confidence"])
        probs: dict[str, float] = Field(description=FIELD_DOCS["probs"])

    class Prediction(BaseModel):
        """The faces found in the photo (an empty list: none)."""
        faces: list[Face] = Field(description="the faces found; [] when there is none")
        width: int = Field(description=FIELD_DOCS["width"])
        height: int = Field(description=FIELD_DOCS["height"])

    class Health(BaseModel):
        """The service is up and its model loaded."""
        status: str = Field(description='"ok"')
        model: str = Field(description='the model ("A + B" for an ensemble)')
        weights: str | None = Field(description="the weights file(s), when the model came from one")
        classes: list[str] = Field(description="the expression classes, in the order of `probs`")
        backend: str = Field(description="the classifier's runtime: onnx or torch")
        detector: str = Field(description="the face detector")

    class Error(BaseModel):
        """Every error: one line, never a stack trace."""
        detail: str = Field(description="what went wrong, in one line")

    return Face, Prediction, Health, Error


def docs_page(schema: dict, base_url: str) -> str:
    """GET /docs: the OpenAPI schema as one static HTML page, with no script and nothing loaded from
    elsewhere (FastAPI's Swagger UI and ReDoc load theirs from a CDN, which fails offline)."""

    def escape(text: str) -> str:  # and `code` spans, as the descriptions write them
        return re.sub(r"`([^`]+)`", r"<code>\1</code>", plain(text))

    def kind(s: dict) -> str:
        if "$ref" in s:
            name = escape(s["$ref"].rsplit("/", 1)[-1])
            return f'<a href="#{name}">{name}</a>'
        if "anyOf" in s:
            return " or ".join(kind(x) for x in s["anyOf"])
        if s.get("type") == "array":
            return f"list of {kind(s.get('items', {}))}"
        if isinstance(s.get("additionalProperties"), dict):
            return f"object: name -> {kind(s['additionalProperties'])}"
        return "file" if s.get("format") == "binary" else escape(str(s.get("type", "any")))

    def table(s: dict) -> str:
        required = set(s.get("required", []))
        rows = "".join(f"<tr><td><code>{escape(k)}</code>{'' if k in required else ' (optional)'}</td><td>{kind(v)}</td>"
                       f"<td>{escape(v.get('description', ''))}</td></tr>" for k, v in s.get("properties", {}).items())
        return f"<table><tr><th>field</th><th>type</th><th>meaning</th></tr>{rows}</table>"

    url = escape(base_url.rstrip("/"))
    info = schema.get("info", {})
    out = [f"<h1>{escape(info.get('title', 'API'))} <span>{escape(info.get('summary', ''))}</span></h1>",
           f"<p>{escape(info.get('description', ''))}</p>",
           f"<pre>curl -F image=@photo.jpg {url}/v1/predict\ncurl --data-binary @photo.jpg -H 'Content-Type: image/jpeg' "
           f"{url}/v1/predict</pre>",
           '<p>Errors are JSON <code>{"detail": "one line"}</code>. The schema itself: <a href="/openapi.json">'
           "/openapi.json</a>.</p>"]
    for path, operations in schema.get("paths", {}).items():
        for method, op in operations.items():
            out.append(f'<section class="op"><h2><code>{method.upper()} {escape(path)}</code></h2>'
                       f"<p>{escape(op.get('description') or op.get('summary', ''))}</p>")
            body = op.get("requestBody")
            if body:
                out.append(f"<h3>Request</h3><p>{escape(body.get('description', ''))}</p>")
                for ctype, content in body.get("content", {}).items():
                    sch = content.get("schema", {})
                    out.append(f"<h4><code>{escape(ctype)}</code></h4>" + (table(sch) if "properties" in sch else f"<p>{kind(sch)}</p>"))
            rows = "".join(
                f"<tr><td>{escape(code)}</td><td>{escape(r.get('description', ''))}</td><td>"
                + ", ".join(kind(c["schema"]) for c in r.get("content", {}).values() if "schema" in c) + "</td></tr>"
                for code, r in op.get("responses", {}).items())
            out.append(f"<h3>Responses</h3><table><tr><th>status</th><th>when</th><th>body</th></tr>{rows}</table></section>")
    out.append("<h2>Bodies</h2>")
    for name, sch in schema.get("components", {}).get("schemas", {}).items():
        out.append(f'<section id="{escape(name)}"><h3>{escape(name)}</h3><p>{escape(sch.get("description", ""))}</p>{table(sch)}</section>')
    return ('<!doctype html>\n<html lang="en"><head><meta charset="utf-8"><meta name="viewport" content="width=device-width, '
            'initial-scale=1"><title>ferlab API</title><link rel="icon" href="data:,"><link rel="stylesheet" '
            f'href="/static/style.css"></head>\n<body class="docs">{"".join(out)}</body></html>\n')
