"""Where bytes live: local paths and ``s3://`` URLs behind one interface.

``objects`` (read, write, list, delete: local files or S3 objects through boto3),
``atomic`` (local writes under a temporary name, renamed when complete), ``arrow`` (the same
S3 endpoint and credentials as a pyarrow filesystem, for Ray Train's checkpoints).
``from iicnet import storage`` gives the functions of ``objects``.
"""

from iicnet.storage.objects import (
    S3_SCHEME,
    S3Url,
    StorageError,
    absolute,
    client,
    endpoint_url,
    exists,
    gopen_s3,
    is_s3,
    join,
    list_names,
    open_read,
    out_of_space,
    parse_s3,
    put_file,
    read_bytes,
    read_small_file,
    register_gopen,
    remove,
    sha256,
    write_bytes,
)

__all__ = [
    "S3_SCHEME", "S3Url", "StorageError", "absolute", "client", "endpoint_url", "exists",
    "gopen_s3", "is_s3", "join", "list_names", "open_read", "out_of_space", "parse_s3",
    "put_file", "read_bytes", "read_small_file", "register_gopen", "remove", "sha256",
    "write_bytes",
]
