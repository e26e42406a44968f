"""A local Google Cloud Storage JSON-API server for tests: ``python tests/gcs_server.py PORT BUCKET``.

It is gcp-storage-emulator with two behaviours of real GCS it lacks: object downloads carry the
``x-goog-generation`` header, from which tensorstore (hence orbax) reads an object's generation; and an upload
with the precondition ``ifGenerationMatch=0`` (create only) is refused with 412 when the object exists.
"""

import sys
from http import HTTPStatus

from gcp_storage_emulator.handlers import objects

_download = objects.download


def download(request, response, storage, *args, **kwargs):
    try:
        obj = storage.get_file_obj(request.params["bucket_name"], request.params["object_id"])
    except Exception:  # missing object: the original handler answers 404
        obj = None
    if obj:
        response["x-goog-generation"] = str(obj["generation"])
        response["x-goog-metageneration"] = str(obj.get("metageneration", 1))
    return _download(request, response, storage, *args, **kwargs)


objects.download = download  # before the server module builds its routing table

_insert = objects.insert


def insert(request, response, storage, *args, **kwargs):
    if request.query.get("ifGenerationMatch") == ["0"]:
        name = (request.query.get("name") or [None])[0]
        if name is None and isinstance(request.data, dict):
            name = request.data.get("meta", {}).get("name")
        try:
            existing = name is not None and storage.get_file_obj(request.params["bucket_name"], name)
        except Exception:  # not there: the upload goes ahead
            existing = None
        if existing:
            response.status = HTTPStatus.PRECONDITION_FAILED
            response.json({"error": {"code": 412, "message": "conditionNotMet"}})
            return None
    return _insert(request, response, storage, *args, **kwargs)


objects.insert = insert

from gcp_storage_emulator.server import create_server  # noqa: E402

if __name__ == "__main__":
    create_server("127.0.0.1", int(sys.argv[1]), in_memory=True, default_bucket=sys.argv[2]).run()
