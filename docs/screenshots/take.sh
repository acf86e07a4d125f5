#!/usr/bin/env bash
# Screenshots of the MLflow UI: the run page, its model metrics, the model
# version page, the logged model page and the run's last validation picture, for the
# @candidate version in an SQLite store (default: the one `make run` wrote). Needs Debian's
# `chromium`; the UI runs on 127.0.0.1 only and is stopped afterwards.
#
# Every page is checked before its picture is kept: it must have loaded (not empty, not
# Chromium's error page) and show text that only the loaded page has (the run's name, the
# version, the logged model's id, drawn charts; the validation picture must be served as a
# PNG). All five are taken into a temporary folder and replace the old ones only when all
# passed; otherwise the script says which page failed and why, and exits with status 2.
#
#   bash docs/screenshots/take.sh [DB] [OUT]
#
# PORT picks the UI's port (default 5055). BASE, for testing the checks only, points the
# shots at another address (e.g. BASE=http://127.0.0.1:1, where nothing listens).
set -euo pipefail
cd "$(dirname "$0")/../.."
DB=${1:-.iicnet/mlflow.db}
OUT=${2:-docs/screenshots}
PORT=${PORT:-5055}
UI_URL="http://127.0.0.1:$PORT"
BASE=${BASE:-$UI_URL}
fail() { echo "take.sh: $*" >&2; exit 2; }
command -v chromium >/dev/null || fail "needs chromium (apt-get install chromium)"
[ -f "$DB" ] || fail "$DB: no such MLflow store (run make run first)"
curl -s "$UI_URL" >/dev/null && fail "port $PORT is taken already (PORT=... picks another)"
mkdir -p "$OUT"
NEW=$(mktemp -d "$OUT/.new.XXXXXX")  # the new pictures wait here until all have passed
.venv/bin/mlflow ui --backend-store-uri "sqlite:///$DB" --host 127.0.0.1 --port "$PORT" \
  > "$NEW/mlflow-ui.log" 2>&1 &
UI=$!
trap 'kill $UI 2>/dev/null || true; wait $UI 2>/dev/null || true; rm -rf "$NEW"' EXIT
for _ in $(seq 90); do curl -sf "$UI_URL/health" >/dev/null && break; sleep 1; done
curl -sf "$UI_URL/health" >/dev/null || fail "the MLflow UI did not start: $(tail -3 "$NEW/mlflow-ui.log")"
VARS="$(MLFLOW_TRACKING_URI="$UI_URL" .venv/bin/python - <<'PY'
import shlex
import sys
from urllib.parse import quote

from mlflow import MlflowClient
from mlflow.exceptions import MlflowException

c = MlflowClient()
try:
    v = c.get_model_version_by_alias("iicnet-video", "candidate")
except MlflowException as e:
    sys.exit(f"take.sh: no iicnet-video@candidate: {e.message}")
run = c.get_run(v.run_id)
exp = run.info.experiment_id
models = [m for m in c.search_logged_models([exp]) if m.source_run_id == v.run_id]
images = sorted((a.path for a in c.list_artifacts(v.run_id, "images")
                 if a.path.endswith(".png")),
                key=lambda p: int(p.split("+step+")[1].split("+")[0]))
if not models or not images:
    sys.exit(f"take.sh: run {v.run_id} has no logged model or no validation picture")
print(f"EXP={exp} RUN={v.run_id} RUN_NAME={shlex.quote(run.info.run_name)} "
      f"VERSION={v.version} MODEL_ID={models[-1].model_id} "
      f"MODEL_NAME={shlex.quote(models[-1].name)} IMAGE={quote(images[-1], safe='')}")
PY
)" || fail "could not read the @candidate version of iicnet-video from $DB"
eval "$VARS"

# shot NAME URL TEXT...: load URL in chromium, keep its picture as NAME.png in $NEW only if
# the page loaded and its DOM, dumped from the same load, holds every TEXT.
shot() {
  local name=$1 url=$2 dom text
  shift 2
  # --run-all-compositor-stages-before-draw: without it the charts never leave their spinners.
  dom=$(timeout 300 chromium --headless=new --no-sandbox --disable-gpu --hide-scrollbars \
    --window-size=1600,1100 --run-all-compositor-stages-before-draw \
    --virtual-time-budget=20000 --screenshot="$NEW/$name.png" --dump-dom "$url" 2>/dev/null) ||
    fail "$name: chromium failed or timed out on $url"
  [ -s "$NEW/$name.png" ] || fail "$name: no picture of $url (the page did not load)"
  [ -n "$dom" ] || fail "$name: $url gave an empty page"
  if grep -qiE "site can.t be reached|ERR_[A-Z_]{4,}|neterror" <<<"$dom"; then
    fail "$name: $url gave Chromium's error page"
  fi
  for text in "$@"; do
    grep -qF -- "$text" <<<"$dom" || fail "$name: $url does not show '$text'"
  done
  echo "take.sh: $name passed: $url"
}
shot run-page "$BASE/#/experiments/$EXP/runs/$RUN" "$RUN_NAME" "$RUN"
# Plotly draws each chart as an <svg class="main-svg">; a chart still loading has none.
shot run-model-metrics "$BASE/#/experiments/$EXP/runs/$RUN/model-metrics" "$RUN_NAME" main-svg
shot model-version "$BASE/#/models/iicnet-video/versions/$VERSION" "Version $VERSION" "$RUN_NAME"
shot logged-model "$BASE/#/experiments/$EXP/models/$MODEL_ID" "$MODEL_ID" "$MODEL_NAME"
# The validation picture is a PNG artifact: it must come back as one. The server sends it as
# a download (Content-Disposition: attachment), which chromium would not show, so the shot
# is of the bytes it sent, saved to a file.
IMAGE_URL="$BASE/get-artifact?path=$IMAGE&run_uuid=$RUN"
curl -sf -D "$NEW/headers" -o "$NEW/image.png" "$IMAGE_URL" || fail "validation-image: $IMAGE_URL failed"
grep -qi '^content-type: image/png' "$NEW/headers" ||
  fail "validation-image: $IMAGE_URL is not served as image/png"
[ "$(head -c 8 "$NEW/image.png" | od -An -tx1 | tr -d ' \n')" = 89504e470d0a1a0a ] ||
  fail "validation-image: $IMAGE_URL is not a PNG"
shot validation-image "file://$(realpath "$NEW/image.png")" "<img"

# All five passed: only now do they replace the old pictures.
for name in run-page run-model-metrics model-version logged-model validation-image; do
  mv "$NEW/$name.png" "$OUT/$name.png"
done
echo "take.sh: wrote the five pictures to $OUT"
