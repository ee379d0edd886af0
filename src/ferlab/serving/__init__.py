"""The HTTP service: `ferlab serve [--host 127.0.0.1] [--port 8000] [--model default]
[--max-upload-mb 10] [--max-megapixels 40]`.
(`--model A --model B`: an ensemble, as for ferlab predict; /healthz then names "A + B".)

    POST /v1/predict   multipart/form-data, the photo in field "image" or "file" (or the raw file as
                       the body with Content-Type image/* or application/octet-stream)
                       -> {"faces": [{"box", "score", "label", "confidence", "probs"}, ...],
                           "width": W, "height": H}   (as Recognizer.predict; W x H: the upright image)
    GET  /healthz      -> {"status": "ok", "model": ..., "classes": [...], "backend": ..., "detector": ...}
    GET  /             the web page (static/index.html: photo, drag-and-drop or webcam)
    GET  /docs         the API as a web page (apidocs.docs_page: no script, works offline)
    GET  /openapi.json the API description (bodies: apidocs.api_models; field meanings: FIELD_DOCS)
    HEAD               as GET, for /, /healthz and /docs

Read in this order:
- app.py: the routes, the Service (one Recognizer, its lock and limits), reading an upload and
  decoding it (the same decoding as ferlab predict: images.load_image), the errors.
- apidocs.py: what /openapi.json and /docs say (bodies, field meanings, limits).
- protocol.py: uvicorn's HTTP protocol guarded against slow and too many clients, and the logging
  (a warning repeated is one line per 10 s).
- cli.py: the `ferlab serve` command.
"""
