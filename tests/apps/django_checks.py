"""Views a real-app test adds to a project made by `django-admin startproject` (copied next
to its urls.py, whose urlpatterns get these appended): an upload answered with its sha256,
a StreamingHttpResponse, a FileResponse of the file named by $CHECK_BLOB, a slow view."""

import hashlib
import os
import time

from django.http import FileResponse, HttpResponse, StreamingHttpResponse
from django.urls import path
from django.views.decorators.csrf import csrf_exempt


@csrf_exempt
def upload(request):
    digest = hashlib.sha256()
    for chunk in request.FILES["file"].chunks():
        digest.update(chunk)
    return HttpResponse(f"{request.FILES['file'].size} {digest.hexdigest()}")


def stream(request):
    def parts():
        for i in range(5):
            yield f"part {i} of {request.GET.get('name', '?')}\n".encode()
            time.sleep(0.3)

    response = StreamingHttpResponse(parts(), content_type="text/plain")
    response["X-Accel-Buffering"] = "no"  # behind nginx: pass each part on as it comes
    return response


def blob(request):
    return FileResponse(open(os.environ["CHECK_BLOB"], "rb"), as_attachment=True)


def slow(request):
    time.sleep(1)
    return HttpResponse("slept")


urlpatterns = [
    path("upload/", upload),
    path("stream/", stream),
    path("blob/", blob),
    path("slow/", slow),
]
