#!/usr/bin/env bash
# Two pytest processes at once: `tests/pair.sh PYTHON [FILES...] -- [FILES...]`.
# The files before `--` run in the background, their output kept and printed after the
# foreground ones (the files after `--`, printed as they go). Exit 0 only when both passed.
#
# The suite's tests wait for much of their time (services starting, Ray's worker groups,
# paced steps, servers polled): one process alone left about a third of this machine's two
# cores idle, so two of them side by side finish sooner than one after the other.
set -u
python=$1
shift
background=()
while [ $# -gt 0 ] && [ "$1" != "--" ]; do
  background+=("$1")
  shift
done
if [ $# -eq 0 ]; then
  echo "usage: tests/pair.sh PYTHON [FILES...] -- [FILES...]" >&2
  exit 2
fi
shift
log=$(mktemp)
trap 'rm -f "$log"' EXIT
"$python" -m pytest -q -p no:cacheprovider --durations=8 "${background[@]}" >"$log" 2>&1 &
pid=$!
"$python" -m pytest -q -p no:cacheprovider --durations=10 "$@"
foreground=$?
wait "$pid"
behind=$?
echo "== ${background[*]}"
cat "$log"
echo "== exit statuses: $foreground (printed first), $behind (the files above)"
[ "$foreground" = 0 ] && [ "$behind" = 0 ]
