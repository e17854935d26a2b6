#!/usr/bin/env bash
# Regenerates gen/python from protos/. Generated files are never edited by hand.
set -euo pipefail
cd "$(dirname "$0")/.."
PY=${PY:-.venv/bin/python}
# protoc finds the mypy plugins (protoc-gen-mypy, protoc-gen-mypy_grpc) on PATH.
export PATH="$(cd "$(dirname "$PY")" && pwd):$PATH"
site=$("$PY" -c 'import google.api.annotations_pb2 as m, os; print(os.path.dirname(os.path.dirname(os.path.dirname(m.__file__))))')
tools_inc=$("$PY" -c 'import grpc_tools, os; print(os.path.join(os.path.dirname(grpc_tools.__file__), "_proto"))')
mkdir -p protos/.third_party/google/api
cp "$site/google/api/annotations.proto" "$site/google/api/http.proto" "$site/google/api/httpbody.proto" protos/.third_party/google/api/
(cd protos && "../$(dirname "$PY")/buf" lint)
rm -rf gen/python
mkdir -p gen/python
mapfile -t files < <(cd protos && find sendsafe -name '*.proto' | sort)
"$PY" -m grpc_tools.protoc -I protos -I protos/.third_party -I "$tools_inc" \
  --python_out=gen/python --grpc_python_out=gen/python \
  --mypy_out=gen/python --mypy_grpc_out=gen/python \
  "${files[@]/#/protos/}"
# The comments, for what is generated from the descriptors at run time (the OpenAPI document): pb2 carries none.
descriptors=$(mktemp)
"$PY" -m grpc_tools.protoc -I protos -I protos/.third_party -I "$tools_inc" --include_source_info \
  --descriptor_set_out="$descriptors" "${files[@]/#/protos/}"
PYTHONPATH=. "$PY" -m tools.protocomments "$descriptors" gen/python/sendsafe/proto_comments.json
rm -f "$descriptors"
find gen/python/sendsafe -type d -exec touch {}/__init__.py \;
echo "generated $(find gen/python -name '*_pb2.py' | wc -l) modules"
