"""A local Google Cloud Storage JSON-API server for tests: ``python tests/gcs_server.py PORT BUCKET``.

It is gcp-storage-emulator with one addition real GCS makes: object downloads carry the
``x-goog-generation`` header, from which tensorstore (hence orbax) reads an object's generation.
"""

import sys

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

from gcp_storage_emulator.server import create_server  # noqa: E402

if __name__ == "__main__":
    create_server("127.0.0.1", int(sys.argv[1]), in_memory=True, default_bucket=sys.argv[2]).run()
