"""Storage regions: S3, GCS and filesystem drivers behind one interface, plus fan-out.

Terms:

- *region*: one configured storage location (a bucket in one cloud region, or a
  filesystem path), named in ``resguardo.yaml``. A backup is copied to several.
- *object key*: the path of an object inside a region, ``/``-separated, never
  starting with ``/``. The region's own prefix is added by the driver.
- *upload*: an object being written. It becomes visible under its key only on
  :meth:`Upload.commit`, after the driver checked size and checksum with the
  server; :meth:`Upload.abort` removes every trace of it.
- *fan-out*: one stream written to several regions at once (``storage.fanout``).
"""
