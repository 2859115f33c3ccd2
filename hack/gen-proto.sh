#!/usr/bin/env bash
# Regenerate the Python modules of the lab's KMS v2 protos (operator/aks_kms_lab/kmsv2/*.proto).
#
# The generated *_pb2.py / *_pb2_grpc.py files are committed, so neither a cluster image nor a test
# run needs grpcio-tools; run this after editing a .proto. Protos are compiled with `operator/` as
# the include root, so they register in the descriptor pool as `aks_kms_lab/kmsv2/<file>.proto`
# (distinct from any upstream `api.proto`) and the gRPC stubs import `aks_kms_lab.kmsv2.*_pb2`.
#
# Note: the generated stubs require a grpcio runtime at least as new as the grpcio-tools used here.
set -euo pipefail
root=$(cd "$(dirname "$0")/.." && pwd)
py=${PYTHON:-"$root/.venv/bin/python"}
cd "$root/operator"
"$py" -m grpc_tools.protoc -I . \
  --python_out=. --grpc_python_out=. \
  aks_kms_lab/kmsv2/kmsv2_service.proto aks_kms_lab/kmsv2/encrypted_object.proto
# encrypted_object has no service: drop its empty gRPC stub.
rm -f aks_kms_lab/kmsv2/encrypted_object_pb2_grpc.py
echo "generated: $(cd aks_kms_lab/kmsv2 && ls ./*_pb2*.py* | tr '\n' ' ')"
