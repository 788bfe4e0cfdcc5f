"""A Flask app for the real-app test: an upload answered with its sha256, a streamed
response that reads the request inside its generator (stream_with_context), send_file of
the file named by $CHECK_BLOB, a slow view."""

import hashlib
import os
import time

from flask import Flask, Response, request, send_file, stream_with_context

app = Flask(__name__)


@app.post("/upload/")
def upload():
    data = request.files["file"].read()
    return f"{len(data)} {hashlib.sha256(data).hexdigest()}"


@app.get("/stream/")
def stream():
    def parts():
        for i in range(5):
            yield f"part {i} of {request.args.get('name', '?')}\n"
            time.sleep(0.3)

    response = Response(stream_with_context(parts()), mimetype="text/plain")
    response.headers["X-Accel-Buffering"] = "no"  # behind nginx: pass each part on as it comes
    return response


@app.get("/blob/")
def blob():
    return send_file(os.environ["CHECK_BLOB"], as_attachment=True)


@app.get("/slow/")
def slow():
    time.sleep(1)
    return "slept"
