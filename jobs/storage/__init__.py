"""Object stores: one interface (`base.ObjectStore`), a filesystem and an S3/MinIO backend.

Keys are "bucket/path": the first segment is one of BUCKETS. The filesystem backend maps a key to
`root/bucket/path`; the S3 backend maps the bucket to `{prefix}{bucket}` and the rest to the object
name. Layout: inputs/{job_id}/views/..., inputs/{job_id}/depths/..., outputs/{job_id}/{model}/...,
jobs/{job_id}/job.json, models/{name}/{version}/...
"""
