#!/bin/dash
# Login shell of a replay board (tests/boards/replay/board.py fills in the @...@ values); sshd runs
# it as `shell -c COMMAND`. Commands that only read the board (the probe script, the board's python
# with -c) and the release's runner are answered from the recording: sleep for the time they took,
# print what they printed. Everything else (locks, the store, the transfer, the release switch)
# runs in dash, as on any board. A few processes per command: the board side costs almost nothing.
[ "$1" = -c ] && [ $# -eq 2 ] || exec /bin/dash "$@"
R=@REC@
M=@MISSES@
PY=@PY@
cmd=$2
body=${cmd#EDGEDEPLOY_RUN_ID=*"; export EDGEDEPLOY_RUN_ID; "}
case $body in
    "sh -s"|"$PY -c "*|*"/run.sh bench"*" --out "*) ;;
    *) exec /bin/dash -c "$cmd" ;;
esac
[ @MODE@ = record ] && exec @RECORDER@ "$R" "$cmd"
case $body in
    "sh -s")
        t=$(mktemp) || exit 125
        cat > "$t"
        key=$({ printf '%s\n' "$body"; cat "$t"; } | md5sum)
        key=${key%% *}
        if [ -f "$R/$key.sh" ]; then rm -f "$t"; . "$R/$key.sh"; fi
        printf '%s\n' "sh -s: $(head -c 80 "$t" | tr '\n' ' ')" >> "$M"
        /bin/dash -c "$cmd" < "$t"; s=$?; rm -f "$t"; exit $s ;;
    "$PY -c "*)
        key=$(printf '%s' "$body" | md5sum)
        key=${key%% *}
        [ -f "$R/$key.sh" ] && . "$R/$key.sh" ;;
    *)
        out=${body##*" --out "}
        out=${out%%" "*}
        # held once (board.hold_runner): the runner has started (its output exists) and waits
        if [ -f @HOLD@ ]; then s=$(cat @HOLD@); rm -f @HOLD@; : > "$out"; sleep "$s"; fi
        [ -f "$R/runner.sh" ] && . "$R/runner.sh" ;;
esac
printf '%.100s\n' "$body" | head -n 1 >> "$M"
exec /bin/dash -c "$cmd"
