#!/usr/bin/env bash
# Submit the actor-learner run to a running Ray cluster through the Jobs API.
#
#   RAY_ADDRESS=http://HEAD:8265 launch/submit.sh --run /shared/runs/exp1 --demos /shared/demos [train options]
#
# Every argument goes to `ada-curriculum train` after the fixed placement options (a later
# option wins, so e.g. `--num-actors 8` or `--max-minutes 120` override the defaults).
# --run and --demos must be paths every node sees (shared storage): the job runs in an
# unpacked copy of this directory, so a relative --run would vanish with it.
#
# Token authentication (on by default for Ray >= 2.59 local clusters; set up for remote ones
# as in launch/README.md): `ray job submit` sends the token Ray finds in, in order,
# $RAY_AUTH_TOKEN, the file named by $RAY_AUTH_TOKEN_PATH, or ~/.ray/auth_token
# (`ray get-auth-token` prints the one in use). The client only sends it when
# RAY_AUTH_MODE=token, which is the default here.
set -euo pipefail

cd "$(dirname "$0")/.."  # --working-dir and --runtime-env are relative to the repo root

export RAY_ADDRESS="${RAY_ADDRESS:-http://127.0.0.1:8265}"
export RAY_AUTH_MODE="${RAY_AUTH_MODE:-token}"
RAY="${RAY:-ray}"  # the ray CLI; e.g. RAY=.venv/bin/ray

exec "$RAY" job submit --address "$RAY_ADDRESS" \
    --runtime-env launch/runtime_env.yaml --working-dir . \
    -- ada-curriculum train --ray-address auto \
    --actor-resources actor:1 --learner-resources learner:1 "$@"
