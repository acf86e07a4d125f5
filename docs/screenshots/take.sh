#!/usr/bin/env bash
# Screenshots of the MLflow UI: the run page, its model metrics, the model
# version page, the logged model page and the run's last validation picture, for the
# @candidate version in an SQLite store (default: the one `make run` wrote). Needs Debian's
# `chromium`; the UI runs on 127.0.0.1 only and is stopped afterwards.
#
#   bash docs/screenshots/take.sh [DB] [OUT]
set -euo pipefail
cd "$(dirname "$0")/../.."
DB=${1:-.iicnet/mlflow.db}
OUT=${2:-docs/screenshots}
PORT=${PORT:-5055}
BASE="http://127.0.0.1:$PORT"
command -v chromium >/dev/null || { echo "take.sh: needs chromium (apt-get install chromium)" >&2; exit 2; }
[ -f "$DB" ] || { echo "take.sh: $DB: no such MLflow store (run make run first)" >&2; exit 2; }
mkdir -p "$OUT"
.venv/bin/mlflow ui --backend-store-uri "sqlite:///$DB" --host 127.0.0.1 --port "$PORT" \
  > "$OUT/.mlflow-ui.log" 2>&1 &
UI=$!
trap 'kill $UI 2>/dev/null || true; rm -f "$OUT/.mlflow-ui.log"' EXIT
for _ in $(seq 90); do curl -sf "$BASE/health" >/dev/null && break; sleep 1; done
VARS="$(MLFLOW_TRACKING_URI="$BASE" .venv/bin/python - <<'PY'
from urllib.parse import quote

from mlflow import MlflowClient

c = MlflowClient()
v = c.get_model_version_by_alias("iicnet-video", "candidate")
run = c.get_run(v.run_id)
exp = run.info.experiment_id
models = [m.model_id for m in c.search_logged_models([exp]) if m.source_run_id == v.run_id]
images = sorted((a.path for a in c.list_artifacts(v.run_id, "images")
                 if a.path.endswith(".png")),
                key=lambda p: int(p.split("+step+")[1].split("+")[0]))
print(f"EXP={exp} RUN={v.run_id} VERSION={v.version} MODEL_ID={models[-1] if models else ''} "
      f"IMAGE={quote(images[-1], safe='') if images else ''}")
PY
)"
eval "$VARS"
shot() {  # name url
  chromium --headless=new --no-sandbox --disable-gpu --hide-scrollbars \
    --window-size=1600,1100 --virtual-time-budget=15000 \
    --screenshot="$OUT/$1.png" "$2" >/dev/null 2>&1 || echo "take.sh: chromium failed on $2" >&2
  echo "$OUT/$1.png <- $2"
}
shot run-page "$BASE/#/experiments/$EXP/runs/$RUN"
shot run-model-metrics "$BASE/#/experiments/$EXP/runs/$RUN/model-metrics"
shot model-version "$BASE/#/models/iicnet-video/versions/$VERSION"
if [ -n "$MODEL_ID" ]; then shot logged-model "$BASE/#/experiments/$EXP/models/$MODEL_ID"; fi
if [ -n "$IMAGE" ]; then shot validation-image "$BASE/get-artifact?path=$IMAGE&run_uuid=$RUN"; fi
