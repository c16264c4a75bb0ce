#!/bin/sh
# One-shot MinIO bootstrap (compose service `minio-bootstrap`, image minio/mc). Idempotent: safe
# to rerun, and rerunning it after changing RECON_S3_SECRET_KEY is how the service key rotates.
#  - the buckets inputs, outputs, jobs, models (each prefixed with RECON_S3_BUCKET_PREFIX);
#  - a MinIO user RECON_S3_ACCESS_KEY / RECON_S3_SECRET_KEY with the readwrite policy, so the
#    API and workers never hold the root credentials.
set -eu

: "${MINIO_ROOT_USER:?}" "${MINIO_ROOT_PASSWORD:?}" "${RECON_S3_ACCESS_KEY:?}" "${RECON_S3_SECRET_KEY:?}"
PREFIX="${RECON_S3_BUCKET_PREFIX:-}"
ENDPOINT="${MINIO_ENDPOINT:-http://minio:9000}"

mc alias set recon "$ENDPOINT" "$MINIO_ROOT_USER" "$MINIO_ROOT_PASSWORD" >/dev/null
for bucket in inputs outputs jobs models; do
    mc mb --ignore-existing "recon/${PREFIX}${bucket}"
done

if [ "$RECON_S3_ACCESS_KEY" = "$MINIO_ROOT_USER" ]; then
    echo "RECON_S3_ACCESS_KEY is the root user: no service user created (use a separate key in production)"
    exit 0
fi
# `user add` on an existing user sets its new secret key (rotation).
mc admin user add recon "$RECON_S3_ACCESS_KEY" "$RECON_S3_SECRET_KEY"
if ! mc admin user info recon "$RECON_S3_ACCESS_KEY" | grep -q readwrite; then
    mc admin policy attach recon readwrite --user "$RECON_S3_ACCESS_KEY"
fi
echo "MinIO ready: buckets ${PREFIX}{inputs,outputs,jobs,models}, service user $RECON_S3_ACCESS_KEY"
